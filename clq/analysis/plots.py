"""Trade-off plots of a sweep: accuracy vs memory/latency/energy with the Pareto front and the target's memory
limits, accuracy per learning event, and memory breakdown bars.

Every function takes a `collect_runs` frame (one row per member) or an `aggregate_seeds` frame (one row per
configuration, ``<metric>_mean``/``_std``; error bars are drawn from the std) and returns the matplotlib Figure.
Memory is plotted in MB (1e6 B, paper.md §5), accuracy in %.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clq.analysis.tradeoffs import config_label, metric_column, pareto_front

__all__ = ["AXIS_LABELS", "accuracy_heatmap", "plot_accuracy_per_event", "plot_memory_breakdown", "plot_tradeoff",
           "target_memory_limits"]

AXIS_LABELS = {
    "memory_lr_buffer": "replay buffer memory (MB, cost model)",
    "memory_total": "total memory of a learning event (MB, cost model)",
    "latency_s": "latency per learning event (s, cost model)",
    "energy_j": "energy per learning event (J, cost model)",
    "latency_s_adaptive": "adaptive-stage latency per learning event (s, cost model)",
    "energy_j_adaptive": "adaptive-stage energy per learning event (J, cost model)",
    "final_accuracy": "final test accuracy (%)",
    "average_accuracy": "average test accuracy over events (%)",
}
# What each cost-model tier is called on the shipped targets (conf/target/*.yaml).
_NVM_NAMES = {"vega": "MRAM", "stm32l4": "on-chip Flash"}
# Memory components drawn by plot_memory_breakdown, bottom to top; the rest of memory_total is "other".
# l1_tiles is left out: it is L1 scratchpad copies of tiles, not counted in the cost model's total.
_BREAKDOWN = ("lr_buffer", "lr_labels", "new_latents", "frozen_weights", "adaptive_weights", "gradients",
              "optimizer_state", "activations")


def target_memory_limits(target) -> list[tuple[str, float]]:
    """Capacities that bound where latent replays can live: on-chip L2, on-chip NVM, external memory.

    Args:
      target: a `clq.cost.Target` or a target name/path (conf/target/<name>.yaml).

    Returns:
      ``[(label, bytes), ...]`` for tiers l2, nvm, ext, e.g. ``("VEGA on-chip L2", 1638400)``.
    """
    from clq.cost import Target, load_target

    t = target if isinstance(target, Target) else load_target(str(target))
    names = {"l2": "on-chip L2", "nvm": _NVM_NAMES.get(t.name, "on-chip NVM"), "ext": "external"}
    return [(f"{t.name} {names[tier]}", float(t.memory_bytes[tier])) for tier in ("l2", "nvm", "ext")
            if t.memory_bytes.get(tier)]


def _completed(df):
    if "status" in df.columns:
        return df[df["status"] == "completed"]
    if "n_seeds" in df.columns:
        return df[df["n_seeds"] > 0]
    return df


def _scale(col: str) -> float:
    return 1e-6 if col.startswith("memory_") else 1.0


def plot_tradeoff(df, x: str = "memory_lr_buffer", y: str = "final_accuracy", target=None, ax=None,
                  color_by: str = "latent_layer", marker_by: str = "lr_precision", front: bool = True,
                  limits: bool = True, annotate_front: bool = True):
    """Accuracy against a cost (memory, latency or energy), one point per member or configuration.

    Args:
      df: `collect_runs` or `aggregate_seeds` frame; failed members are left out.
      x: cost column (``memory_lr_buffer``, ``memory_total``, ``latency_s``, ``energy_j``, ...).
      y: accuracy column (``final_accuracy``, ``average_accuracy``).
      target: target whose memory limits are drawn when x is a memory column (default: the frame's target).
      color_by, marker_by: columns that pick each point's colour and marker.
      front: draw the Pareto front (minimum x, maximum y) as a step line labelled "Pareto front".
      limits: draw the target's memory capacities (`target_memory_limits`) as vertical lines.
      annotate_front: label the front's points with `config_label`.

    Returns:
      The Figure. The front is the line labelled "Pareto front"; each limit is a vertical line labelled
      with the tier's name and size.
    """
    import matplotlib.pyplot as plt

    d = _completed(df)
    xc, yc = metric_column(d, x), metric_column(d, y)
    sx = _scale(x)
    if ax is None:
        fig, ax = plt.subplots(figsize=(8.5, 5.2))
    else:
        fig = ax.figure
    colors = {v: plt.cm.viridis(i / max(1, len(vals) - 1))
              for vals in [sorted(d[color_by].dropna().unique().tolist()) if color_by in d else []]
              for i, v in enumerate(vals)}
    marker_cycle = ["o", "s", "^", "D", "v", "P", "X", "*"]
    mvals = sorted(d[marker_by].dropna().unique().tolist(), key=str) if marker_by in d else []
    markers = {v: marker_cycle[i % len(marker_cycle)] for i, v in enumerate(mvals)}
    seen = set()
    for _, r in d.iterrows():
        xv, yv = float(r[xc]) * sx, 100 * float(r[yc])
        if not (np.isfinite(xv) and np.isfinite(yv)):
            continue
        c = colors.get(r.get(color_by), "tab:blue")
        m = markers.get(r.get(marker_by), "o")
        key = (r.get(color_by), r.get(marker_by))
        label = None
        if key not in seen:
            seen.add(key)
            label = " ".join(s for s in (f"{color_by.replace('latent_layer', 'l')}={r.get(color_by)}"
                                         if color_by in r else "", str(r.get(marker_by, ""))) if s)
        yerr = r.get(f"{y}_std")
        yerr = 100 * float(yerr) if yerr is not None and np.isfinite(yerr) else None
        ax.errorbar(xv, yv, yerr=yerr, fmt=m, color=c, ms=7, capsize=3, alpha=0.9, label=label,
                    markeredgecolor="k", markeredgewidth=0.5)
    if front and len(d):
        on = pareto_front(d, x, y)
        f = d[on].sort_values(xc)
        fx, fy = f[xc].to_numpy(float) * sx, 100 * f[yc].to_numpy(float)
        ax.step(fx, fy, where="post", color="k", lw=1.6, ls="-", label="Pareto front", zorder=1)
        if annotate_front:
            for (_, r), xv, yv in zip(f.iterrows(), fx, fy):
                ax.annotate(r.get("label") or config_label(r), (xv, yv), textcoords="offset points",
                            xytext=(4, 5), fontsize=7)
    xs = d[xc].to_numpy(float) * sx if len(d) else np.array([])
    if len(xs) and np.nanmin(xs) > 0 and np.nanmax(xs) / np.nanmin(xs) > 20:
        ax.set_xscale("log")
    if limits and x.startswith("memory_"):
        if target is None and "target" in d and d["target"].notna().any():
            target = d["target"].dropna().iloc[0]
        if target is not None:
            styles = ["--", "-.", ":"]
            for (name, cap), ls in zip(target_memory_limits(target), styles):
                ax.axvline(cap * sx, color="tab:red", ls=ls, lw=1.2, label=f"{name} ({cap / 1e6:.2f} MB)")
    ax.set(xlabel=AXIS_LABELS.get(x, x), ylabel=AXIS_LABELS.get(y, y))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    return fig


def plot_accuracy_per_event(df, ax=None, max_curves: int = 12):
    """Test accuracy after each learning event, one curve per member (or per configuration, mean +- std band).

    Args:
      df: `collect_runs` frame (uses ``accuracy_per_event``) or `aggregate_seeds` frame
        (``accuracy_per_event_mean``/``_std``); pass a subset (e.g. the Pareto front) to keep it readable.
      max_curves: at most this many curves (the first rows).

    Returns:
      The Figure; curve i is ``ax.lines[i]`` with its `config_label` as label.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(8.5, 4.2))
    else:
        fig = ax.figure
    agg = "accuracy_per_event_mean" in df.columns
    for _, r in df.head(max_curves).iterrows():
        acc = np.asarray(r["accuracy_per_event_mean" if agg else "accuracy_per_event"], float)
        if not len(acc):
            continue
        label = r.get("label") or config_label(r)
        if not agg and "seed" in r and r["seed"] is not None:
            label += f" seed {r['seed']}"
        (line,) = ax.plot(np.arange(len(acc)), 100 * acc, lw=1.4, label=label)
        if agg:
            std = np.asarray(r["accuracy_per_event_std"], float)
            if len(std) == len(acc) and np.any(std > 0):
                ax.fill_between(np.arange(len(acc)), 100 * (acc - std), 100 * (acc + std), alpha=0.15,
                                color=line.get_color())
    ax.set(xlabel="learning event", ylabel="test accuracy (%)", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    return fig


def plot_memory_breakdown(df, ax=None, keys: Sequence[str] | None = None):
    """Stacked bars of where a learning event's memory goes (cost model, MB), one bar per row.

    Args:
      df: rows to draw (e.g. the Pareto points), `collect_runs` or `aggregate_seeds` frame.
      keys: memory components (without the ``memory_`` prefix), bottom to top; default: the LR buffer and its
        labels, new latents, frozen weights, adaptive weights, gradients, optimizer state, activations, and
        "other" for the rest of ``memory_total`` (frozen biases and requantization constants). The bars then
        add up to ``memory_total``, which excludes the L1 tiles (docs/cost_model.md).

    Returns:
      The Figure; ``ax.containers[k]`` are the bars of component k (labelled with its name).
    """
    import matplotlib.pyplot as plt

    def col(k):
        return metric_column(df, f"memory_{k}")

    keys = [k for k in (keys or _BREAKDOWN) if col(k) in df.columns]
    labels = [r.get("label") or config_label(r) for _, r in df.iterrows()]
    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 0.5 * len(df) + 1.8))
    else:
        fig = ax.figure
    left = np.zeros(len(df))
    cmap = plt.get_cmap("tab10")
    for i, k in enumerate(keys):
        v = df[col(k)].to_numpy(float) / 1e6
        v = np.nan_to_num(v)
        ax.barh(labels, v, left=left, color=cmap(i % 10), label=k)
        left += v
    if col("total") in df.columns:
        other = np.nan_to_num(df[col("total")].to_numpy(float) / 1e6) - left
        if np.any(other > 1e-9):
            ax.barh(labels, np.maximum(other, 0), left=left, color="0.7", label="other")
    ax.set(xlabel="memory (MB, cost model)")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars fill the axes
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def accuracy_heatmap(per_class, per_session, session_names: Sequence[str]) -> np.ndarray:
    """One run's accuracy matrices as a picture: accuracy (colour) of each class and each session (columns)
    after each learning event (rows); blank where a group has no test image yet. Returns RGB uint8 [H, W, 3]."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), gridspec_kw={"width_ratios": [max(len(per_class[0]), 1),
                                                                                     max(len(session_names), 1)]})
    for ax, m, labels, title in ((axes[0], per_class, [str(k) for k in range(len(per_class[0]))], "per class"),
                                 (axes[1], per_session, list(session_names), "per session")):
        a = np.asarray([[np.nan if v is None else v for v in row] for row in m], float)
        im = ax.imshow(a, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(labels)), labels, rotation=90 if title == "per session" else 0, fontsize=7)
        ax.set_xlabel(title)
        ax.set_ylabel("learning event")
    fig.colorbar(im, ax=axes, label="test accuracy")
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img