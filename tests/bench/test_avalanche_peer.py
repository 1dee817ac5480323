"""The Avalanche peer of bench/bench_avalanche.py gets clq's stream and clq's network.

The peer's accuracy only compares with clq's if it learns from the same images in the same events and starts
from the same function: these check the export (stream and weights) against clq itself, and, where the
Avalanche environment exists, that Avalanche's converted MobileNet-V1 reproduces clq's latents (and that the
check catches a wrong conversion).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from bench.peer.export import experiment, export_stream, export_weights  # noqa: E402

from clq.data.fashion_mnist import DEFAULT_PATH, FILES  # noqa: E402
from clq.model import forward_bn  # noqa: E402
from clq.model.imagenet import default_weights_path, load_imagenet_mobilenet_v1  # noqa: E402

needs_fmnist = pytest.mark.skipif(not all(os.path.exists(os.path.join(DEFAULT_PATH, f)) for f in FILES),
                                  reason="dataset-fashion-mnist not installed (scripts/setup.sh installs it)")
needs_weights = pytest.mark.skipif(
    not default_weights_path().is_file(),
    reason=f"ImageNet weights absent at {default_weights_path()}: run scripts/fetch_weights.sh",
)
AVALANCHE_PYTHON = os.path.join(ROOT, "bench", ".venv-avalanche", "bin", "python")
PEER = os.path.join(ROOT, "bench", "peer", "avalanche_ar1.py")

# A small stream of the preset: 32 px, 2 sessions, event 0 = 5 x 12 images, 15 events of 6, 40 test images.
SMALL = ["model.input_size=32", "data.sessions=[clean,dim]", "data.initial_images_per_class=12",
         "data.images_per_event=6", "data.test_size=40"]


@needs_fmnist
def test_exported_stream_is_clqs_stream(tmp_path):
    """Every event's images and labels, in clq's order, and the test set, as `clq.run.load_stream` builds them."""
    from clq.run import load_stream

    path = str(tmp_path / "stream.npz")
    summary = export_stream(SMALL, 3, path)
    stream = load_stream(experiment(SMALL, 3))
    z = dict(np.load(path))
    assert summary["events"] == stream.num_events == len(z["exp_offsets"]) - 1 == 16
    assert int(z["seed"]) == 3 and int(z["latent_layer"]) == 19 and int(z["input_size"]) == 32
    assert int(z["num_classes"]) == stream.num_classes and int(z["replay_size"]) == 1500
    for e, idx in enumerate(stream.experiences):
        got = z["exp_index"][z["exp_offsets"][e] : z["exp_offsets"][e + 1]]
        np.testing.assert_array_equal(got, idx)
        # Labels travel with their images: the pairs the peer builds are clq's pairs.
        np.testing.assert_array_equal(z["train_images"][got], stream.train_images[idx])
        np.testing.assert_array_equal(z["train_labels"][got], stream.train_labels[idx])
        assert set(z["train_labels"][got].tolist()) == set(stream.experience_classes[e].tolist())
    assert len(set(z["train_labels"][z["exp_index"][: z["exp_offsets"][1]]].tolist())) == 5  # event 0: 5 classes
    for k in ("test_images", "test_labels", "test_sessions"):
        np.testing.assert_array_equal(z[k], getattr(stream, k))
    assert z["train_images"].dtype == np.uint8 and z["train_images"].shape[1:] == (32, 32, 3)


@needs_weights
def test_exported_weights_compute_clqs_folded_network(tmp_path):
    """The exported TF-slim parameters (input 2x-1) give clq's folded-input latents (input x) away from the border.

    clq folds ``2x - 1`` into conv1; the two differ only where conv1 reads its (0, 1) 'SAME' padding (bottom row,
    right column at 32 px), which a 3x3 depthwise layer spreads one pixel: at layer 2 rows/columns 0..13 of 16
    are exact.
    """
    size, layer = 32, 2
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    path = str(tmp_path / "weights.npz")
    export_weights(path, size, 10, images, latent_layer=layer)
    z = dict(np.load(path))
    assert z["ref_latents"].shape == (3, 16, 16, 64) and z["ref_features"].shape == (3, 1024)
    assert [str(k) for k in z["layer_kinds"][:4]] == ["conv", "dw", "pw", "dw"] and str(z["layer_kinds"][27]) == "pool"

    specs, params, stats = load_imagenet_mobilenet_v1(input_size=size, num_classes=10, fold_input=False)
    for i in (0, 1, 2, 25, 26):  # clq layout, unfolded: what the peer converts
        np.testing.assert_array_equal(z[f"w_{i}"], np.asarray(params[i]["w"]))
        np.testing.assert_array_equal(z[f"var_{i}"], np.asarray(stats[i]["var"]))

    fspecs, fparams, fstats = load_imagenet_mobilenet_v1(input_size=size, num_classes=10)  # fold_input=True
    folded, _ = forward_bn(fspecs[: layer + 1], fparams[: layer + 1], fstats[: layer + 1],
                           images.astype(np.float32) / 255.0, train=False)
    folded, ref = np.asarray(folded), z["ref_latents"]
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ref[:, :14, :14], folded[:, :14, :14], atol=1e-5 * scale, rtol=0)
    assert np.abs(ref[:, 15] - folded[:, 15]).max() > 1e-3 * scale  # the border does read the padding


@pytest.mark.slow
@needs_weights
@pytest.mark.skipif(not os.path.exists(AVALANCHE_PYTHON),
                    reason="bench/.venv-avalanche absent: create it with `bash bench/peer/setup_avalanche.sh`")
def test_avalanche_network_reproduces_clq_latents(tmp_path):
    """Avalanche's MobilenetV1, converted as AR1 holds it, gives clq's layer-19 latents; a wrong layout fails."""
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    good = str(tmp_path / "weights.npz")
    export_weights(good, 32, 10, images, latent_layer=19)

    out = str(tmp_path / "check.json")
    p = subprocess.run([AVALANCHE_PYTHON, PEER, "--weights", good, "--check-only", "--out", out], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(out) as f:
        check = json.load(f)["latent_check"]
    assert check["passed"] and check["latent"]["shape"] == [4, 512, 2, 2]
    assert check["latent"]["relative_error"] < 1e-4 and check["features"]["relative_error"] < 1e-4

    # conv1's kernel flipped in space (a wrong HWIO -> OIHW conversion): the check must stop the run.
    z = dict(np.load(good))
    z["w_0"] = np.ascontiguousarray(z["w_0"][::-1, ::-1])
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, **z)
    p = subprocess.run([AVALANCHE_PYTHON, PEER, "--weights", bad, "--check-only"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode != 0 and "latent check FAILED" in p.stdout + p.stderr
