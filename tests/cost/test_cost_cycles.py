"""Cycle model: event composition, MACs per pass, kernel efficiency, tiling, DMA bounds, frozen stage."""

import dataclasses

import numpy as np
import pytest

from clq.cost import KERNEL_PASSES, cost_report, learning_event


def test_paper_mini_batch_composition():
    ev = learning_event(new_images=300, buffer_size=1500, epochs=4, batch_size=128)
    assert (ev.new_per_batch, ev.replays_per_batch) == (21, 107)  # paper.md §3
    assert ev.iterations_per_epoch == 15 and ev.iterations == 60
    assert ev.samples == 4 * (300 + 15 * 107)  # every new image once per epoch + 107 replays per step


def test_no_replay_means_all_new():
    ev = learning_event(new_images=300, buffer_size=0, epochs=4, batch_size=128)
    assert (ev.new_per_batch, ev.replays_per_batch, ev.iterations_per_epoch) == (128, 0, 3)
    assert ev.samples == 1200 and ev.replays_drawn == 0


def test_the_cost_model_counts_the_learning_events_minibatch_rule():
    from clq.cost.event import event_arrays
    from clq.train.event import minibatch_composition

    n, size, batch = np.meshgrid([20, 293, 300], [0, 10, 40, 375, 750], [32, 128], indexing="ij")
    ev = event_arrays(n, size, 4, batch)
    for i in np.ndindex(n.shape):
        comp = minibatch_composition(int(n[i]), int(size[i]), int(batch[i]))
        assert (ev["new_per_batch"][i], ev["replays_per_batch"][i], ev["iterations_per_epoch"][i]) == comp
    assert learning_event(20, 10, 4, 128).new_per_batch == 20  # at most the event's new images
    with pytest.raises(ValueError, match="leaves 0 new samples"):  # refused, as clq-run refuses it
        learning_event(new_images=4, buffer_size=1500, epochs=4, batch_size=128)


