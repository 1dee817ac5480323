import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model import forward
from clq.quant import QuantConfig, calibrate_activation_max, frozen_forward_codes, quantize_frozen_stage, INPUT_SCALE
from clq.train.frozen_stage import make_frozen_stage


_forward = jax.jit(forward, static_argnums=0)


def _sqnr_db(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-30))


# Symmetric weights and percentile ranges are covered in test_integer.py / test_calibration.py.
@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(weight_granularity="per_channel"),
                                 QuantConfig(activation_range="mse")])
def test_fake_quant_frozen_stage_tracks_fp32(cfg, network):
    specs, params, pixels = network(0.25, 32)
    specs, params = specs[:14], params[:14]  # frozen stage 0..13
    x = pixels.astype(np.float32) * INPUT_SCALE
    a_max = calibrate_activation_max(specs, params, [x[:12], x[12:]], cfg)
    layers = quantize_frozen_stage(specs, params, a_max, cfg)
    for lq in layers:
        if lq.w_codes.size:
            lo = 0 if cfg.weight_mode == "asymmetric" else -127
            assert lq.w_codes.min() >= lo and lq.w_codes.max() <= lo + 255
    codes = np.asarray(jax.jit(lambda p: frozen_forward_codes(specs, layers, p))(jnp.asarray(pixels)))
    assert codes.min() >= 0 and codes.max() <= 255 and np.all(codes == np.round(codes))
    ref = np.asarray(_forward(specs, params, jnp.asarray(x)))
    # 8-bit PTQ over 14 layers of a random batch-normed network on real photos (~45 dB after conv1, then
    # ~1.3 dB lost per layer: random BN networks amplify perturbations): the latent keeps > 10 dB SQNR.
    assert _sqnr_db(ref, codes * layers[-1].out_scale) > 10


def test_minmax_calibration_of_a_short_last_batch_is_its_own_max_in_one_program(network):
    """The last calibration batch is filled up with copies of its first image (one batch shape, one program):
    every layer's a_max must still be the maximum over exactly the images given."""
    from clq.quant.frozen import _layer_max, frozen_forward_fp32

    specs, params, pixels = network(0.25, 32)
    specs, params = tuple(specs[:14]), tuple(params[:14])
    x = pixels.astype(np.float32) * INPUT_SCALE
    x[11] *= 0.0  # the short batch's first image is dark: copies of it cannot lift a maximum
    batches = [x[:11], x[11:14]]
    outs = [frozen_forward_fp32(specs, params, jnp.asarray(xb)) for xb in batches]
    want = np.max([[float(jnp.max(o)) for o in per_batch] for per_batch in outs], axis=0)
    before = _layer_max._cache_size()
    got = calibrate_activation_max(specs, params, batches, QuantConfig())
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6)
    assert _layer_max._cache_size() - before <= 1  # both batches share one compiled shape


def test_frozen_stage_latents_and_lr8_identity(network):
    from clq.quant import make_latent_codec
    specs, params, pixels = network(0.25, 32)
    specs, params = specs[:28], params[:28]  # l = 27: the pool layer inherits its input's scale
    fs = make_frozen_stage(specs, params, pixels, QuantConfig(), batch_size=16)  # 24 = 16 + padded 8
    lat = fs.latents(pixels)
    assert lat.dtype == np.uint8 and lat.shape == (24, *specs[-1].out_shape)
    np.testing.assert_array_equal(lat[:10], fs.latents(pixels[:10]))  # batch padding does not change results
    codec = make_latent_codec(8, fs.a_max)
    np.testing.assert_allclose(codec.scale, fs.scale, rtol=1e-6)
    # UINT-8 latent replays of an 8-bit frozen stage are the frozen stage's own codes.
    np.testing.assert_array_equal(np.asarray(codec.encode(lat.astype(np.float32) * fs.scale)), lat)
    fp = make_frozen_stage(specs, params, pixels, None, batch_size=16)
    assert fp.latents(pixels[:4]).dtype == np.float32 and fp.bits is None


def test_quant_config_validation():
    with pytest.raises(ValueError, match="quant.weight_mode"):
        QuantConfig(weight_mode="weird")
    with pytest.raises(ValueError, match="quant.frozen_bits"):
        QuantConfig(bits=9)
    with pytest.raises(ValueError, match="quant.activation_range"):
        QuantConfig(activation_range="kl")
    with pytest.raises(ValueError, match="quant.histogram_bins"):
        QuantConfig(histogram_bins=10)
    with pytest.raises(ValueError, match="quant.percentile"):
        QuantConfig(percentile=30.0)
