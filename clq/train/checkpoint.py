"""Atomic checkpoints of a continual-learning run: `.npz` arrays + a JSON commit record, no pickle.

A checkpoint after event i is two files in the checkpoint folder:

* ``ckpt-<i>.npz``: every array leaf of the saved pytrees, named ``<tree>/<key path>``;
* ``ckpt-<i>.json``: the metadata (event index, metrics so far, ...) and the SHA-256 of the `.npz`;
* with `CheckpointWriter.save`'s ``static`` trees (a run's frozen network, the same after every event), also
  ``ckpt-static-<hash>.npz``, written once and named, with its SHA-256, by every record that uses it.

Both are written to temporary names and renamed; the JSON goes last and is the commit record, so a process
killed at any moment leaves either the previous complete checkpoint or the new one, never a half-written one
that could be read. Loading verifies the checksums and falls back to the newest checkpoint that verifies.
Pytrees are restored onto templates (freshly initialised structures of the same shapes), so no Python
objects are ever deserialised.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import hashlib
import io
import json
import os
import re
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np

from clq.atomic import atomic_file

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "CheckpointWriter"]

_NAME = re.compile(r"ckpt-(\d+)\.json$")
_STATIC_PREFIX = "ckpt-static-"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (shape or structure mismatch with the current config)."""


def _flatten(name: str, tree) -> dict[str, np.ndarray]:
    """The leaves of `tree` as host arrays named ``<name>/<key path>``, copied: the caller may donate or
    overwrite the device buffers as soon as this returns (a CPU array can otherwise be a view of one)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {f"{name}/{jax.tree_util.keystr(path)}": np.array(leaf, copy=True) for path, leaf in leaves}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _host_arrays(trees: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, tree in trees.items():
        arrays.update(_flatten(name, tree))
    return arrays


def _npz_bytes(arrays: dict[str, np.ndarray]) -> memoryview:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getbuffer()


class _Static(NamedTuple):
    """The trees a run's checkpoints share (`CheckpointWriter.save`'s ``static``): one content-addressed `.npz`
    that every checkpoint's record names with its SHA-256; `data`: its bytes to write, None when it is written."""

    npz: str
    sha256: str
    data: memoryview | None


class _StaticWritten(NamedTuple):
    """What `CheckpointWriter` last wrote of `static`: its leaves (the array objects) and tree structure, the
    folder, and the `_Static` file (``data`` None) that later records name while these stay the same."""

    leaves: list
    treedef: Any
    folder: str
    file: _Static


def _static(trees: dict[str, Any]) -> _Static:
    data = _npz_bytes(_host_arrays(trees))
    sha = hashlib.sha256(data).hexdigest()
    return _Static(f"{_STATIC_PREFIX}{sha[:32]}.npz", sha, data)


def _write(folder: str, event: int, arrays: dict[str, np.ndarray], meta: dict, keep: int,
           static: _Static | None = None) -> str:
    """Commit one checkpoint: the `.npz` (and the shared static one, when it is new), then its JSON record, then
    drop all but the newest `keep` and the static files no kept record names."""
    os.makedirs(folder, exist_ok=True)
    npz = f"ckpt-{event:06d}.npz"
    if static is not None and static.data is not None:
        with atomic_file(os.path.join(folder, static.npz)) as f:
            f.write(static.data)
    data = _npz_bytes(arrays)
    with atomic_file(os.path.join(folder, npz)) as f:
        f.write(data)
    # Hashed from memory, not by reading the file back; the file holds exactly these bytes.
    record = {"event": event, "npz": npz, "sha256": hashlib.sha256(data).hexdigest(), "meta": meta}
    if static is not None:
        record["static"] = {"npz": static.npz, "sha256": static.sha256}
    with atomic_file(os.path.join(folder, f"ckpt-{event:06d}.json"), "w") as f:
        json.dump(record, f)
    _prune(folder, event, keep)
    return os.path.join(folder, f"ckpt-{event:06d}.json")


def _prune(folder: str, event: int, keep: int) -> None:
    """Drop every checkpoint but the newest `keep` up to `event`, the one just committed. Checkpoints of later
    events are stale (a run started over with resume=false in the same folder): left there, `load_checkpoint`
    would prefer them to the new ones."""
    records = {}
    for path in glob.glob(os.path.join(folder, "ckpt-*.json")):
        m = _NAME.search(os.path.basename(path))
        if m:
            records[int(m.group(1))] = path
    kept = sorted(e for e in records if e <= event)[-keep:]
    for e, path in records.items():
        if e not in kept:
            for p in (path, path[:-5] + ".npz"):
                if os.path.exists(p):
                    os.unlink(p)
    named = set()
    for e in kept:
        try:
            with open(records[e]) as f:
                named.add(json.load(f).get("static", {}).get("npz"))
        except (OSError, ValueError, AttributeError):
            pass  # an unreadable record is not loaded either
    for p in glob.glob(os.path.join(folder, _STATIC_PREFIX + "*.npz")):
        if os.path.basename(p) not in named:
            os.unlink(p)


def save_checkpoint(folder: str, event: int, trees: dict[str, Any], meta: dict, keep: int = 1) -> str:
    """Save `trees` (name -> pytree of arrays) and JSON-able `meta` as the checkpoint of `event`.

    Older checkpoints beyond the newest `keep` are removed after the new one is committed.
    Returns the path of the JSON commit record.
    """
    return _write(folder, event, _host_arrays(trees), meta, keep)


