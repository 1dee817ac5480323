"""Atomic checkpoints of a continual-learning run: `.npz` arrays + a JSON commit record, no pickle.

A checkpoint after event i is two files in the checkpoint folder:

* ``ckpt-<i>.npz``: every array leaf of the saved pytrees, named ``<tree>/<key path>``;
* ``ckpt-<i>.json``: the metadata (event index, metrics so far, ...) and the SHA-256 of the `.npz`.

Both are written to temporary names and renamed; the JSON goes last and is the commit record, so a process
killed at any moment leaves either the previous complete checkpoint or the new one, never a half-written one
that could be read. Loading verifies the checksum and falls back to the newest checkpoint that verifies.
Pytrees are restored onto templates (freshly initialised structures of the same shapes), so no Python
objects are ever deserialised.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from typing import Any

import jax
import numpy as np

from clq.atomic import atomic_file

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]

_NAME = re.compile(r"ckpt-(\d+)\.json$")


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (shape or structure mismatch with the current config)."""


def _flatten(name: str, tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {f"{name}/{jax.tree_util.keystr(path)}": np.asarray(leaf) for path, leaf in leaves}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(folder: str, event: int, trees: dict[str, Any], meta: dict, keep: int = 1) -> str:
    """Save `trees` (name -> pytree of arrays) and JSON-able `meta` as the checkpoint of `event`.

    Older checkpoints beyond the newest `keep` are removed after the new one is committed.
    Returns the path of the JSON commit record.
    """
    os.makedirs(folder, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for name, tree in trees.items():
        arrays.update(_flatten(name, tree))
    npz = f"ckpt-{event:06d}.npz"
    with atomic_file(os.path.join(folder, npz)) as f:
        np.savez(f, **arrays)
    record = {"event": event, "npz": npz, "sha256": _sha256(os.path.join(folder, npz)), "meta": meta}
    with atomic_file(os.path.join(folder, f"ckpt-{event:06d}.json"), "w") as f:
        json.dump(record, f)
    for old in sorted(glob.glob(os.path.join(folder, "ckpt-*.json")))[:-keep]:
        for p in (old, old[:-5] + ".npz"):
            if os.path.exists(p):
                os.unlink(p)
    return os.path.join(folder, f"ckpt-{event:06d}.json")


def load_checkpoint(folder: str, templates: dict[str, Any]):
    """Newest verified checkpoint in `folder` restored onto `templates`, or None if there is none.

    Returns:
      (event, trees, meta) with trees shaped and typed like `templates`.
    Raises:
      CheckpointError when a verified checkpoint does not match the templates (config changed).
    """
    records = sorted(glob.glob(os.path.join(folder, "ckpt-*.json")), reverse=True)
    for rec_path in records:
        try:
            with open(rec_path) as f:
                rec = json.load(f)
            npz = os.path.join(folder, rec["npz"])
            if not os.path.exists(npz) or _sha256(npz) != rec["sha256"]:
                continue  # torn or corrupted: try the previous one
        except (OSError, ValueError, KeyError):
            continue
        with np.load(npz, allow_pickle=False) as data:
            trees = {}
            for name, template in templates.items():
                paths, treedef = jax.tree_util.tree_flatten_with_path(template)
                leaves = []
                for path, leaf in paths:
                    key = f"{name}/{jax.tree_util.keystr(path)}"
                    if key not in data.files:
                        raise CheckpointError(f"{rec_path}: no array {key!r}; the config differs from the checkpoint's")
                    arr = data[key]
                    shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)  # arrays or ShapeDtypeStructs
                    if arr.shape != shape or arr.dtype != dtype:
                        raise CheckpointError(f"{rec_path}: {key} is {arr.dtype}{arr.shape}, the config needs "
                                              f"{dtype}{shape}; the config differs from the checkpoint's")
                    leaves.append(jax.numpy.asarray(arr))
                trees[name] = jax.tree_util.tree_unflatten(treedef, leaves)
        return rec["event"], trees, rec["meta"]
    return None
