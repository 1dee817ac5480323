"""clq's vectorizing Hydra launcher (``hydra/launcher=clq_vectorized``); the work is in `clq.launcher`."""