class CheckpointWriter:
    """`save_checkpoint` in a background thread, so that a run's next event computes while the last one is
    written (serializing, hashing and two fsyncs: ~20 ms per checkpoint of the default run on 2 CPU cores; on
    a GPU the host is otherwise idle meanwhile).

    `save` copies the arrays to the host before it returns (the learning step donates its state) and then
    waits for the previous checkpoint to be committed, so checkpoints are committed in order and at most one
    is in flight. A write that failed raises at the next `save` or at `close`. A process killed mid-write
    leaves the previous complete checkpoint, as `save_checkpoint` does. Use as a context manager: leaving the
    block waits for the last write.
    """

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clq-checkpoint")
        self._pending: concurrent.futures.Future | None = None
        self._static: _StaticWritten | None = None  # the `static` trees last written, and where

    def save(self, folder: str, event: int, trees: dict[str, Any], meta: dict, keep: int = 1,
             static: dict[str, Any] | None = None) -> None:
        """Checkpoint `trees` and `meta` as event `event` in `folder`, in the background.

        `static`: trees (name -> pytree) that stay the same array objects from one save to the next, such as a
        run's frozen network: written once, to a content-addressed `.npz` every later record names, and loaded
        by `load_checkpoint` with the rest. They are serialized again (on the caller's thread, the rest is
        written in the background) when their arrays, structure or folder change, or their file is gone.
        """
        arrays = _host_arrays(trees)
        # A snapshot of the metadata as it is now (the run keeps appending to its rows), through JSON.
        meta = json.loads(json.dumps(meta))
        self.wait()  # the last write committed (or raised, and then forgot its static file): decide on a settled disk
        shared = None
        if static:
            leaves, treedef = jax.tree_util.tree_flatten(static)
            last = self._static
            if (last is not None and last.folder == folder and last.treedef == treedef
                    and len(leaves) == len(last.leaves) and all(a is b for a, b in zip(leaves, last.leaves))
                    and os.path.exists(os.path.join(folder, last.file.npz))):  # not pruned by another writer
                shared = last.file
            else:
                shared = _static(static)  # serialized here, on the caller's thread: once per run
                self._static = _StaticWritten(leaves, treedef, folder, shared._replace(data=None))
        self._pending = self._pool.submit(_write, folder, event, arrays, meta, keep, shared)

    def wait(self) -> None:
        """Block until the checkpoint in flight is committed; raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except BaseException:
                self._static = None  # its static file may not exist: write it again
                raise

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Another error is propagating: commit what can be committed, and report a failed write beside it.
        try:
            self.close()
        except Exception as e:  # noqa: BLE001 - the propagating error is the one to raise
            warnings.warn(f"the last checkpoint could not be written either: {e}", RuntimeWarning, stacklevel=2)


def load_checkpoint(folder: str, templates: dict[str, Any]):
    """Newest verified checkpoint in `folder` restored onto `templates`, or None if there is none.

    Returns:
      (event, trees, meta) with trees shaped and typed like `templates`.
    Raises:
      CheckpointError when a verified checkpoint does not match the templates (config changed).
    """
    records = sorted(glob.glob(os.path.join(folder, "ckpt-*.json")), reverse=True)
    unreadable = []
    for rec_path in records:
        try:
            with open(rec_path) as f:
                rec = json.load(f)
            files = [(os.path.join(folder, rec["npz"]), rec["sha256"])]
            if "static" in rec:
                files.append((os.path.join(folder, rec["static"]["npz"]), rec["static"]["sha256"]))
            if not all(os.path.exists(p) and _sha256(p) == sha for p, sha in files):
                unreadable.append(os.path.basename(rec_path))
                continue  # torn or corrupted: try the previous one
        except (OSError, ValueError, KeyError, TypeError):
            unreadable.append(os.path.basename(rec_path))
            continue
        with contextlib.ExitStack() as stack:
            parts = [stack.enter_context(np.load(p, allow_pickle=False)) for p, _ in files]
            data = {k: part for part in parts for k in part.files}  # array name -> the file that holds it
            trees = {}
            for name, template in templates.items():
                paths, treedef = jax.tree_util.tree_flatten_with_path(template)
                leaves = []
                for path, leaf in paths:
                    key = f"{name}/{jax.tree_util.keystr(path)}"
                    if key not in data:
                        raise CheckpointError(f"{rec_path}: no array {key!r}; the config differs from the checkpoint's")
                    arr = data[key][key]
                    shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)  # arrays or ShapeDtypeStructs
                    if arr.shape != shape or arr.dtype != dtype:
                        raise CheckpointError(f"{rec_path}: {key} is {arr.dtype}{arr.shape}, the config needs "
                                              f"{dtype}{shape}; the config differs from the checkpoint's")
                    leaves.append(jax.numpy.asarray(arr))
                trees[name] = jax.tree_util.tree_unflatten(treedef, leaves)
        return rec["event"], trees, rec["meta"]
    if unreadable:  # a run then starts over: say why, rather than silently losing the events they held
        warnings.warn(f"{folder}: no checkpoint verifies ({', '.join(unreadable)}: a file missing or damaged); "
                      "none is loaded", RuntimeWarning, stacklevel=2)
    return None