@pytest.mark.parametrize("bad, field", [
    (dict(new_images=0), "new_images"), (dict(buffer_size=-1), "buffer_size"),
    (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"),
])
def test_event_rejects_bad_counts(bad, field):
    args = dict(new_images=300, buffer_size=1500, epochs=4, batch_size=128) | bad
    with pytest.raises(ValueError, match=field):
        learning_event(**args)


def _layers(rep):
    return {L["index"]: L for L in rep["layers"] if L["stage"] == "adaptive"}


def test_macs_per_pass_follow_the_specs_and_skip_the_first_error(specs, vega, paper_event):
    rep = cost_report(specs, 19, target=vega, **paper_event)
    layers = _layers(rep)
    assert sorted(layers) == list(range(20, 29))
    for k, L in layers.items():
        s = specs[k]
        assert L["macs"]["forward"] == s.macs
        assert L["macs"]["backward_gradient"] == (s.macs if s.has_params else 0)
        # No backward-error for the first adaptive layer: nothing trainable below it needs the error.
        assert L["macs"]["backward_error"] == (0 if k == 20 else s.macs)
    assert layers[20]["cycles"]["backward_error"] == 0
    assert layers[21]["cycles"]["backward_error"] > 0


def test_no_error_propagates_below_the_lowest_trainable_layer(specs, vega, paper_event):
    # l=26: adaptive = pool6 + fc; pool has no parameters, so fc's error is never needed.
    layers = _layers(cost_report(specs, 26, target=vega, **paper_event))
    assert layers[27]["cycles"]["backward_error"] == 0 and layers[28]["cycles"]["backward_error"] == 0


def test_backward_error_policy_none_drops_exactly_the_error_kernels(specs, vega, paper_event):
    full = cost_report(specs, 23, target=vega, **paper_event)
    paper = cost_report(specs, 23, target=vega, backward_error="none", **paper_event)
    err = sum(L["cycles_per_event"]["backward_error"] for L in _layers(full).values())
    assert err > 0
    assert full["cycles"]["adaptive"] - paper["cycles"]["adaptive"] == pytest.approx(err, rel=1e-9)
    assert all(L["macs"]["backward_error"] == 0 for L in _layers(paper).values())


def _ideal(vega):
    """VEGA with DMA so fast that every kernel is compute-bound and fills/drains cost nothing."""
    return dataclasses.replace(vega, bw_l2_l1=1e12, bw_ext=1e12, bw_nvm=1e12)


def test_compute_bound_kernel_is_macs_over_efficiency_with_tiling_overhead(specs, vega, paper_event):
    t = _ideal(vega)
    layers = _layers(cost_report(specs, 23, target=t, **paper_event))
    for k, L in layers.items():
        s = specs[k]
        if s.kind == "pool":
            continue
        for p in KERNEL_PASSES:
            if L["macs"][p] == 0:
                continue
            tiling = 1 + t.tiling_overhead * (L["tiles"][p] > 1)
            assert L["bound"][p] == "compute"
            assert L["cycles"][p] == pytest.approx(L["macs"][p] / t.macs_per_cycle(s.kind, p) * tiling, rel=1e-6)


def test_pw26_forward_at_l23_by_hand(specs, vega, paper_event):
    # conv6_pw: 4x4x1024 -> 1024, 16,777,216 MAC at 1.65 MAC/cycle; its 4 MB of FP32 weights live in ext.
    L = _layers(cost_report(specs, 23, target=vega, **paper_event))[26]
    compute = 16_777_216 / 1.65 * 1.07
    rd = 16 * 1024 * 4 + (1024 * 1024 + 1024) * 4
    wr = 16 * 1024 * 4
    tiles = np.ceil((rd + wr) / 65536)
    exposed = (rd + wr) / tiles / 8.0
    assert L["weights_tier"] == "ext"
    assert max(compute, rd / 8.0, (rd - 16 * 1024 * 4) / 1.0) == compute  # compute-bound
    assert L["cycles"]["forward"] == pytest.approx(compute + exposed, rel=1e-9)


def test_dma_bound_when_external_memory_is_slow(specs, vega, paper_event):
    slow = dataclasses.replace(vega, bw_ext=0.01)
    L = _layers(cost_report(specs, 23, target=slow, **paper_event))[26]
    assert L["bound"]["forward"] == "slow_dma"
    w_bytes = (1024 * 1024 + 1024) * 4
    assert L["cycles"]["forward"] == pytest.approx(w_bytes / 0.01, rel=1e-3)  # + a fill that is negligible


def test_l2_l1_dma_bound_when_cluster_dma_is_slow(specs, vega, paper_event):
    slow = dataclasses.replace(vega, bw_l2_l1=0.05)
    L = _layers(cost_report(specs, 27, target=slow, **paper_event))[28]
    assert L["bound"]["forward"] == "l1_dma"


def test_bigger_l1_is_faster(specs, vega, paper_event):
    lat = [cost_report(specs, 19, target=vega, l1_bytes=kb * 1024, **paper_event)["latency_s"]["adaptive"]
           for kb in (128, 256, 512)]
    assert lat[0] > lat[1] > lat[2]


def test_l1_efficiency_is_interpolated_in_log2_size(vega):
    mid = vega.macs_per_cycle("pw", "forward", l1_bytes=int(round(2 ** 17.5)))
    assert mid == pytest.approx((1.65 + 1.76) / 2, rel=1e-4)
    assert vega.macs_per_cycle("pw", "forward", l1_bytes=64 * 1024) == 1.65  # held, not extrapolated
    assert vega.macs_per_cycle("conv", "forward") == vega.macs_per_cycle("pw", "forward")


def test_frozen_stage_is_int8_inference_of_the_new_images(specs, vega, paper_event):
    rep = cost_report(specs, 19, target=_ideal(vega), **paper_event)
    macs = sum(s.macs for s in specs[:20])
    assert rep["macs"]["frozen"] == 300 * macs
    assert rep["cycles"]["frozen"] == pytest.approx(300 * macs / vega.frozen_int8_macs_per_cycle, rel=1e-9)
    fp32 = cost_report(specs, 19, target=vega, frozen_bits=None, **paper_event)
    assert fp32["cycles"]["frozen"] > rep["cycles"]["frozen"]


def test_latency_and_energy_are_cycles_over_clock_times_power(specs, vega, paper_event):
    rep = cost_report(specs, 21, target=vega, **paper_event)
    for part in ("frozen", "adaptive", "total"):
        assert rep["latency_s"][part] == pytest.approx(rep["cycles"][part] / 375e6)
        assert rep["energy_j"][part] == pytest.approx(rep["latency_s"][part] * 0.062)
    b = rep["cycles"]["adaptive_breakdown"]
    assert rep["cycles"]["adaptive"] == pytest.approx(b["training"] + b["optimizer"] + b["latent_io"])
    per_layer = sum(L["cycles_per_event"]["total"] for L in rep["layers"])
    assert per_layer + b["latent_io"] == pytest.approx(rep["cycles"]["total"], rel=1e-9)


def test_more_replays_cost_more_samples_and_time(specs, vega):
    base = dict(lr_bits=8, new_images=300, epochs=4, batch_size=128)
    small = cost_report(specs, 23, buffer_size=375, target=vega, **base)
    large = cost_report(specs, 23, buffer_size=3000, target=vega, **base)
    assert large["event"]["samples"] > small["event"]["samples"]
    assert large["latency_s"]["adaptive"] > small["latency_s"]["adaptive"]
