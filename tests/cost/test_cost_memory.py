"""Memory model: the paper's arithmetic (paper.md §5) and the per-tensor formulas of clq.cost.engine."""

import dataclasses
import math

import pytest

from clq.cost import cost_report, memory_bytes
from clq.model.specs import mobilenet_v1_specs


@pytest.mark.parametrize(
    "latent_layer, n_lr, bits, expected",
    [
        (19, 1500, 8, 49_152_000 + 4),  # paper.md §5: 1500 U8 LRs at l=19 = 49.2 MB (+ one FP32 scale)
        (23, 3000, 8, 24_576_000 + 4),  # paper.md §5: 3000 U8 LRs at l=23 = 24.6 MB
        (19, 1500, None, 196_608_000),  # paper.md §5: FP32 = 196.6 MB, no scale
        (19, 1500, 7, 43_008_000 + 4),  # 7 bit packed: 32768 * 7 / 8 = 28672 B per latent
        (27, 375, 8, 375 * 1024 + 4),
        (19, 0, 8, 0),  # no buffer, no scale
    ],
)
def test_lr_buffer_equals_paper_arithmetic(specs, latent_layer, n_lr, bits, expected):
    assert memory_bytes(specs, latent_layer, n_lr, bits)["lr_buffer"] == expected


@pytest.mark.parametrize("l, elems", [(19, 32768), (22, 32768), (23, 8192), (24, 16384), (26, 16384), (27, 1024)])
def test_latent_layer_means_output_of_layer_l(specs, vega, l, elems):
    # paper.md §2 LR sizes: the replay is the *output* of layer l.
    rep = cost_report(specs, l, 10, 8, 300, 1, 128, vega)
    assert rep["config"]["latent_elements"] == elems
    assert memory_bytes(specs, l, 10, 8)["lr_buffer"] == 10 * elems + 4


def test_l27_trains_only_the_classifier(specs, vega):
    rep = cost_report(specs, 27, 1500, 8, 300, 4, 128, vega)
    adaptive = [L for L in rep["layers"] if L["stage"] == "adaptive"]
    assert [L["index"] for L in adaptive] == [28]
    assert rep["memory_bytes"]["adaptive_weights"] == (1024 * 50 + 50) * 4


def test_frozen_and_adaptive_parameter_bytes(specs):
    l = 19
    weights = sum(math.prod(s.weight_shape) for s in specs[: l + 1] if s.has_params)
    biases = sum(s.out_channels for s in specs[: l + 1] if s.has_params)
    layers_with_weights = sum(s.has_params for s in specs[: l + 1])
    adaptive = sum(s.params for s in specs[l + 1:])

    m8 = memory_bytes(specs, l, 1500, 8, frozen_bits=8)
    assert m8["frozen_weights"] == weights  # INT8: one byte per weight
    assert m8["frozen_biases"] == 4 * biases  # int32 bias per output channel (BN folded)
    assert m8["frozen_requant"] == 8 * layers_with_weights
    assert m8["adaptive_weights"] == 4 * adaptive
    assert m8["gradients"] == m8["adaptive_weights"]
    assert m8["optimizer_state"] == m8["adaptive_weights"]  # SGD momentum: one slot

    m4 = memory_bytes(specs, l, 1500, 8, frozen_bits=4)
    assert m4["frozen_weights"] == sum(math.ceil(math.prod(s.weight_shape) / 2) for s in specs[: l + 1] if s.has_params)
    fp = memory_bytes(specs, l, 1500, 8, frozen_bits=None)
    assert fp["frozen_weights"] == 4 * weights and fp["frozen_requant"] == 0
    assert memory_bytes(specs, l, 1500, 8, optimizer_slots=0)["optimizer_state"] == 0


def test_activations_per_sample_and_per_mini_batch(specs, vega):
    # Every adaptive layer's input plus the logits, FP32, for the samples of one kernel pass.
    l = 23
    per_sample = 4 * (sum(s.in_shape[0] * s.in_shape[1] * s.in_shape[2] for s in specs[l + 1:]) + 50)
    assert memory_bytes(specs, l, 1500, 8, target=vega)["activations"] == per_sample
    batch_target = dataclasses.replace(vega, samples_per_pass=None)
    assert memory_bytes(specs, l, 1500, 8, batch_size=128, target=batch_target)["activations"] == 128 * per_sample


def test_total_is_the_sum_of_tensors(specs):
    m = memory_bytes(specs, 21, 750, 7)
    parts = sum(v for k, v in m.items() if k not in ("total", "l1_tiles"))
    assert m["total"] == parts


def test_memory_scales_with_model_width():
    small = mobilenet_v1_specs(width=0.5, input_size=32, num_classes=10)
    m = memory_bytes(small, 19, 100, 8)
    assert m["lr_buffer"] == 100 * small[19].out_elements + 4
    assert m["adaptive_weights"] == 4 * sum(s.params for s in small[20:])
