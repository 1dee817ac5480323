"""Pieces shared by clq's TFDS builders: TensorFlow-free features and a lazy array over a data source.

TFDS prepares and reads datasets without TensorFlow when every feature is a `tfds.features.Tensor` (NumPy
encoding; ``Image`` and ``Text`` features need TensorFlow) and the files are ``array_record``, which
`tfds.data_source` reads with random access. clq's builders use only those.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

__all__ = ["FILE_FORMAT", "image_feature", "scalar_feature", "path_feature", "TfdsArray", "latest_version_dir",
           "CodePathMixin"]

FILE_FORMAT = "array_record"


class CodePathMixin:
    """Gives a builder its source file as ``code_path`` directly.

    TFDS 4.9.10 otherwise resolves it through ``importlib_resources``, a package it does not depend on, and
    fails with ModuleNotFoundError for builders that live in an installed package (like clq's).
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))


def image_feature(size: int) -> tfds.features.Tensor:
    """uint8 [size, size, 3], zlib-compressed on disk (NumPy-side, no TensorFlow)."""
    return tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)


def scalar_feature() -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(), dtype=np.int64)


def path_feature() -> tfds.features.Tensor:
    # A NumPy string tensor; it reads back as bytes.
    return tfds.features.Tensor(shape=(), dtype=np.str_)


def latest_version_dir(dataset_dir: str) -> str | None:
    """``<dataset_dir>/<highest x.y.z with a dataset_info.json>``, or None."""
    if not os.path.isdir(dataset_dir):
        return None
    versions = []
    for v in os.listdir(dataset_dir):
        parts = v.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and os.path.isfile(
                os.path.join(dataset_dir, v, "dataset_info.json")):
            versions.append(tuple(int(p) for p in parts))
    return os.path.join(dataset_dir, ".".join(map(str, max(versions)))) if versions else None


class TfdsArray:
    """A read-only array over one feature of a TFDS split, read by random access (`tfds.data_source`).

    ``arr[i]`` is one example's feature; ``arr[idx]`` (slice, int array, bool mask) stacks the requested
    examples only, so a split far larger than memory is indexed like the in-memory arrays of a `Stream`.
    """

    def __init__(self, source, key: str, shape: tuple, dtype=np.uint8):
        """Args:
          source: a TFDS data source of one split (``tfds.data_source(...)[split]``).
          key: the feature to return.
          shape: per-example shape of that feature.
        """
        self.source, self.key = source, key
        self.shape = (len(source), *shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"TfdsArray({self.source!r}, key={self.key!r}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {int(key)} out of range for {n} examples")
            return np.asarray(self.source[i][self.key], self.dtype)
        if isinstance(key, slice):
            idx = np.arange(n)[key]
        else:
            idx = np.asarray(key)
            idx = np.flatnonzero(idx) if idx.dtype == bool else np.where(idx < 0, idx + n, idx)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"index out of range for {n} examples")
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        if len(idx):
            for j, ex in enumerate(self.source.__getitems__([int(i) for i in idx])):
                out[j] = ex[self.key]
        return out
