import os

# Tests run on the CPU with a single-threaded-friendly setup; keep JAX from grabbing an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
