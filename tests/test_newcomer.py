"""What a newcomer meets first: a bad data file is a config error, the README names the pretrained model
config right, and the end-of-run summary says where its memory figure comes from."""

import json
import os
import re
import zipfile

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from clq.config import experiment_config
from clq.run import initial_params, summary_table
from tiny import TINY, needs_fmnist, run_module

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONF = os.path.abspath(os.path.join(ROOT, "conf"))


def _exp(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return experiment_config(OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True))


# --- 1. data=arrays with a file that is not an arrays .npz -------------------------------------------------------

def _junk(p):
    p.write_bytes(b"this is not a zip archive\n")


def _zip_without_npy(p):
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "a zip, but no arrays")


def _missing_arrays(p):
    np.savez(p, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(4, np.int64))


def _pickled_labels(p):
    np.savez(p, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, "a", None], dtype=object),
             x_test=np.zeros((4, 8, 8), np.uint8), y_test=np.zeros(4, np.int64))


def _float_images(p):
    np.savez(p, x_train=np.zeros((4, 8, 8), np.float32), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((4, 8, 8), np.uint8), y_test=np.zeros(4, np.int64))


@pytest.mark.parametrize("make,needle", [
    (_junk, "not an .npz file"),
    (_zip_without_npy, "missing arrays ['x_train', 'y_train', 'x_test', 'y_test']"),
    (_missing_arrays, "missing arrays ['x_test', 'y_test']"),
    (_pickled_labels, "an array could not be read"),
    (_float_images, "x_train must be uint8 images"),
])
def test_bad_arrays_file_is_a_config_error(tmp_path, make, needle):
    data = tmp_path / "mine.npz"
    make(data)
    p = run_module("clq", ["data=arrays", f"data.path={data}", "data.num_classes=10", "tracking=none",
                           "progress=false", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert f"data.path={str(data)!r}" in p.stderr and needle in p.stderr
    if needle != "x_train must be uint8 images":  # the file-level errors also say what the file must hold
        assert "x_train, x_test (uint8 images" in p.stderr


def test_missing_arrays_file_is_an_error_naming_data_path(tmp_path):
    p = run_module("clq", ["data=arrays", f"data.path={tmp_path / 'nope.npz'}", "data.num_classes=10",
                           "tracking=none", "progress=false", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "data.path=" in p.stderr and "file not found" in p.stderr


# --- 2. which model config is the ImageNet-pretrained one ----------------------------------------------------------

def _models_with_imagenet_weights(monkeypatch):
    """{model config: whether `clq.run.initial_params` loads the ImageNet weights for it}."""
    import clq.model.imagenet

    calls = []
    monkeypatch.setattr(clq.model.imagenet, "load_imagenet_mobilenet_v1",
                        lambda *a, **k: calls.append(a) or (None, "params", "stats"))
    loads = {}
    for name in ("mobilenet_v1_paper", "mobilenet_v1_imagenet"):
        before = len(calls)
        out = initial_params(_exp([f"model={name}"]))
        loads[name] = len(calls) > before
        assert (out is not None) == loads[name]
    return loads


def test_only_mobilenet_v1_imagenet_loads_imagenet_weights(monkeypatch):
    assert _models_with_imagenet_weights(monkeypatch) == {"mobilenet_v1_paper": False, "mobilenet_v1_imagenet": True}
    paper, imagenet = _exp(["model=mobilenet_v1_paper"]).model, _exp(["model=mobilenet_v1_imagenet"]).model
    assert paper.weights is None and imagenet.weights == "imagenet"
    assert (paper.width, paper.input_size) == (imagenet.width, imagenet.input_size) == (1.0, 128)


def _text(path):
    return re.sub(r"\s+", " ", open(path, encoding="utf-8").read())


def test_readme_names_the_pretrained_config(monkeypatch):
    loads = _models_with_imagenet_weights(monkeypatch)
    pretrained = [m for m, yes in loads.items() if yes]
    scratch = [m for m, yes in loads.items() if not yes]
    readme = _text(os.path.join(ROOT, "README.md"))
    sentences = [s for s in re.split(r"(?<=[.:])\s(?=[A-Z`])", readme) if "ImageNet-pretrained" in s]
    assert sentences, "the README no longer says which config is ImageNet-pretrained"
    for s in sentences:
        named = re.findall(r"model=(\w+)", s[s.index("ImageNet-pretrained"):])
        assert named and named[0] in pretrained, s
    # Wherever a doc names a from-scratch config, the clause does not call it pretrained or ImageNet.
    docs = [os.path.join(ROOT, "README.md")] + [os.path.join(ROOT, "docs", f)
                                                for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                                                if f.endswith(".md")]
    for path in docs:
        text = _text(path)
        for m in scratch:
            for hit in re.finditer(rf"`(?:model=)?{m}`", text):
                clause = re.split(r"[,;)]|\.\s", text[hit.end():], maxsplit=1)[0]
                assert not re.search(r"(?i)imagenet|pretrained", clause), f"{path}: {m}{clause}"


# --- 3. the end-of-run summary's memory lines ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A tiny clq-run with the default caches of event 0 and latents on, in folders of this module's own:
    (its completed process, its run dir, the work folder, the cache variables)."""
    work = tmp_path_factory.mktemp("summary")
    caches = {"CLQ_EVENT0_CACHE_DIR": str(work / "e0"), "CLQ_LATENT_CACHE_DIR": str(work / "lc")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in caches.items():
            mp.setenv(k, v)
        p = run_module("clq", [*TINY, "tracking=none", "checkpoint_every=0", f"hydra.run.dir={work / 'run'}"], work)
    assert p.returncode == 0, p.stderr[-3000:]
    return p, work / "run", work, caches


@needs_fmnist
def test_a_second_run_reuses_the_default_caches_and_says_so(first_run, monkeypatch):
    p, _, work, caches = first_run
    assert "reused from the disk caches" not in p.stdout
    for k, v in caches.items():
        monkeypatch.setenv(k, v)
    again = run_module("clq", [*TINY, "tracking=none", "checkpoint_every=0", f"hydra.run.dir={work / 'again'}"], work)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((work / "again" / "results.json").read_text())
    n = rerun["latent_cache"]["hits"]
    assert rerun["event0_cached"] and rerun["latent_cache"]["misses"] == 0 and n > 0
    assert re.search(rf"reused from the disk caches +event 0, {n:,} of {n:,} latents", again.stdout)
    peak = next(x for x in again.stdout.splitlines() if "share of the FP32 matmul peak" in x)
    assert "learning events" in peak and "frozen pass" not in peak and "event 0" not in peak  # nothing computed


@needs_fmnist
def test_summary_says_memory_is_the_cost_models_packed_figure(first_run):
    p, run_dir, _, _ = first_run
    res = json.loads((run_dir / "results.json").read_text())
    lines = p.stdout.splitlines()
    device = next(x for x in lines if "replay buffer on the device" in x)
    assert "(cost model)" in device and "bit-packed" in device and "one FP32 scale" in device
    assert f"{res['memory_bytes']['lr_buffer']:,} B" in device
    total = next(x for x in lines if "total memory on the device" in x)
    assert "(cost model)" in total and f"{res['memory_bytes']['total']:,} B" in total
    ram = next(x for x in lines if "replay buffer in RAM" in x)
    assert "(measured)" in ram and "(cost model)" not in ram
    # The same summary of FP32 latents says so instead of "bit-packed".
    fp32 = summary_table({**res, "latent": {**res["latent"], "lr_bits": None}})
    line = next(x for x in fp32.splitlines() if "replay buffer on the device" in x)
    assert "(cost model)" in line and "FP32 latents" in line and "bit-packed" not in line
