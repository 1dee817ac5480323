"""Seed aggregation and Pareto fronts over collected sweep members (plain pandas/NumPy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clq.analysis.collect import PARAM_COLUMNS, REPLICATE_COLUMNS

__all__ = ["DEFAULT_METRICS", "aggregate_seeds", "config_label", "metric_column", "pareto_front"]

#: Metrics `aggregate_seeds` summarizes by default (those present in the frame; memory_* added automatically).
DEFAULT_METRICS = ("final_accuracy", "average_accuracy", "forgetting", "joint_accuracy", "latency_s", "energy_j",
                   "latency_s_adaptive", "energy_j_adaptive", "wall_time_s")


def metric_column(df, name: str) -> str:
    """`name` + '_mean' if `df` is an `aggregate_seeds` frame, else `name` (so plots take either frame)."""
    return f"{name}_mean" if f"{name}_mean" in df.columns else name


def config_label(row) -> str:
    """Short label of one configuration, e.g. ``l=19 U8 + U6 N=1500`` (seed omitted)."""
    parts = []
    if "latent_layer" in row and row["latent_layer"] is not None and row["latent_layer"] == row["latent_layer"]:
        parts.append(f"l={int(row['latent_layer'])}")
    if "precision" in row and isinstance(row["precision"], str):
        parts.append(row["precision"])
    if "buffer_size" in row and row["buffer_size"] is not None and row["buffer_size"] == row["buffer_size"]:
        parts.append(f"N={int(row['buffer_size'])}")
    return " ".join(parts) or str(row.get("run_dir", "?"))


def aggregate_seeds(df, by: Sequence[str] | None = None, metrics: Sequence[str] | None = None):
    """Mean and standard deviation over seeds of each configuration's completed members.

    Args:
      df: a `collect_runs` / `collect_wandb` frame.
      by: columns that identify a configuration; default: the `PARAM_COLUMNS` present in `df` except the
        `REPLICATE_COLUMNS` (seed, CORe50 file-list run), which are averaged over. FP32 rows (lr_bits NaN) form
        their own group.
      metrics: scalar columns to summarize; default: `DEFAULT_METRICS` and every memory_* column present.

    Returns:
      One row per configuration: the `by` columns, ``<metric>_mean`` and ``<metric>_std`` (sample std, ddof=1;
      NaN for a single seed), ``n_seeds`` (completed members), ``n_failed`` (failed or missing members),
      ``seeds`` (list), ``accuracy_per_event_mean`` / ``_std`` (lists, element-wise over seeds, over the
      events all seeds completed) and ``label`` (`config_label`). Configurations whose members all failed have
      n_seeds = 0 and NaN metrics, so they stay visible.
    """
    import pandas as pd

    if by is None:
        by = [c for c in PARAM_COLUMNS if c in df.columns and c not in REPLICATE_COLUMNS]
        by = [c for c in by if df[c].notna().any() or c in ("lr_bits", "frozen_bits")]
    by = list(by)
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in df.columns]
        metrics += [c for c in df.columns if c.startswith("memory_")]
    rows = []
    for key, g in df.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ok = g[g["status"] == "completed"] if "status" in g else g
        row = dict(zip(by, key))
        for m in metrics:
            vals = pd.to_numeric(ok[m], errors="coerce") if m in ok else pd.Series(dtype=float)
            row[f"{m}_mean"] = float(vals.mean()) if vals.notna().any() else np.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if vals.notna().sum() > 1 else np.nan
        row["n_seeds"] = len(ok)  # completed replicates (seeds x file-list runs)
        row["n_failed"] = len(g) - len(ok)
        row["seeds"] = sorted(int(s) for s in ok["seed"].dropna()) if "seed" in ok else []
        curves = [np.asarray(a, float) for a in ok.get("accuracy_per_event", []) if len(a)]
        if curves:
            n = min(len(c) for c in curves)
            stack = np.stack([c[:n] for c in curves])
            row["accuracy_per_event_mean"] = stack.mean(0).tolist()
            row["accuracy_per_event_std"] = (stack.std(0, ddof=1) if len(curves) > 1 else np.zeros(n)).tolist()
        else:
            row["accuracy_per_event_mean"], row["accuracy_per_event_std"] = [], []
        row["label"] = config_label(row)
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("latent_layer", "buffer_size"):
        if col in out:
            out[col] = out[col].astype("Int64")
    return out


def pareto_front(df, x: str, y: str = "final_accuracy", minimize_x: bool = True, maximize_y: bool = True):
    """Which rows are Pareto-optimal for (x, y): no other row is at least as good in both and better in one.

    With the defaults, row i is on the front iff no row j has ``x_j <= x_i`` and ``y_j >= y_i`` with one of
    them strict. Identical points are all on the front (neither dominates). Rows with NaN in x or y are not.
    `x`/`y` may name a raw column or a metric of an `aggregate_seeds` frame (``final_accuracy`` finds
    ``final_accuracy_mean``). O(n log n): sort by x, keep the running best y.

    Args:
      df: DataFrame with the two columns.
      x, y: column names (e.g. x = "memory_lr_buffer", "latency_s" or "energy_j").
      minimize_x, maximize_y: direction of each objective.

    Returns:
      Boolean ``pandas.Series`` aligned with ``df.index``.
    """
    import pandas as pd

    xs = pd.to_numeric(df[metric_column(df, x)], errors="coerce").to_numpy(float)
    ys = pd.to_numeric(df[metric_column(df, y)], errors="coerce").to_numpy(float)
    # Reduce to "minimize x, maximize y".
    xs = xs if minimize_x else -xs
    ys = ys if maximize_y else -ys
    on = np.zeros(len(xs), dtype=bool)
    valid = np.flatnonzero(~(np.isnan(xs) | np.isnan(ys)))
    order = valid[np.lexsort((-ys[valid], xs[valid]))]  # x ascending, then y descending
    best = -np.inf  # best y among rows with strictly smaller x
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and xs[order[j]] == xs[order[i]]:
            j += 1
        group = order[i:j]
        top = ys[group[0]]  # the group's max y (sorted descending)
        if top > best:
            on[group[ys[group] == top]] = True
            best = top
        i = j
    return pd.Series(on, index=df.index, name="pareto")
