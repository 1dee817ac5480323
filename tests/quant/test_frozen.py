import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model import fold_batch_norm, forward, init_params, mobilenet_v1_specs
from clq.quant import QuantConfig, calibrate_activation_max, frozen_forward_codes, quantize_frozen_stage, INPUT_SCALE
from clq.train.frozen_stage import make_frozen_stage


def _frozen(l=13, width=0.25, size=32):
    specs = mobilenet_v1_specs(width, size, 10)
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    folded = fold_batch_norm(specs, params, stats)
    pixels = np.random.default_rng(0).integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    return specs[: l + 1], folded[: l + 1], pixels


def _sqnr_db(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-30))


@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(weight_granularity="per_channel"),
                                 QuantConfig(weight_mode="symmetric"),
                                 QuantConfig(activation_range="percentile", percentile=99.9)])
def test_fake_quant_frozen_stage_tracks_fp32(cfg):
    specs, params, pixels = _frozen()
    x = pixels.astype(np.float32) * INPUT_SCALE
    a_max = calibrate_activation_max(specs, params, [x[:32], x[32:]], cfg)
    layers = quantize_frozen_stage(specs, params, a_max, cfg)
    for lq in layers:
        if lq.w_codes.size:
            lo = 0 if cfg.weight_mode == "asymmetric" else -127
            assert lq.w_codes.min() >= lo and lq.w_codes.max() <= lo + 255
    codes = np.asarray(jax.jit(lambda p: frozen_forward_codes(specs, layers, p))(jnp.asarray(pixels)))
    assert codes.min() >= 0 and codes.max() <= 255 and np.all(codes == np.round(codes))
    ref = np.asarray(forward(specs, params, jnp.asarray(x)))
    # 8-bit per-layer PTQ over 14 layers of a random network: the latent keeps > 15 dB SQNR.
    assert _sqnr_db(ref, codes * layers[-1].out_scale) > 15


def test_frozen_stage_latents_and_lr8_identity():
    from clq.quant import make_latent_codec
    specs, params, pixels = _frozen(l=27)  # the pool layer inherits its input's scale
    fs = make_frozen_stage(specs, params, pixels, QuantConfig(), batch_size=48)  # 64 = 48 + padded 16
    lat = fs.latents(pixels)
    assert lat.dtype == np.uint8 and lat.shape == (64, *specs[-1].out_shape)
    np.testing.assert_array_equal(lat[:10], fs.latents(pixels[:10]))  # batch padding does not change results
    codec = make_latent_codec(8, fs.a_max)
    np.testing.assert_allclose(codec.scale, fs.scale, rtol=1e-6)
    # UINT-8 latent replays of an 8-bit frozen stage are the frozen stage's own codes.
    np.testing.assert_array_equal(np.asarray(codec.encode(lat.astype(np.float32) * fs.scale)), lat)
    fp = make_frozen_stage(specs, params, pixels, None)
    assert fp.latents(pixels[:4]).dtype == np.float32 and fp.bits is None


def test_quant_config_validation():
    with pytest.raises(ValueError, match="quant.weight_mode"):
        QuantConfig(weight_mode="weird")
    with pytest.raises(ValueError, match="quant.frozen_bits"):
        QuantConfig(bits=9)
