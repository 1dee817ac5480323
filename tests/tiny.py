"""What the end-to-end tests share: whether Fashion-MNIST is installed, the tiny experiment they run, and which
programs a call lowered.

Importable from the test modules at the top of tests/ (pytest puts their folder on sys.path).
"""

import os
import subprocess
import sys

import pytest

from clq.data.fashion_mnist import DEFAULT_PATH, FILES

HAVE_FMNIST = all(os.path.exists(os.path.join(DEFAULT_PATH, f)) for f in FILES)
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST,
                                  reason="dataset-fashion-mnist not installed (scripts/setup.sh installs it)")

# Hydra overrides of a tiny default experiment: MobileNet-V1 0.25/16 px cut at l=23 (latents of 128 elements),
# 16 events of 12 images, 200 test images, 40 latent replays; seconds per run.
TINY = [
    "model.width=0.25", "model.input_size=16", "latent_layer=23",
    "data.sessions=[clean,dim]", "data.initial_images_per_class=20", "data.images_per_event=12",
    "data.test_size=200", "train.first_event.epochs=1", "train.first_event.batch_size=20", "train.epochs=2",
    "train.batch_size=16", "train.eval_batch_size=100", "replay.size=40", "progress=false",
]


def run_module(module: str, args, cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` (clq-run is module "clq") in a subprocess on the CPU, wandb offline."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def lowered_while(fn):
    """(fn(), names of the programs JAX lowered while it ran, in order; an exported program's call is "jit(call)")."""
    import jax

    lowered = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(kw.get("fun_name", event))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        return fn(), lowered
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
