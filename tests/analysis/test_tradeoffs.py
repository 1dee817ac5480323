"""Seed aggregation and Pareto fronts on known points."""

import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from clq.analysis import aggregate_seeds, collect_runs, pareto_front


def _brute_front(x, y):
    """O(n^2) definition: i is dominated if some j has x_j <= x_i, y_j >= y_i, one strict."""
    n = len(x)
    out = []
    for i in range(n):
        if math.isnan(x[i]) or math.isnan(y[i]):
            out.append(False)
            continue
        dominated = any(not (math.isnan(x[j]) or math.isnan(y[j])) and x[j] <= x[i] and y[j] >= y[i]
                        and (x[j] < x[i] or y[j] > y[i]) for j in range(n))
        out.append(not dominated)
    return out


def test_pareto_front_known_points():
    df = pd.DataFrame({
        "mem": [1.0, 2.0, 2.0, 3.0, 4.0, 0.5, 4.0, np.nan, 5.0],
        "acc": [0.5, 0.6, 0.55, 0.6, 0.9, 0.1, 0.9, 1.0, 0.85],
    }, index=list("abcdefghi"))
    on = pareto_front(df, "mem", "acc")
    # c: same memory as b, less accurate; d: more memory than b, same accuracy; g duplicates e (both kept);
    # h: NaN memory; i: more memory and less accurate than e.
    assert list(on[on].index) == ["a", "b", "e", "f", "g"]
    assert on.index.equals(df.index) and on.dtype == bool


def test_pareto_front_directions():
    df = pd.DataFrame({"lat": [1.0, 2.0, 3.0], "acc": [0.3, 0.2, 0.1]})
    assert list(pareto_front(df, "lat", "acc")) == [True, False, False]
    assert list(pareto_front(df, "lat", "acc", minimize_x=False)) == [True, True, True]
    # minimize both: (1, 0.3), (2, 0.2), (3, 0.1) trade off -> all on the front
    assert list(pareto_front(df, "lat", "acc", maximize_y=False)) == [True, True, True]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=25))
def test_pareto_front_matches_definition(points):
    x = [float(a) for a, _ in points]
    y = [float(b) for _, b in points]
    got = pareto_front(pd.DataFrame({"x": x, "y": y}), "x", "y")
    assert list(got) == _brute_front(x, y)


def test_pareto_front_on_aggregated_frame_uses_means():
    agg = pd.DataFrame({"memory_lr_buffer_mean": [1.0, 2.0], "final_accuracy_mean": [0.9, 0.5]})
    assert list(pareto_front(agg, "memory_lr_buffer", "final_accuracy")) == [True, False]


def test_aggregate_seeds_mean_std_and_failures(fake_sweep):
    agg = aggregate_seeds(collect_runs(fake_sweep)).set_index("lr_precision")
    assert set(agg.index) == {"FP32", "U8", "U6", "U7"}  # FP32 (lr_bits NaN) is a group of its own
    u8, fp = agg.loc["U8"], agg.loc["FP32"]
    assert u8["n_seeds"] == 2 and u8["n_failed"] == 0 and u8["seeds"] == [0, 1]
    assert math.isclose(u8["final_accuracy_mean"], 0.55)
    assert math.isclose(u8["final_accuracy_std"], np.std([0.5, 0.6], ddof=1))
    assert math.isclose(fp["final_accuracy_mean"], 0.75)
    np.testing.assert_allclose(u8["accuracy_per_event_mean"], [0.2, 0.4, 0.55])
    np.testing.assert_allclose(u8["accuracy_per_event_std"], [0, 0, np.std([0.5, 0.6], ddof=1)], atol=1e-12)
    assert u8["memory_lr_buffer_std"] == 0 and u8["memory_lr_buffer_mean"] > 0
    # all members of U6/U7 failed: visible, with no numbers
    assert agg.loc["U6", "n_seeds"] == 0 and agg.loc["U6", "n_failed"] == 2
    assert math.isnan(agg.loc["U6", "final_accuracy_mean"])
    assert agg.loc["U8", "label"] == "l=23 U8 + U8 N=40"


def test_aggregate_single_seed_std_is_nan(fake_sweep):
    df = collect_runs(fake_sweep)
    agg = aggregate_seeds(df[df["seed"] == 0])
    row = agg[agg["lr_precision"] == "U8"].iloc[0]
    assert row["n_seeds"] == 1 and math.isnan(row["final_accuracy_std"])
