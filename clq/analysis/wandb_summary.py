"""A sweep's summary run in wandb: the trade-off one click away from the members' runs.

When a multirun ends (`clq.analysis.callbacks.SweepSummary`, any launcher) and its members log to wandb, one more
run joins their group (``tracking.group``, the sweep folder by default): job type ``sweep-summary``, written under
``<sweep dir>/wandb``. It carries

* ``sweep/members``: the `collect_runs` table (one row per member, failures with their errors);
* ``sweep/configurations``: `aggregate_seeds` (mean ± std over seeds per configuration), with ``front_<cost>``
  marking each configuration on a Pareto front;
* ``pareto/<cost>``: accuracy against replay memory, latency and energy per learning event (cost model, the
  configured target) as wandb scatter plots, with the front's configurations listed in the summary
  (``front/<cost>``), and the same plot with the front drawn as an image (``pareto/<cost>_plot``);
* an artifact holding ``sweep.csv``.

`clq.analysis.collect_wandb` leaves this run out (its config holds ``clq_sweep_summary: true``).
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["log_sweep_summary", "PARETO_COSTS", "SUMMARY_FLAG"]

#: The costs a Pareto front is drawn against (`collect_runs` columns).
PARETO_COSTS = ("memory_lr_buffer", "latency_s", "energy_j")
#: Config key that marks a sweep's summary run.
SUMMARY_FLAG = "clq_sweep_summary"


def _cell(v):
    import pandas as pd

    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _table(df):
    import wandb

    return wandb.Table(columns=[str(c) for c in df.columns],
                       data=[[_cell(v) for v in row] for row in df.itertuples(index=False)])


def log_sweep_summary(sweep_dir: str, df, csv_path: str, group: str | None, project: str = "clq",
                      mode: str = "offline") -> str | None:
    """Write the summary run of a sweep. Returns its wandb folder, or None when no member completed.

    Args:
      df: `collect_runs(sweep_dir)`; csv_path: the sweep.csv written from it.
      group, project, mode: the members' wandb group, project and mode.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import wandb

    from clq.analysis.plots import plot_tradeoff
    from clq.analysis.tradeoffs import aggregate_seeds, config_label, metric_column, pareto_front

    done = df[df["status"] == "completed"]
    if done.empty:
        return None
    agg = aggregate_seeds(df)
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=project, mode=mode, dir=sweep_dir, group=group, job_type="sweep-summary",
                     name=f"summary of {os.path.basename(os.path.normpath(sweep_dir))}",
                     config={SUMMARY_FLAG: True, "sweep_dir": sweep_dir, "members": int(len(df)),
                             "completed": int(len(done))}, reinit="create_new")
    try:
        y = metric_column(agg, "final_accuracy")
        fronts = {}
        for cost in PARETO_COSTS:
            x = metric_column(agg, cost)
            if x is None or x not in agg or agg[x].isna().all():
                continue
            on = pareto_front(agg, cost)
            agg[f"front_{cost}"] = on
            pts = agg[[x, y]].assign(configuration=[config_label(r) for _, r in agg.iterrows()],
                                     on_front=on.astype(bool))
            table = _table(pts)
            run.log({f"pareto/{cost}": wandb.plot.scatter(table, x, y,
                                                          title=f"final accuracy vs {cost} (Pareto front marked)")})
            fig = plot_tradeoff(agg, cost)
            run.log({f"pareto/{cost}_plot": wandb.Image(fig)})
            plt.close(fig)
            fronts[cost] = [config_label(r) for _, r in agg[on].iterrows()]
        run.log({"sweep/members": _table(df), "sweep/configurations": _table(agg)})
        for cost, labels in fronts.items():
            run.summary[f"front/{cost}"] = labels
        run.summary["members"], run.summary["completed"] = int(len(df)), int(len(done))
        art = wandb.Artifact(f"sweep-{run.id}", type="sweep", description="sweep.csv: one row per member")
        art.add_file(csv_path)
        run.log_artifact(art)
        folder = run.dir
    except BaseException:
        run.finish(exit_code=1)  # a summary run cut short says so
        raise
    run.finish()
    return os.path.dirname(folder)
