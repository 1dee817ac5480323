"""A self-contained HTML trade-off report of one sweep (tables + PNG plots inlined), and the sweep's CSV.

    python -m clq.analysis multirun/offline_grid/latest          # -> <sweep>/report.html, <sweep>/sweep.csv
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from typing import Sequence

from clq.analysis.collect import collect_runs, collect_wandb, write_csv
from clq.analysis.paper import compare_with_paper
from clq.analysis.plots import (AXIS_LABELS, plot_accuracy_per_event, plot_memory_breakdown, plot_tradeoff,
                                target_memory_limits)
from clq.analysis.tradeoffs import aggregate_seeds, metric_column, pareto_front
from clq.atomic import atomic_file

__all__ = ["front_table", "render_report", "summary_table"]

COST_AXES = ("memory_lr_buffer", "latency_s", "energy_j")


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def summary_table(agg, axes: Sequence[str] = COST_AXES):
    """One row per configuration with the numbers a reader compares, sorted by accuracy.

    Args:
      agg: an `aggregate_seeds` frame.
      axes: cost columns; a ``front: <axis>`` column marks the configurations on each Pareto front.

    Returns:
      DataFrame: configuration, seeds, accuracy (% mean +- std), forgetting (points), replay buffer and total
      memory on the device (MB, cost model), fits, latency (s), energy (J), and one front column per axis.
    """
    import pandas as pd

    def pm(m, scale=100.0, fmt="{:.1f}"):
        mean, std = agg[f"{m}_mean"] * scale, agg.get(f"{m}_std")
        std = std * scale if std is not None else None
        return [(fmt.format(a) + ("" if s != s or s is None else " ± " + fmt.format(s))) if a == a else "n/a"
                for a, s in zip(mean, std if std is not None else [float("nan")] * len(mean))]

    t = pd.DataFrame({"configuration": agg["label"], "seeds": agg["n_seeds"]})
    if "n_failed" in agg:
        t["failed"] = agg["n_failed"]
    t["accuracy (%)"] = pm("final_accuracy")
    if "forgetting_mean" in agg:
        t["forgetting (points)"] = pm("forgetting")
    for m, name in (("memory_lr_buffer", "replay buffer, cost model (MB)"),
                    ("memory_total", "total memory, cost model (MB)")):
        if f"{m}_mean" in agg:
            t[name] = (agg[f"{m}_mean"] / 1e6).round(3)
    for m, name in (("latency_s", "latency / event (s)"), ("energy_j", "energy / event (J)")):
        if f"{m}_mean" in agg:
            t[name] = agg[f"{m}_mean"].map(lambda v: f"{v:.3g}")
    for ax in axes:
        if metric_column(agg, ax) in agg:
            t[f"front: {ax.split('_')[0] if ax != 'memory_lr_buffer' else 'memory'}"] = pareto_front(agg, ax).map(
                {True: "*", False: ""})
    order = agg["final_accuracy_mean"].fillna(-1).sort_values(ascending=False).index
    return t.loc[order].reset_index(drop=True)


def front_table(agg, x: str = "memory_lr_buffer"):
    """The Pareto-optimal configurations of (x, final accuracy), cheapest first (an `aggregate_seeds` subset)."""
    on = pareto_front(agg, x)
    return agg[on].sort_values(metric_column(agg, x))


def render_report(root: str, out: str | None = None, use_wandb: bool = False, title: str | None = None) -> str:
    """Collect a sweep and write a self-contained HTML report (and ``sweep.csv``) next to it.

    Args:
      root: the sweep folder (multirun dir, ``.../latest``, or any folder of run dirs).
      out: HTML path; default ``<root>/report.html``.
      use_wandb: collect the offline wandb runs instead of results.json files.
      title: heading; default the folder name.

    Returns:
      The HTML path.
    """
    import matplotlib

    matplotlib.use("Agg")
    t0 = time.perf_counter()
    root = os.path.abspath(root)
    df = collect_wandb(root) if use_wandb else collect_runs(root)
    if df.empty:
        raise FileNotFoundError(f"{root}: no sweep members (folders with results.json or .hydra/overrides.yaml)")
    csv = write_csv(df, os.path.join(root, "sweep.csv"))
    agg = aggregate_seeds(df)
    ok = agg[agg["n_seeds"] > 0]
    parts = [f"<h1>{html.escape(title or os.path.basename(os.path.realpath(root)))}</h1>",
             f"<p><code>{html.escape(os.path.realpath(root))}</code>: {len(df)} members, "
             f"{int((df['status'] == 'completed').sum())} completed, {int((df['status'] != 'completed').sum())} "
             f"failed or missing; {len(agg)} configurations. Per-member table: <code>{html.escape(csv)}</code>.</p>"]
    bad = df[df["status"] != "completed"]
    if len(bad):
        parts.append("<h2>Members that did not complete</h2>")
        parts.append(bad[["job", "status", "overrides", "error"]].to_html(index=False, na_rep=""))
    target = df["target"].dropna().iloc[0] if df["target"].notna().any() else None
    if len(ok):
        parts.append("<h2>Configurations</h2><p>Mean ± std over seeds; * marks the Pareto front of accuracy vs "
                     "each cost (replay buffer memory, latency and energy per learning event on "
                     f"<b>{html.escape(str(target))}</b>, from the cost model).</p>")
        parts.append(summary_table(ok).to_html(index=False, na_rep=""))
        parts.append("<h2>Accuracy vs replay memory</h2>")
        if target is not None:
            lim = ", ".join(f"{n}: {b / 1e6:.2f} MB" for n, b in target_memory_limits(target))
            parts.append(f"<p>Vertical lines: the target's memories ({html.escape(lim)}).</p>")
        parts.append(_png(plot_tradeoff(ok, "memory_lr_buffer", target=target)))
        for ax in ("latency_s", "energy_j"):
            if agg[metric_column(agg, ax)].notna().any():
                parts.append(f"<h2>Accuracy vs {html.escape(AXIS_LABELS[ax])}</h2>")
                parts.append(_png(plot_tradeoff(ok, ax, limits=False)))
        front = front_table(ok)
        parts.append("<h2>Accuracy per learning event (memory Pareto front)</h2>")
        parts.append(_png(plot_accuracy_per_event(front)))
        parts.append("<h2>Memory breakdown of the Pareto points</h2>")
        parts.append(_png(plot_memory_breakdown(front)))
        parts.append("<h2>Compared with the paper (paper.md §4, CORe50 NICv2-391)</h2>"
                     "<p>Different data and network size, so compare the shape of each finding, not the "
                     "numbers.</p>")
        parts.append(compare_with_paper(ok).to_html(index=False, na_rep=""))
    parts.append(f"<p><small>rendered by clq.analysis in {time.perf_counter() - t0:.1f} s</small></p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>clq sweep report</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    out = out or os.path.join(root, "report.html")
    with atomic_file(out, "w") as f:
        f.write(doc)
    return out
