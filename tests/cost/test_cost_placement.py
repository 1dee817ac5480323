"""Placement of tensors into memory tiers and the fits/overflow verdict."""

import dataclasses

from clq.cost import cost_report


def _report(specs, target, l, **kw):
    args = dict(buffer_size=1500, lr_bits=8, new_images=300, epochs=4, batch_size=128)
    args.update(kw)
    return cost_report(specs, l, target=target, **args)


def test_paper_l23_fits_vega(specs, vega):
    rep = _report(specs, vega, 23)
    assert rep["fits"] and rep["overflow"] == {}
    assert rep["placement"]["ext"]["tensors"]["lr_buffer"] == 12_288_004


def test_l19_with_momentum_overflows_external_memory(specs, vega):
    rep = _report(specs, vega, 19)
    ext = rep["placement"]["ext"]
    assert not rep["fits"]
    assert rep["overflow"] == {"ext": ext["used_bytes"] - ext["capacity_bytes"]}
    assert ext["used_bytes"] == sum(ext["tensors"].values())


def test_tiers_are_filled_only_up_to_capacity_and_hold_every_tensor(specs, vega):
    for l in (5, 19, 23, 27):
        rep = _report(specs, vega, l)
        for tier in ("l2", "nvm"):
            d = rep["placement"][tier]
            assert d["used_bytes"] <= d["capacity_bytes"]
            assert d["used_bytes"] == sum(d["tensors"].values())
        placed = sum(sum(rep["placement"][t]["tensors"].values()) for t in ("l2", "nvm", "ext"))
        assert placed == rep["memory_bytes"]["total"]


def test_small_buffer_goes_to_mram_large_one_to_external(specs, vega):
    small = _report(specs, vega, 27, buffer_size=100)
    assert "lr_buffer" in small["placement"]["nvm"]["tensors"]
    large = _report(specs, vega, 27, buffer_size=3000)
    assert "lr_buffer" in large["placement"]["ext"]["tensors"]


def test_overflow_names_the_tier_and_the_excess(specs, vega):
    tiny = dataclasses.replace(vega, memory_bytes={**vega.memory_bytes, "ext": 10_000_000})
    rep = _report(specs, tiny, 23)
    assert not rep["fits"]
    ext = rep["placement"]["ext"]
    assert rep["overflow"]["ext"] == ext["used_bytes"] - 10_000_000 > 0


def test_l1_holds_double_buffered_tiles_of_at_most_half_l1(specs, vega):
    rep = _report(specs, vega, 23)
    assert rep["memory_bytes"]["l1_tiles"] <= vega.l1_bytes
    assert rep["memory_bytes"]["l1_tiles"] % 2 == 0
    big = _report(specs, vega, 23, l1_bytes=512 * 1024)
    assert big["placement"]["l1"]["capacity_bytes"] == 512 * 1024
