"""No cyclic garbage collection while a background thread parses Python source (CPython's gh-106905).

CPython 3.11.0-3.11.7 and 3.12.0-3.12.1 keep one AST recursion counter for the whole interpreter. An
``ast.parse`` in one thread can be interrupted by a garbage-collection pass that runs Python code (a finalizer
or a weakref callback releases the GIL); if another thread parses meanwhile, it resets the counter and the first
parse fails with ``SystemError: AST constructor recursion depth mismatch``. clq's wandb sink opens its run in a
background thread, and importing wandb parses source (pydantic reads the docstrings of wandb's settings,
matplotlib its rc values) while the run's main thread parses too (numpy's ``.npy`` headers, ``inspect.signature``
of builtins in JAX). A test run of clq-run crashed on exactly this. Without cyclic collection, no Python code
runs inside a parse, so no thread can interleave with it.

`pause` and `resume` nest across threads: collection is off from the first `pause` to the last `resume`, and comes
back only if it was on before. The pause lasts as long as wandb takes to open (~2-3 s); cyclic garbage made
meanwhile is collected afterwards. On CPython versions with the fix (`NEEDED` false) both are no-ops.
"""

from __future__ import annotations

import gc
import sys
import threading

__all__ = ["NEEDED", "pause", "resume"]

#: True on the CPython versions with the shared counter (fixed in 3.11.8 and 3.12.2).
NEEDED = sys.version_info < (3, 11, 8) or (3, 12) <= sys.version_info < (3, 12, 2)

_lock = threading.Lock()
_depth = 0
_was_enabled = False


def pause(needed: bool | None = None) -> bool:
    """Turn cyclic collection off until the matching `resume`; returns whether it paused (pass that to `resume`).

    `needed` (default `NEEDED`, this CPython's) false: nothing to do.

    Call it from the thread that starts the parsing work, before starting it, so that no parse of its own is under
    way when collection stops.
    """
    global _depth, _was_enabled
    if not (NEEDED if needed is None else needed):
        return False
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    return True


def resume(paused: bool) -> None:
    """End one `pause` (a no-op when `paused` is false); collection comes back with the last one, if it was on."""
    global _depth
    if not paused:
        return
    with _lock:
        _depth -= 1
        if _depth == 0 and _was_enabled:
            gc.enable()
