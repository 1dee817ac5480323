"""Tracking sinks.

* JSON: ``events.jsonl`` in the run dir gets one line per learning event as soon as it ends (a crash loses
  at most the event in flight); ``results.json`` is written atomically (temp file + rename) at the end.
* wandb: a run in `mode` (offline by default, written under ``<run dir>/wandb``; upload later with
  ``wandb sync <run dir>/wandb/offline-run-*``) that tells the experiment's story:

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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, NamedTuple

from clq.atomic import atomic_file
from clq.tracking import gc_pause

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

    The wandb run opens in a background thread (`_open_wandb`: importing wandb and the plotting code and
    ``wandb.init`` take ~2-3 s of a ~23 s rerun of the default experiment): the run computes meanwhile, mostly in
    XLA, which leaves the interpreter free. Every wandb call waits for it; an error opening it is raised there.
    Cyclic garbage collection is paused meanwhile on the CPython versions where two threads parsing source can
    crash each other (`clq.tracking.gc_pause`).
    """
    os.makedirs(run_dir, exist_ok=True)
    events_path = os.path.join(run_dir, "events.jsonl")
    open(events_path, "w").close()
    opening: Future | None = None
    if backend == "wandb":
        os.environ.setdefault("WANDB_SILENT", "true")
        pool = ThreadPoolExecutor(1, thread_name_prefix="clq-wandb-open")
        paused = gc_pause.pause()  # here, on the main thread, which is not inside a parse now
        opening = pool.submit(_open_wandb, run_dir, config, project, mode, group, name, paused)
        pool.shutdown(wait=False)

    def wandb_run():
        return None if opening is None else opening.result()

    def log_event(i: int, row: dict, detail: dict | None = None) -> None:
        with open(events_path, "a") as f:
            f.write(json.dumps(to_jsonable(row)) + "\n")
        run = wandb_run()
        if run is not None:
            metrics = {"event": i, **{k: row[k] for k in _SCALARS if k in row}}
            if detail:
                metrics.update({f"session/{k}": v for k, v in detail["per_session"].items() if v is not None})
                metrics.update({f"class/{k}": v for k, v in enumerate(detail["per_class"]) if v is not None})
            run.log(metrics, step=i)

    def log_summary(summary: dict) -> None:
        run = wandb_run()
        if run is not None:
            for k, v in to_jsonable(summary).items():
                run.summary[k] = v

    def log_results(results: dict, run_dir: str) -> None:
        run = wandb_run()
        if run is not None:
            _log_results(run, results, run_dir)

    def finish(ok: bool) -> None:
        if opening is None:
            return
        if not ok and opening.exception() is not None:
            return  # the run failed; wandb never opened, and the run's own error is the one to report
        opening.result().finish(exit_code=0 if ok else 1)

    return Tracker(log_event, log_summary, finish, log_results)


def _open_wandb(run_dir: str, config: dict, project: str, mode: str, group: str | None, name: str | None,
                paused: bool = False):
    """``wandb.init`` of a run with the experiment's config (and the paper's names), its event axis defined;
    ends the caller's `gc_pause.pause` (`paused`) however it ends."""
    try:
        import wandb  # imported lazily: it costs ~2 s and is optional

        from clq.analysis.collect import paper_names  # the analysis tables' names too; lazily, as wandb

        # The end of the run draws its heatmap with matplotlib (`_log_results`): imported here, off the main thread.
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot  # noqa: F401

        run = wandb.init(project=project, mode=mode, dir=run_dir, group=group, name=name, reinit="create_new",
                         config=to_jsonable({**config, **paper_names(config)}))  # runs may be open side by side
        run.define_metric("event")  # the learning event is the x-axis of every curve
        run.define_metric("*", step_metric="event")
        return run
    finally:
        gc_pause.resume(paused)


def _log_results(run, results: dict, run_dir: str) -> None:
    """The end of a run in wandb: accuracy matrices (tables + heatmap), the buffer's class histogram, the
    results.json (+ export) artifact."""
    import wandb

    from clq.analysis.plots import accuracy_heatmap

    m = results["accuracy_matrix"]
    sessions = list(results["final_accuracy_per_session"])
    classes = len(m["per_class"][0]) if m["per_class"] else 0
    run.log({"accuracy_matrix/per_class": wandb.Table(
                 columns=["event"] + [f"class {k}" for k in range(classes)],
                 data=[[i, *row] for i, row in enumerate(m["per_class"])]),
             "accuracy_matrix/per_session": wandb.Table(
                 columns=["event"] + sessions, data=[[i, *row] for i, row in enumerate(m["per_session"])]),
             "accuracy_matrix/heatmap": wandb.Image(accuracy_heatmap(m["per_class"], m["per_session"], sessions))})
    hist = results["buffer"]["class_histogram"]
    table = wandb.Table(columns=["class", "latents"], data=[[str(k), int(n)] for k, n in enumerate(hist)])
    run.log({"buffer/class_histogram": wandb.plot.bar(table, "class", "latents",
                                                      title="replay buffer: latents per class at the end")})
    art = wandb.Artifact(f"results-{run.id}", type="results",
                         description="results.json of the run (and its exported frozen stage, if any)")
    art.add_file(os.path.join(run_dir, "results.json"))
    for key in ("npz", "json", "c_header"):
        path = (results.get("export") or {}).get(key)
        if path and os.path.exists(path):
            art.add_file(path, name=f"export/{os.path.basename(path)}")
    run.log_artifact(art)
