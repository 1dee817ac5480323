"""Process environment variables set for a block of work and put back afterwards."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

__all__ = ["environment"]


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with `env` set inside the block, and as it was afterwards (variables that were unset are
    removed again), also when the block raises."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
