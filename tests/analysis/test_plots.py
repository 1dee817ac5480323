"""Trade-off plots draw the front, the target's memory limits, the curves and the breakdown they claim to."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from clq.analysis import (aggregate_seeds, collect_runs, pareto_front, plot_accuracy_per_event,  # noqa: E402
                          plot_memory_breakdown, plot_tradeoff, target_memory_limits)
from clq.cost import load_target  # noqa: E402


def test_target_memory_limits_vega():
    lim = dict(target_memory_limits("vega"))
    mem = load_target("vega").memory_bytes
    assert lim == {"vega on-chip L2": mem["l2"], "vega MRAM": mem["nvm"], "vega external": mem["ext"]}
    assert lim["vega external"] == 64 * 2**20


def test_plot_tradeoff_front_and_limits(fake_sweep):
    agg = aggregate_seeds(collect_runs(fake_sweep))
    fig = plot_tradeoff(agg, "memory_lr_buffer")
    ax = fig.axes[0]
    front = [l for l in ax.lines if l.get_label() == "Pareto front"]
    assert len(front) == 1
    ok = agg[agg["n_seeds"] > 0]
    exp = ok[pareto_front(ok, "memory_lr_buffer")].sort_values("memory_lr_buffer_mean")
    np.testing.assert_allclose(front[0].get_xdata(), exp["memory_lr_buffer_mean"] / 1e6)
    np.testing.assert_allclose(front[0].get_ydata(), 100 * exp["final_accuracy_mean"])
    limits = {l.get_label().split(" (")[0]: l.get_xdata()[0] for l in ax.lines if l.get_label().startswith("vega")}
    assert limits == pytest.approx({n: b / 1e6 for n, b in target_memory_limits("vega")})
    assert ax.get_xlabel() == "replay buffer memory (MB, cost model)"


def test_plot_tradeoff_latency_has_no_memory_lines(fake_sweep):
    fig = plot_tradeoff(collect_runs(fake_sweep), "latency_s")
    labels = [l.get_label() for l in fig.axes[0].lines]
    assert "Pareto front" in labels and not any(s.startswith("vega") for s in labels)


def test_plot_accuracy_per_event_curves(fake_sweep):
    agg = aggregate_seeds(collect_runs(fake_sweep))
    ok = agg[agg["n_seeds"] > 0].reset_index(drop=True)
    fig = plot_accuracy_per_event(ok)
    lines = fig.axes[0].lines
    assert len(lines) == len(ok) == 2
    np.testing.assert_allclose(lines[0].get_ydata(), 100 * np.asarray(ok.loc[0, "accuracy_per_event_mean"]))
    assert lines[0].get_label() == ok.loc[0, "label"]


def test_plot_memory_breakdown_stacks_to_total(fake_sweep):
    df = collect_runs(fake_sweep)
    done = df[df["status"] == "completed"].reset_index(drop=True)
    fig = plot_memory_breakdown(done)
    ax = fig.axes[0]
    widths = np.array([[p.get_width() for p in c] for c in ax.containers])  # components x rows
    np.testing.assert_allclose(widths.sum(0), done["memory_total"] / 1e6, rtol=1e-9)
    assert ax.containers[0].get_label() == "lr_buffer"
    np.testing.assert_allclose(widths[0], done["memory_lr_buffer"] / 1e6)
