"""Tracking sinks.

* JSON: ``events.jsonl`` in the run dir gets one line per learning event as soon as it ends (a crash loses
  at most the event in flight); ``results.json`` is written atomically (temp file + rename) at the end.
* wandb: a run in `mode` (offline by default, written under ``<run dir>/wandb``; upload later with
  ``wandb sync <run dir>/wandb/offline-run-*``), kept by a child process (`clq.tracking.wandb_host`), that tells
  the experiment's story:

  - config: the resolved config, plus the paper's names ``l``, ``Q_LR``, ``N_LR``, ``Q_frozen`` (paper.md §4;
    `clq.analysis.collect.paper_names`) to group and plot a sweep by;
  - the learning event (``event``) as the step metric of every curve; per event: accuracy, training loss and
    accuracy, ``session/<name>`` and ``class/<k>`` accuracies;
  - at the end: the accuracy matrices as tables (``accuracy_matrix/per_class``, ``.../per_session``) and a heatmap
    image, the replay buffer's class histogram (table and bar chart), the summary (final/average accuracy,
    forgetting, the cost model's memory breakdown, latency and energy per learning event on the target), and an
    artifact holding results.json (and the exported frozen stage when there is one).
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
    """log_event(index, row, detail=None) after each event; log_summary(dict) and log_results(results, run_dir) at
    the end of a completed run; finish(ok) always."""

    log_event: Callable[..., None]
    log_summary: Callable[[dict], None]
    finish: Callable[[bool], None]
    log_results: Callable[[dict, str], None]


_SCALARS = ("accuracy", "train_loss", "train_accuracy", "n_new")


def make_tracker(run_dir: str, backend: str, config: dict, project: str = "clq", mode: str = "offline",
                 group: str | None = None, name: str | None = None) -> Tracker:
    """Open the sinks for one run. `backend` is 'wandb' or 'none' (the JSON sink is always on).

    The wandb run lives in the process's wandb host (`clq.tracking.wandb_host`), a child process at the lowest
    CPU priority: importing wandb and ``wandb.init`` never take the computing process's interpreter or a core it
    uses, and no call here waits for wandb before `finish`. An error of the wandb run (opening it, logging to it)
    is raised at the tracker's next call.
    """
    os.makedirs(run_dir, exist_ok=True)
    events_path = os.path.join(run_dir, "events.jsonl")
    open(events_path, "w").close()
    host = key = None
    if backend == "wandb":
        from clq.tracking.wandb_host import host as wandb_host

        host = wandb_host()
        key = host.open(run_dir, config, project, mode, group, name)

    def send(op: str, **fields) -> None:
        if host is not None:
            host.check(key)
            host.send({"op": op, "key": key, **fields})

    def log_event(i: int, row: dict, detail: dict | None = None) -> None:
        with open(events_path, "a") as f:
            f.write(json.dumps(to_jsonable(row)) + "\n")
        if host is not None:
            metrics = {"event": i, **{k: row[k] for k in _SCALARS if k in row}}
            if detail:
                metrics.update({f"session/{k}": v for k, v in detail["per_session"].items() if v is not None})
                metrics.update({f"class/{k}": v for k, v in enumerate(detail["per_class"]) if v is not None})
            send("log", metrics=metrics, step=i)

    def log_summary(summary: dict) -> None:
        send("summary", values=to_jsonable(summary))

    def log_results(results: dict, run_dir: str) -> None:
        send("results", results=results, run_dir=run_dir)

    def finish(ok: bool) -> None:
        if host is None:
            return
        error = host.finish(key, ok)
        if error is not None and ok:  # when the run failed, its own error is the one to report
            raise RuntimeError(f"wandb: {error}")

    return Tracker(log_event, log_summary, finish, log_results)
