"""clq's stream and ImageNet weights as plain .npz files, for the Avalanche AR1 peer (bench/peer/avalanche_ar1.py).

    .venv/bin/python bench/peer/export.py --seed 0 --stream bench/.work/s0/stream.npz \
        --weights bench/.work/s0/weights.npz [-- OVERRIDE ...]

Runs in clq's environment; the peer reads the files with NumPy only, so it never imports clq or JAX.

* `export_stream`: the stream of ``clq-run +experiment=fashion_mnist_imagenet seed=S OVERRIDES`` built by the
  same code (`clq.run.load_stream` on the same composed config), so both systems see the same images, in the
  same learning events and order, and the same test set.
* `export_weights`: the TF-slim ImageNet MobileNet-V1 parameters in clq's layer numbering, unfolded
  (``fold_input=False``: the network takes ``2 * pixel / 255 - 1`` as TF-slim does), plus clq's FP32 reference
  outputs (`clq.model.forward_bn`, eval mode) at the latent layer and at the global pool (27) for a few training
  images: the peer's converted network must reproduce them.

Weights file layout, per conv/dw/pw layer index ``i`` (0..26): ``w_i`` in clq's layout (conv HWIO
[3, 3, 3, 32], dw [K, K, 1, C], pw [C_in, C_out]), ``gamma_i``, ``beta_i``, ``mean_i``, ``var_i`` (TF's moving
variance; BN eps in ``bn_eps``); ``layer_kinds`` / ``layer_strides`` for layers 0..27.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

__all__ = ["EXPERIMENT", "POOL_LAYER", "experiment", "export_stream", "export_weights", "reference_images"]

#: The preset both systems run (conf/experiment/fashion_mnist_imagenet.yaml).
EXPERIMENT = "fashion_mnist_imagenet"
#: clq's index of the global average pool (paper.md §2): its output is the 1024-d feature vector.
POOL_LAYER = 27


def experiment(cfg_overrides=(), seed: int = 0):
    """The typed config of ``clq-run +experiment=fashion_mnist_imagenet seed=<seed> <cfg_overrides>``."""
    from bench.common import default_experiment

    return default_experiment([f"+experiment={EXPERIMENT}", f"seed={seed}", *cfg_overrides])


def _atomic_savez(path: str, **arrays) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.npz"  # np.savez appends .npz to names without it
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def export_stream(cfg_overrides=(), seed: int = 0, path: str = "stream.npz") -> dict:
    """Write the stream ``clq-run`` builds for this config to `path` (.npz).

    Arrays: ``train_images`` uint8 [M, S, S, 3]; ``train_labels``, ``train_sessions`` int32 [M];
    ``exp_index`` int64 [sum of event sizes] and ``exp_offsets`` int64 [E + 1] (event e is
    ``exp_index[exp_offsets[e]:exp_offsets[e + 1]]``, in clq's order); ``experience_sessions`` int32 [E];
    ``test_images`` uint8 [T, S, S, 3]; ``test_labels``, ``test_sessions`` int32 [T]; scalars ``num_classes``,
    ``latent_layer``, ``seed``, ``input_size``, ``replay_size``; ``session_names``; ``overrides`` (the config
    overrides, for the record).

    Returns:
      a small summary (path, events, images, latent layer, input size, num_classes).
    """
    from clq.run import load_stream

    exp = experiment(cfg_overrides, seed)
    stream = load_stream(exp)
    offsets = np.cumsum([0] + [len(e) for e in stream.experiences]).astype(np.int64)
    _atomic_savez(
        path,
        train_images=np.asarray(stream.train_images, np.uint8),
        train_labels=np.asarray(stream.train_labels, np.int32),
        train_sessions=np.asarray(stream.train_sessions, np.int32),
        exp_index=np.concatenate([np.asarray(e, np.int64) for e in stream.experiences]),
        exp_offsets=offsets,
        experience_sessions=np.asarray(stream.experience_sessions, np.int32),
        test_images=np.asarray(stream.test_images, np.uint8),
        test_labels=np.asarray(stream.test_labels, np.int32),
        test_sessions=np.asarray(stream.test_sessions, np.int32),
        num_classes=np.int64(stream.num_classes),
        latent_layer=np.int64(exp.latent_layer),
        seed=np.int64(exp.seed),
        input_size=np.int64(exp.model.input_size),
        replay_size=np.int64(exp.replay.size),
        session_names=np.asarray(stream.session_names),
        overrides=np.asarray(list(cfg_overrides), dtype=str),
    )
    return {"path": path, "events": stream.num_events, "train_images": len(stream.train_labels),
            "test_images": len(stream.test_labels), "latent_layer": exp.latent_layer,
            "input_size": exp.model.input_size, "num_classes": stream.num_classes}


def reference_images(train_images: np.ndarray, count: int = 16) -> np.ndarray:
    """`count` training images evenly spaced over the stream (so every session is represented)."""
    idx = np.linspace(0, len(train_images) - 1, min(count, len(train_images))).round().astype(int)
    return np.asarray(train_images[idx], np.uint8)


def export_weights(path: str, input_size: int, num_classes: int, images: np.ndarray | None = None,
                   latent_layer: int = 19, weights_path: str | None = None) -> dict:
    """Write the TF-slim MobileNet-V1 parameters and clq's reference outputs to `path` (.npz).

    Args:
      path: output file.
      input_size: square input resolution of the network (the stream's image size).
      num_classes: outputs of the classifier (its weights are not exported: AR1/CWR* start it from zero).
      images: uint8 [N, S, S, 3] images for the reference outputs (default: 16 seeded random images).
      latent_layer: clq's latent replay layer l.
      weights_path: the GraphDef (default `clq.model.imagenet.default_weights_path`).
    Returns:
      a small summary (path, latent shape, number of reference images).
    """
    import jax

    from clq.model.forward import BN_EPS, forward_bn
    from clq.model.imagenet import load_imagenet_mobilenet_v1

    specs, params, stats = load_imagenet_mobilenet_v1(weights_path, input_size, num_classes, fold_input=False)
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (16, input_size, input_size, 3), dtype=np.uint8)
    images = np.asarray(images, np.uint8)
    if images.shape[1:] != (input_size, input_size, 3):
        raise ValueError(f"images must be uint8 [N, {input_size}, {input_size}, 3], got {images.shape}")
    if not 0 <= latent_layer < POOL_LAYER:
        raise ValueError(f"latent_layer must be in 0..{POOL_LAYER - 1}, got {latent_layer}")
    x = 2.0 * images.astype(np.float32) / 255.0 - 1.0  # TF-slim's input range (fold_input=False)
    n = POOL_LAYER + 1
    run = jax.jit(forward_bn, static_argnums=(0, 4))
    # One pass to the pool; the latent is the same pass cut at l (the same ops in the same order).
    latents, _ = run(specs[: latent_layer + 1], params[: latent_layer + 1], stats[: latent_layer + 1], x, False)
    features, _ = run(specs[latent_layer + 1 : n], params[latent_layer + 1 : n], stats[latent_layer + 1 : n],
                      latents, False)
    arrays = {
        "layer_kinds": np.asarray([s.kind for s in specs[:n]]),
        "layer_strides": np.asarray([s.stride for s in specs[:n]], np.int64),
        "bn_eps": np.float64(BN_EPS),
        "input_size": np.int64(input_size),
        "num_classes": np.int64(num_classes),
        "latent_layer": np.int64(latent_layer),
        "ref_images": images,
        "ref_latents": np.asarray(latents, np.float32),  # NHWC [N, *specs[l].out_shape]
        "ref_features": np.asarray(features, np.float32).reshape(len(images), -1),  # [N, 1024]
    }
    for spec, p, s in zip(specs[:n], params[:n], stats[:n]):
        if spec.kind == "pool":
            continue
        i = spec.index
        arrays.update({f"w_{i}": np.asarray(p["w"], np.float32), f"gamma_{i}": np.asarray(p["gamma"], np.float32),
                       f"beta_{i}": np.asarray(p["beta"], np.float32), f"mean_{i}": np.asarray(s["mean"], np.float32),
                       f"var_{i}": np.asarray(s["var"], np.float32)})
    _atomic_savez(path, **arrays)
    return {"path": path, "latent_shape": list(specs[latent_layer].out_shape), "reference_images": len(images)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stream", required=True, help="output .npz of the stream")
    ap.add_argument("--weights", required=True, help="output .npz of the weights and reference outputs")
    ap.add_argument("--reference-images", type=int, default=16)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the experiment (after --)")
    args = ap.parse_args(argv)
    s = export_stream(args.overrides, args.seed, args.stream)
    with np.load(args.stream) as z:
        images = reference_images(z["train_images"], args.reference_images)
    w = export_weights(args.weights, s["input_size"], s["num_classes"], images, s["latent_layer"])
    print(f"export: {s['events']} events, {s['train_images']} training / {s['test_images']} test images -> "
          f"{args.stream}; weights + {w['reference_images']} reference latents {w['latent_shape']} -> {args.weights}")
    return {"stream": s, "weights": w}


if __name__ == "__main__":
    main()
