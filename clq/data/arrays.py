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
#: What every error about a bad file ends with: what the file must be.
NEEDS = ("data.path must be an .npz (numpy.savez) holding x_train, x_test (uint8 images [N,H,W] or [N,H,W,1|3]) "
         "and y_train, y_test (1-D integer labels 0..K-1)")


def load_arrays(path: str):
    """Load and check an arrays `.npz` (no pickle).

    Returns:
      (x_train uint8, y_train int32, x_test uint8, y_test int32)
    Raises:
      FileNotFoundError / ValueError starting with ``data.path=<path>:`` and saying what is wrong with the file
      and what an arrays dataset must hold.
    """
    where = f"data.path={path!r}"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: file not found")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{where}: not an .npz file; {NEEDS}")
    # Only numpy's reading is inside the try: every ValueError it catches is numpy's own complaint about a member
    # (a pickled object array, a corrupt .npy header), never one of the messages raised below.
    try:
        with np.load(path, allow_pickle=False) as f:
            held = sorted(f.files)
            missing = [k for k in REQUIRED_KEYS if k not in held]
            arrays = () if missing else tuple(np.asarray(f[k]) for k in REQUIRED_KEYS)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{where}: not a readable .npz file ({e}); {NEEDS}") from e
    except ValueError as e:
        raise ValueError(f"{where}: an array could not be read ({e}); {NEEDS}") from e
    if missing:
        raise ValueError(f"{where}: missing arrays {missing} (it holds {held}); {NEEDS}")
    x_train, y_train, x_test, y_test = arrays
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x.dtype != np.uint8:
            raise ValueError(f"{where}: {name} must be uint8 images, got dtype {x.dtype}")
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
            raise ValueError(f"{where}: {name} must be [N,H,W] or [N,H,W,1|3], got shape {x.shape}")
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise ValueError(f"{where}: {name} must be a 1-D integer array, got {y.dtype} {y.shape}")
    return x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32)
