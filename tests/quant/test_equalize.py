"""Cross-layer equalization and bias correction: same FP32 function, balanced ranges, bit-exact integer stage,
and per-layer 8-bit that holds on the real ImageNet MobileNet-V1 weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model.forward import fold_batch_norm, forward
from clq.model.imagenet import default_weights_path
from clq.quant import INPUT_SCALE, QuantConfig, frozen_codes, integer_forward
from clq.quant.equalize import equalization_pairs, equalize
from clq.quant.ptq import calibrate_and_quantize
from clq.quant.report import center_crop_resize, photo_set, top1_agreement

TABBY, EGYPTIAN_CAT, ESPRESSO = 282, 286, 968  # 1001-way indices (0 = background)

needs_weights = pytest.mark.skipif(
    not default_weights_path().is_file(),
    reason=f"ImageNet weights absent at {default_weights_path()}: run scripts/fetch_weights.sh",
)

L = 20  # frozen stage 0..19


def _ranges(specs, params, i):
    """(max |w| per output channel of layer i, max |w| per input channel of layer i+1)."""
    a, b = specs[i], specs[i + 1]
    r1 = np.abs(params[i]["w"]).reshape(-1, a.out_channels).max(0)
    w2 = np.abs(params[i + 1]["w"])
    r2 = w2.reshape(-1, b.out_channels).max(0) if b.kind == "dw" else w2.max(1)
    return r1, r2


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_equalization_keeps_the_function_and_balances_ranges(network, act):
    specs, folded, px = network(0.5, 48, act, n=12)
    eq = equalize(specs[:L], folded[:L])
    x = jnp.asarray(px.astype(np.float32) * INPUT_SCALE)
    with jax.default_matmul_precision("highest"):
        ref, out = forward(specs[:L], folded[:L], x), forward(specs[:L], eq, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5 * float(jnp.abs(ref).max()))
    # Every pair ends balanced (r_i = r_{i+1} per channel, to the sweeps' tolerance), far from the folded network.
    before, after = [], []
    for i in equalization_pairs(specs[:L]):
        r1, r2 = _ranges(specs, folded, i)
        before.append(np.max(np.abs(np.log(r1 / r2))))
        r1, r2 = _ranges(specs, eq, i)
        after.append(np.max(np.abs(np.log(r1 / r2))))
    assert max(after) < 0.01 < 0.5 < min(before), (max(after), min(before))  # within 1 %
    # ReLU6 needs its bound per channel (6 / s_c); ReLU needs none.
    clips = [p["clip"] for p in eq if "clip" in p]
    assert (len(clips) > 0) == (act == "relu6")
    if clips:
        assert max(float(np.ptp(c)) for c in clips) > 1.0
    # The latent layer's outputs are not rescaled (its inputs are): its bias, which scales with its outputs only,
    # is the folded network's, and its ReLU6 still clips every channel at 6.
    np.testing.assert_array_equal(np.asarray(eq[L - 1]["b"]), np.asarray(folded[L - 1]["b"]))
    assert np.all(np.asarray(eq[L - 1].get("clip", 6.0)) == 6.0)


def test_dead_channels_are_pruned_without_changing_outputs(network):
    specs, folded, px = network(0.25, 32, "relu6", n=8)
    folded = [dict(p) for p in folded[:L]]
    # Layer 0's channel 3 dead (weights ~1e-12, negative bias: output always 0); the depthwise filter of
    # layer 1 on it gets taps of 50, the largest of the layer, which the per-layer range would be set by.
    folded[0] = {"w": folded[0]["w"].copy(), "b": folded[0]["b"].copy()}
    folded[0]["w"][..., 3] = 1e-12
    folded[0]["b"][3] = -0.5
    folded[1] = {"w": folded[1]["w"].copy(), "b": folded[1]["b"]}
    folded[1]["w"][..., 3] = 50.0
    eq = equalize(specs[:L], folded)
    assert np.all(eq[1]["w"][..., 3] == 0) and np.all(eq[0]["w"][..., 3] == 0)
    x = jnp.asarray(px.astype(np.float32) * INPUT_SCALE)
    with jax.default_matmul_precision("highest"):
        ref, out = forward(specs[:L], folded, x), forward(specs[:L], eq, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5 * float(jnp.abs(ref).max()))


def test_integer_reference_is_bit_exact_with_equalization_and_bias_correction(network):
    """Per-channel ReLU6 bounds reach the integer kernels as per-channel clamps; JAX == NumPy bit for bit."""
    specs, folded, px = network(0.5, 48, "relu6", n=20)
    cal = [px[:12].astype(np.float32) * INPUT_SCALE]
    cfg = QuantConfig(equalize=True, bias_correction=True)
    layers, _, _ = calibrate_and_quantize(specs[:L], folded[:L], cal, cfg)
    assert any(np.ndim(lq.act_max) == 1 for lq in layers)  # some clamp is per channel
    jax_codes = frozen_codes(tuple(specs[:L]), tuple(layers), jnp.asarray(px[12:]), return_all=True)
    ref_codes = integer_forward(specs[:L], layers, px[12:], return_all=True)
    for spec, a, b in zip(specs, jax_codes, ref_codes):
        np.testing.assert_array_equal(np.asarray(a).astype(np.uint8), b, err_msg=f"layer {spec.index}")
    assert ref_codes[-1].std() > 0


def _mean_shift(specs, reference, layers, px):
    """Per layer, max over channels of |mean quantized output - mean FP32 output| relative to its scale."""
    x = jnp.asarray(px.astype(np.float32) * INPUT_SCALE)
    codes = frozen_codes(tuple(specs), tuple(layers), jnp.asarray(px), return_all=True)
    out = []
    with jax.default_matmul_precision("highest"):
        for i, spec in enumerate(specs):
            x = forward((spec,), (reference[i],), x)
            d = np.asarray(codes[i] * layers[i].out_scale - x).reshape(-1, spec.out_channels).mean(0)
            out.append(np.abs(d).max() / float(layers[i].out_scale))
    return np.asarray(out)


def test_bias_correction_removes_the_mean_shift(network):
    specs, folded, px = network(0.5, 48, "relu6", n=24)
    cal = [px[:16].astype(np.float32) * INPUT_SCALE]
    plain, _, ref = calibrate_and_quantize(specs[:L], folded[:L], cal, QuantConfig(equalize=True))
    corrected, _, _ = calibrate_and_quantize(specs[:L], folded[:L], cal, QuantConfig(equalize=True, bias_correction=True))
    before = _mean_shift(specs[:L], ref, plain, px[:16])
    after = _mean_shift(specs[:L], ref, corrected, px[:16])
    # Measured on the calibration images, the mean error (in output LSB) shrinks in the deep layers, where it
    # has accumulated, and overall.
    assert after[10:].mean() < 0.5 * before[10:].mean(), (before, after)
    assert [np.array_equal(a.w_codes, b.w_codes) for a, b in zip(plain, corrected)].count(False) <= 2


def test_quant_config_rejects_non_boolean_flags():
    with pytest.raises(ValueError, match="quant.equalize must be true or false"):
        QuantConfig(equalize="yes")
    with pytest.raises(ValueError, match="quant.bias_correction must be true or false"):
        QuantConfig(bias_correction=1)


@needs_weights
def test_per_layer_with_equalization_holds_on_imagenet_weights():
    """The paper's per-layer 8-bit + equalization + bias correction, 128 px, calibrated on 16 photo views:
    both sample photos keep their class (chelsea a tabby / Egyptian cat, coffee an espresso) at l = 19 and 27,
    and top-1 agreement with FP32 on 128 held-out views is at least per-channel's minus 5 points.

    On 32 views one view is 3 points, and the margin held or failed with the CPU's rounding (on one Intel Xeon:
    75.0 % against per-channel's 81.2 % at l = 27); on 128 views equalization leads by 8-12 points at both layers
    on two draws of views there."""
    from clq.model.imagenet import load_imagenet_mobilenet_v1
    from skimage import data

    size = 128
    specs, params, stats = load_imagenet_mobilenet_v1(input_size=size)
    folded = fold_batch_norm(specs, params, stats)
    cal = [photo_set(16, size, seed=1).astype(np.float32) * INPUT_SCALE]
    photos = np.stack([center_crop_resize(data.chelsea(), size), center_crop_resize(data.coffee(), size)])
    views = np.concatenate([photos, photo_set(126, size, seed=2)])
    agreement = {}
    for l in (19, 27):  # equalization rescales the stage's own last layers: one calibration per latent layer
        layers, _, _ = calibrate_and_quantize(specs[: l + 1], folded[: l + 1], cal,
                                              QuantConfig(equalize=True, bias_correction=True))
        agree, _, preds, _ = top1_agreement(specs, folded, layers, [l], views)
        agreement["per_layer_equalized", l] = agree[l][None]
        assert preds[l][None][0] in (TABBY, EGYPTIAN_CAT) and preds[l][None][1] == ESPRESSO, (l, preds[l][None][:2])
    # Without equalization the l = 19 stage is a prefix of the l = 27 one (the test below): one calibration and
    # one pass serve both latent layers.
    layers, _, _ = calibrate_and_quantize(specs[:28], folded[:28], cal,
                                          QuantConfig(weight_granularity="per_channel", equalize=False))
    agree, _, _, _ = top1_agreement(specs, folded, layers, [19, 27], views)
    for l in (19, 27):
        agreement["per_channel", l] = agree[l][None]
        assert agreement["per_layer_equalized", l] >= agreement["per_channel", l] - 0.05, agreement
        assert agreement["per_layer_equalized", l] > 0.6, agreement  # plain per-layer: ~5 % (docs/quantization.md §6)


def test_without_equalization_a_shorter_stage_is_a_prefix_of_the_longer(network):
    """What lets clq-quant-report reuse its 0..27 stage for every latent layer unless it equalizes: calibration and
    bias correction of a layer depend only on the layers below it; equalization does not rescale layer l's outputs,
    so with it the two stages differ."""
    specs, folded, px = network(0.25, 32, "relu6", n=8)
    cal = [px.astype(np.float32) * INPUT_SCALE]

    def same(cfg):
        full, _, _ = calibrate_and_quantize(specs[:28], folded[:28], cal, cfg)
        part, _, _ = calibrate_and_quantize(specs[:L], folded[:L], cal, cfg)
        return all(np.array_equal(np.asarray(a), np.asarray(b)) for x, y in zip(full[:L], part) for a, b in zip(x, y))

    assert same(QuantConfig(equalize=False, bias_correction=True))
    assert not same(QuantConfig(equalize=True))
