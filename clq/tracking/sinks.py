"""Tracking sinks.

* JSON: ``events.jsonl`` in the run dir gets one line per learning event as soon as it ends (a crash loses
  at most the event in flight); ``results.json`` is written atomically (temp file + rename) at the end.
* wandb: a run in `mode` (offline by default, written under ``<run dir>/wandb``; upload later with
  ``wandb sync <run dir>/wandb/offline-run-*``), the resolved config, per-event metrics and summary metrics.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, NamedTuple

from clq.atomic import atomic_file

__all__ = ["Tracker", "make_tracker", "write_json_atomic", "to_jsonable"]


def to_jsonable(x: Any):
    """Convert NumPy scalars/arrays and non-finite floats (-> None) into plain JSON values."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return to_jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json_atomic(path: str, obj: Any) -> None:
    """Write `obj` as JSON to `path` atomically (`clq.atomic.atomic_file`); NaN/inf become null."""
    with atomic_file(path, "w") as f:
        json.dump(to_jsonable(obj), f, indent=1)


class Tracker(NamedTuple):
    """log_event(index, row) after each event; log_summary(dict) at the end; finish(ok) always."""

    log_event: Callable[[int, dict], None]
    log_summary: Callable[[dict], None]
    finish: Callable[[bool], None]


_SCALARS = ("accuracy", "train_loss", "train_accuracy", "n_new")


def make_tracker(run_dir: str, backend: str, config: dict, project: str = "clq", mode: str = "offline",
                 group: str | None = None, name: str | None = None) -> Tracker:
    """Open the sinks for one run. `backend` is 'wandb' or 'none' (the JSON sink is always on)."""
    os.makedirs(run_dir, exist_ok=True)
    events_path = os.path.join(run_dir, "events.jsonl")
    open(events_path, "w").close()
    run = None
    if backend == "wandb":
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb  # imported lazily: it costs ~2 s and is optional

        run = wandb.init(project=project, mode=mode, dir=run_dir, config=to_jsonable(config), group=group,
                         name=name, reinit="create_new")  # runs may be open side by side (a group's members)

    def log_event(i: int, row: dict) -> None:
        with open(events_path, "a") as f:
            f.write(json.dumps(to_jsonable(row)) + "\n")
        if run is not None:
            run.log({k: row[k] for k in _SCALARS if k in row}, step=i)

    def log_summary(summary: dict) -> None:
        if run is not None:
            for k, v in to_jsonable(summary).items():
                run.summary[k] = v

    def finish(ok: bool) -> None:
        if run is not None:
            run.finish(exit_code=0 if ok else 1)

    return Tracker(log_event, log_summary, finish)
