"""Vectorized grid evaluation: same numbers as single reports, right shape, validation."""

import numpy as np
import pytest

from clq.cost import cost_report, evaluate_grid

AXES = dict(latent_layers=[19, 23, 27], lr_bits=[None, 7, 8], buffer_sizes=[0, 375, 3000],
            l1_bytes=[128 * 1024, 512 * 1024])


def test_grid_is_the_cartesian_product(specs, vega, stm32l4):
    g = evaluate_grid(specs, [vega, stm32l4], **AXES)
    n = 2 * 2 * 3 * 3 * 3
    assert all(len(v) == n for v in g.values())
    assert set(g["target"]) == {"vega", "stm32l4"}
    assert set(g["l1_bytes"][g["target"] == "stm32l4"]) == {0.0}  # no L1: the axis is ignored


def test_grid_rows_equal_single_reports(specs, vega, stm32l4):
    g = evaluate_grid(specs, [vega, stm32l4], **AXES)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(g["target"]), size=6, replace=False):
        bits = None if np.isnan(g["lr_bits"][i]) else int(g["lr_bits"][i])
        tgt = vega if g["target"][i] == "vega" else stm32l4
        rep = cost_report(specs, int(g["latent_layer"][i]), int(g["buffer_size"][i]), bits, 300, 4, 128, tgt,
                          l1_bytes=int(g["l1_bytes"][i]))
        assert g["memory_total"][i] == rep["memory_bytes"]["total"]
        assert g["memory_lr_buffer"][i] == rep["memory_bytes"]["lr_buffer"]
        assert bool(g["fits"][i]) == rep["fits"]
        for part in ("frozen", "adaptive", "total"):
            assert g[f"latency_s_{part}"][i] == pytest.approx(rep["latency_s"][part], rel=1e-12)
            assert g[f"energy_j_{part}"][i] == pytest.approx(rep["energy_j"][part], rel=1e-12)


def test_grid_memory_matches_paper_arithmetic(specs, vega):
    g = evaluate_grid(specs, [vega], [19, 23], [8], [1500, 3000])
    lr = {(int(l), int(n)): b for l, n, b in zip(g["latent_layer"], g["buffer_size"], g["memory_lr_buffer"])}
    assert lr[(19, 1500)] == 49_152_004 and lr[(23, 3000)] == 24_576_004


@pytest.mark.parametrize("kw, field", [
    (dict(latent_layers=[28]), "latent_layer"), (dict(lr_bits=[0]), "lr_bits"),
    (dict(buffer_sizes=[-5]), "buffer_sizes"), (dict(l1_bytes=[-1]), "l1_bytes"),
    (dict(latent_layers=[]), "latent_layers"),
])
def test_grid_rejects_bad_axes(specs, vega, kw, field):
    axes = dict(AXES) | kw
    with pytest.raises(ValueError, match=field):
        evaluate_grid(specs, [vega], **axes)


def test_grid_rejects_unknown_target(specs):
    with pytest.raises(ValueError, match="target must be one of"):
        evaluate_grid(specs, ["gap42"], **AXES)
