"""The fake-quantized JAX frozen stage and the integer-only reference agree bit for bit."""

import json

import jax
import numpy as np
import pytest

from clq.quant import (
    INPUT_SCALE,
    QuantConfig,
    calibrate_activation_max,
    export_frozen_stage,
    frozen_forward_codes,
    integer_forward,
    load_frozen_stage,
    quantize_frozen_stage,
)
from clq.model.forward import im2col
from clq.quant.frozen import exact_chunks, frozen_stage_plan
from clq.quant.integer import check_accumulator_bounds, integer_layer
from clq.train.frozen_stage import make_frozen_stage

PAPER = QuantConfig(equalize=False)  # the paper's pipeline, whose integer arithmetic these tests check

FROZEN = 28  # layers 0..27: every candidate latent_layer


def _calibrate(specs, folded, px, cfg):
    return calibrate_activation_max(specs[:FROZEN], folded[:FROZEN], [px.astype(np.float32) * INPUT_SCALE], cfg)


def _assert_all_layers_equal(specs, layers, px, bits=8):
    jax_codes = jax.jit(lambda p: frozen_forward_codes(specs[:FROZEN], layers, p, bits, return_all=True))(px)
    ref_codes = integer_forward(specs[:FROZEN], layers, px, return_all=True)
    # The layers' integers as arguments of the program, with the plan of the concrete ones (what a run compiles
    # once for every seed): the same codes.
    plan = frozen_stage_plan(specs[:FROZEN], layers, bits)
    traced = jax.jit(lambda lay, p: frozen_forward_codes(specs[:FROZEN], lay, p, bits, return_all=True, plan=plan))(
        tuple(layers), px)
    for spec, a, t, b in zip(specs, jax_codes, traced, ref_codes):
        a = np.asarray(a)
        np.testing.assert_array_equal(np.asarray(t), a, err_msg=f"layer {spec.index} ({spec.kind}), traced")
        assert a.shape == b.shape == (len(px), *spec.out_shape)
        assert np.all(a == np.round(a))
        np.testing.assert_array_equal(a.astype(np.uint8), b, err_msg=f"layer {spec.index} ({spec.kind})")
    # The comparison is not vacuous: the codes use the range and differ between images.
    for c in ref_codes[:-1]:
        assert c.max() > (2**bits - 1) // 8 and c.std() > 0
    return ref_codes


def test_fake_quant_matches_integer_reference_paper_defaults(default_stage):
    """Width 0.25, 32 px, per-layer asymmetric weights, min/max activations: all 28 layers bit-exact."""
    specs, _, px, _, layers = default_stage
    _assert_all_layers_equal(specs, layers, px)


def test_fake_quant_matches_integer_reference_per_channel_relu6_mse(network):
    """Width 0.5, 48 px, ReLU6, per-channel symmetric weights, MSE-optimal ranges: bit-exact."""
    cfg = QuantConfig(weight_granularity="per_channel", weight_mode="symmetric", activation_range="mse")
    specs, folded, px = network(0.5, 48, "relu6", n=20)
    layers = quantize_frozen_stage(specs[:FROZEN], folded[:FROZEN], _calibrate(specs, folded, px[:12], cfg), cfg)
    _assert_all_layers_equal(specs, layers, px[12:])


def test_relu6_clamp_low_bits_and_chunked_accumulators_match(network):
    """6-bit codes, ReLU6 below the top code (a_max > 6), and a pw layer whose reduction needs several
    float32-exact chunks."""
    cfg = QuantConfig(bits=6, weight_granularity="per_channel")
    specs, folded, px = network(0.5, 48, "relu6", n=20)
    px = px[12:]
    layers = quantize_frozen_stage(specs[:FROZEN], folded[:FROZEN], np.full(FROZEN, 8.0, np.float32), cfg)
    assert all(int(lq.act_max) == 47 for lq, s in zip(layers, specs) if s.kind != "pool")  # round(6 / (8/63))
    # Saturate layer 26 (pw 512 -> 512): sum |q_w - z_w| * 47 over 512 inputs exceeds 2^24.
    lq = layers[26]
    w = np.where(np.arange(lq.w_codes.size).reshape(lq.w_codes.shape) % 2 == 0, 2000, 0).astype(np.int32)
    layers = layers[:26] + (lq._replace(w_codes=w, w_zero=np.zeros_like(lq.w_zero)), layers[27])
    assert len(exact_chunks(w, 47)) > 1
    check_accumulator_bounds(specs[:FROZEN], layers)
    _assert_all_layers_equal(specs, layers, px, bits=6)


