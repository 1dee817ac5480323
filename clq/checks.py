"""Field checks of the typed configs: each raises ValueError naming the config field and the allowed values.

The config dataclasses (`clq.config`, `clq.train.config`, `clq.quant.frozen.QuantConfig`) call these in their
``__post_init__``; `clq.config.experiment_config` turns the ValueError into a `ConfigError`.
"""

from __future__ import annotations

import math

__all__ = ["check_int", "check_number", "check_flag", "check_choice"]


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" in {lo}..{hi}"
    if lo is not None:
        return f" >= {lo}"
    return ""


def check_int(value, field: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool) in [lo, hi] (either bound None: open)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer{_range(lo, hi)}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{field} must be an integer{_range(lo, hi)}, got {value}")
    return value


def check_number(value, field: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False) -> float:
    """A finite int or float (not a bool) with lo <= value <= hi (< with lo_open / hi_open); returns a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a number, got {value!r}")
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (
            hi is not None and (value >= hi if hi_open else value > hi)):
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        raise ValueError(f"{field} must be {' and '.join(s for s in (lo_s, hi_s) if s)}, got {value}")
    return float(value)


def check_flag(value, field: str) -> bool:
    """A bool (YAML true / false), not a number or a string."""
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be true or false, got {value!r}")
    return value


def check_choice(value, field: str, allowed) -> object:
    """One of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")
    return value
