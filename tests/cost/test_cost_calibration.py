"""The model against the paper's calibration points (paper.md §6) and the VEGA/STM32L4 ratios (§7).

docs/cost_model.md holds the same figures as a table, with the account of which parameters are taken from
the paper (all of them) and which were fitted (none).
"""

import pytest

from clq.cost import cost_report

# paper.md §6: one learning event = 300 new images + 1500 LRs, 4 epochs, mini-batch 21 + 107.
PAPER = {27: (2.07, 0.13), 23: (877.0, 54.3)}


def _event(specs, l, target, **kw):
    return cost_report(specs, l, buffer_size=1500, lr_bits=8, new_images=300, epochs=4, batch_size=128,
                       target=target, **kw)


def test_l27_within_20_percent_of_the_paper(specs, vega):
    rep = _event(specs, 27, vega)
    lat, en = PAPER[27]
    assert rep["latency_s"]["adaptive"] == pytest.approx(lat, rel=0.2)
    assert rep["energy_j"]["adaptive"] == pytest.approx(en, rel=0.2)


def test_l23_within_20_percent_of_the_paper_with_its_accounting(specs, vega):
    # The paper's l=23 figure counts forward + backward-gradient (no backward-error kernels).
    rep = _event(specs, 23, vega, backward_error="none")
    lat, en = PAPER[23]
    assert rep["latency_s"]["adaptive"] == pytest.approx(lat, rel=0.2)
    assert rep["energy_j"]["adaptive"] == pytest.approx(en, rel=0.2)


def test_l23_complete_backprop_costs_more_than_the_paper_reports(specs, vega):
    # Documented discrepancy (docs/cost_model.md, "Calibration"): with the backward-error kernels of layers
    # 25, 26 and 28 the paper's own kernel table cannot reach 877 s at 7,620 samples per event.
    full = _event(specs, 23, vega)["latency_s"]["adaptive"]
    assert 1.2 * PAPER[23][0] < full < 1.6 * PAPER[23][0]


@pytest.mark.parametrize("l", [27, 23])
def test_vega_vs_stm32l4_ratios_near_the_papers_65x_and_37x(specs, vega, stm32l4, l):
    rep = _event(specs, l, vega, compare=[stm32l4])
    (cmp,) = rep["comparison"]
    assert cmp["target"] == "stm32l4" and cmp["ratio_definition"] == "stm32l4 / vega"
    assert cmp["latency_ratio"]["adaptive"] == pytest.approx(65, rel=0.2)
    assert cmp["energy_ratio"]["adaptive"] == pytest.approx(37, rel=0.2)
    direct = _event(specs, l, stm32l4)
    assert cmp["latency_s"]["adaptive"] == pytest.approx(direct["latency_s"]["adaptive"])
