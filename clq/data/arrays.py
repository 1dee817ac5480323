"""Bring-your-own dataset: an `.npz` holding x_train, y_train, x_test, y_test.

Images are uint8 [N, H, W] (grey) or [N, H, W, 1|3]; labels integers 0..K-1. Any such file feeds the same
NICv2-style stream builder as the default data (`clq-run data=arrays data.path=... data.num_classes=K`).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

__all__ = ["load_arrays", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_arrays(path: str):
    """Load and check an arrays `.npz` (no pickle).

    Returns:
      (x_train uint8, y_train int32, x_test uint8, y_test int32)
    Raises:
      FileNotFoundError / ValueError naming the file and what is wrong with it.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"data.path={path!r}: file not found")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz file (data.path must point to an .npz with {list(REQUIRED_KEYS)})")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in REQUIRED_KEYS if k not in f.files]
            if missing:
                raise ValueError(f"{path}: missing arrays {missing}; an arrays dataset needs {list(REQUIRED_KEYS)}")
            x_train, y_train, x_test, y_test = (np.asarray(f[k]) for k in REQUIRED_KEYS)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from e
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x.dtype != np.uint8:
            raise ValueError(f"{path}: {name} must be uint8 images, got dtype {x.dtype}")
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
            raise ValueError(f"{path}: {name} must be [N,H,W] or [N,H,W,1|3], got shape {x.shape}")
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise ValueError(f"{path}: {name} must be a 1-D integer array, got {y.dtype} {y.shape}")
    return x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32)