def test_each_layer_kind_matches_its_formula(default_stage):
    """conv/dw/pw/pool integer kernels equal a float64 evaluation of their formulas (within 1 LSB on ties)."""
    specs, _, px, _, layers = default_stage
    codes = integer_forward(specs[:FROZEN], layers, px, return_all=True)
    for i in (0, 1, 2, 27):  # conv, dw, pw, pool
        spec, lq = specs[i], layers[i]
        x = (px if i == 0 else codes[i - 1]).astype(np.float64)
        if spec.kind == "pool":
            expect = np.floor(x.sum(axis=(1, 2), keepdims=True) / (x.shape[1] * x.shape[2]) + 0.5)
        else:
            w = lq.w_codes.astype(np.float64) - lq.w_zero
            p = im2col(x, spec.kernel, spec.stride, xp=np)
            if spec.kind == "dw":
                c = x.shape[-1]
                acc = sum(p[..., t * c : (t + 1) * c] * w[t // 3, t % 3, 0] for t in range(9))
            else:
                acc = p @ w.reshape(-1, spec.out_channels)
            m = lq.multiplier.astype(np.float64) * np.exp2(-lq.shift.astype(np.float64))
            expect = np.clip(np.floor((acc + lq.b_codes) * m + 0.5), 0, int(lq.act_max))
        got = integer_layer(spec, lq, x.astype(np.int32))
        assert np.abs(got - expect).max() <= 1 and np.mean(got == expect) > 0.999, spec.kind


def test_run_loop_frozen_stage_emits_the_integer_latents(default_stage):
    """make_frozen_stage (what clq.train.loop uses) for latent_layer l: its quantization is the full
    stage's restricted to 0..l, and its uint8 latents are the integer reference's, bit for bit."""
    specs, folded, px, a_max, full = default_stage
    for l in (19,):
        prefix = quantize_frozen_stage(specs[: l + 1], folded[: l + 1], a_max[: l + 1], PAPER)
        for a, b in zip(prefix, full):
            assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
        fs = make_frozen_stage(specs[: l + 1], folded[: l + 1], px, PAPER, batch_size=8)
        np.testing.assert_array_equal(fs.latents(px), integer_forward(specs[: l + 1], fs.layers, px))
        assert fs.latents(px).dtype == np.uint8 and fs.scale == fs.layers[-1].out_scale


def test_export_round_trip(tmp_path, default_stage):
    specs, folded, px, a_max, layers = default_stage
    sym = QuantConfig(weight_granularity="per_channel", weight_mode="symmetric")
    for cfg, lq in ((PAPER, layers), (sym, quantize_frozen_stage(specs[:FROZEN], folded[:FROZEN], a_max, sym))):
        npz, js = export_frozen_stage(tmp_path / f"stage_{cfg.weight_mode}", specs[:FROZEN], lq, cfg)
        manifest = json.loads(js.read_text())
        tensors = manifest["layers"][2]["tensors"]
        assert tensors["layer02.weights"] == {"dtype": "uint8" if cfg.weight_mode == "asymmetric" else "int8",
                                              "shape": list(specs[2].weight_shape)}
        assert tensors["layer02.multiplier"]["shape"] == ([] if cfg.weight_granularity == "per_layer" else [16])
        loaded = load_frozen_stage(js)
        assert loaded.specs == tuple(specs[:FROZEN]) and loaded.config == cfg
        ref = integer_forward(specs[:FROZEN], lq, px)
        np.testing.assert_array_equal(integer_forward(loaded.specs, loaded.layers, px), ref)
        for a, b in zip(loaded.layers, lq):  # the very same integers and scales come back
            assert all(np.array_equal(x, y) and np.asarray(x).dtype == np.asarray(y).dtype for x, y in zip(a, b))
    data = bytearray(npz.read_bytes())
    data[-40] ^= 1
    npz.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load_frozen_stage(npz)


def test_integer_reference_validates_inputs_and_double_rounding_is_within_1lsb(default_stage):
    specs, _, px, _, layers = default_stage
    with pytest.raises(TypeError, match="uint8"):
        integer_forward(specs[:FROZEN], layers, px.astype(np.float32))
    with pytest.raises(ValueError, match="rounding"):
        integer_forward(specs[:FROZEN], layers, px, rounding="nearest")
    # gemmlowp double rounding vs the exported single rounding, fed the same input codes: <= 1 LSB per layer.
    codes = integer_forward(specs[:FROZEN], layers, px, return_all=True)
    for i, (spec, lq) in enumerate(zip(specs[:FROZEN], layers)):
        x = (px if i == 0 else codes[i - 1]).astype(np.int32)
        assert np.abs(integer_layer(spec, lq, x, "double").astype(int) - codes[i]).max() <= 1
