"""Read clq-run results and plot them."""

from __future__ import annotations

import glob
import json
import os

import numpy as np

__all__ = ["find_results", "load_results", "plot_accuracy"]


def find_results(root: str = "outputs") -> list[str]:
    """Paths of every results.json under `root`, newest first."""
    paths = glob.glob(os.path.join(root, "**", "results.json"), recursive=True)
    return sorted(paths, key=os.path.getmtime, reverse=True)


def load_results(path: str) -> dict:
    """Load one results.json (a run dir or the file itself)."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        return json.load(f)


def plot_accuracy(results: dict, ax=None):
    """Accuracy after each learning event, with each session's final accuracy as a bar inset.

    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 1.3]})
    else:
        fig, ax2 = ax.figure, None
    acc = 100 * np.asarray(results["accuracy_per_event"], float)
    ax.plot(np.arange(len(acc)), acc, lw=1.8, label="QLR-CL test accuracy")
    if "joint_accuracy" in results:
        ax.axhline(100 * results["joint_accuracy"], ls="--", c="k", lw=1, label="joint upper bound")
    lat = results["latent"]
    bits = "FP32" if lat["lr_bits"] is None else f"UINT-{lat['lr_bits']}"
    ax.set(xlabel="learning event", ylabel="test accuracy (%)", ylim=(0, 100),
           title=f"l={lat['layer']}, {results['buffer']['size']} {bits} latent replays")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if ax2 is not None:
        per_session = results.get("final_accuracy_per_session", {})
        names = list(per_session)
        ax2.barh(names, [100 * (per_session[n] or 0) for n in names], color="tab:orange")
        ax2.set(xlabel="final accuracy (%)", xlim=(0, 100), title="per session")
        ax2.invert_yaxis()
    fig.tight_layout()
    return fig
