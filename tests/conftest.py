import os

# Tests run on the CPU with a single-threaded-friendly setup; keep JAX from grabbing an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The on-disk caches of event 0 and of latents are on by default (conf/config.yaml); tests that go through the
# config get them only where they ask for them, so that one test's event 0 or latents never stand in for another's
# computation. The tests of the defaults themselves set these variables per test.
os.environ.setdefault("CLQ_EVENT0_CACHE_DIR", "")
os.environ.setdefault("CLQ_LATENT_CACHE_DIR", "")
