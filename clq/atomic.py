"""Atomic file writes: readers see the old file or the complete new one, never a torn one.

Every file clq writes that a crash could leave half-written (results, checkpoints, latent-cache shards, sweep
tables and reports, downloads) goes through `atomic_file`: the content is written to a temporary file in the
destination's folder (same filesystem, so the rename is atomic), flushed and fsynced, then renamed over the
destination. On any error the temporary file is removed and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator

__all__ = ["atomic_file"]


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit it replaces `path` atomically.

    Args:
      path: the destination; its folder is created if missing.
      mode: "wb" or "w" (text; `open_kwargs` such as ``newline=""`` are passed to `open`).
    Yields:
      the open file; ``f.name`` is the temporary path (e.g. to checksum the content before it is committed).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
