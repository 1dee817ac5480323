import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from clq.quant import fake_quant, make_latent_codec, quantize, dequantize

floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(st.lists(floats, min_size=1, max_size=64), st.integers(1, 16), st.floats(1e-3, 10.0))
def test_round_trip_within_half_scale_inside_range(values, bits, scale):
    x = np.asarray(values, np.float32)
    lo, hi = 0.0, scale * (2**bits - 1)
    x = np.clip(x, lo, hi)  # inside the representable range
    q = quantize(x, np.float32(scale), 0, bits)
    assert int(q.min()) >= 0 and int(q.max()) <= 2**bits - 1
    err = np.abs(np.asarray(dequantize(q, np.float32(scale))) - x)
    # Half a step, plus float32 rounding of x / scale and of q * scale, which grows with |x| (a tie such as
    # x = 487, scale = 0.4 lands 1.2e-5 beyond half a step).
    assert err.max() <= scale / 2 * (1 + 1e-5) + 4 * np.finfo(np.float32).eps * np.abs(x).max() + 1e-6


@settings(max_examples=100, deadline=None)
@given(st.lists(floats, min_size=1, max_size=64), st.integers(2, 8), st.floats(1e-3, 10.0), st.integers(0, 255),
       st.booleans())
def test_fake_quant_idempotent(values, bits, scale, zero, signed):
    x = jnp.asarray(values, jnp.float32)
    zero = 0 if signed else zero % (2**bits)
    once = fake_quant(x, jnp.float32(scale), zero, bits, signed)
    twice = fake_quant(once, jnp.float32(scale), zero, bits, signed)
    np.testing.assert_array_equal(np.asarray(once), np.asarray(twice))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 16), st.floats(0.1, 100.0), st.integers(0, 2**31 - 1))
@example(15, 49.25, 424604)  # the FP32 rounding of values near a_max once went past a bound without it
def test_latent_codec_round_trip(bits, a_max, seed):
    codec = make_latent_codec(bits, a_max)
    x = np.random.default_rng(seed).uniform(0, a_max, (32,)).astype(np.float32)
    codes = jax.jit(codec.encode)(x)
    assert codes.dtype == (jnp.uint8 if bits <= 8 else jnp.uint16)
    err = np.abs(np.asarray(codec.decode(codes)) - x)
    # Half a step, plus FP32 rounding of values of a_max's size (encode divides, decode multiplies).
    assert err.max() <= codec.scale / 2 + 2 * np.spacing(np.float32(a_max))
    # Values above the range saturate at the top code.
    assert int(codec.encode(np.float32([10 * a_max]))[0]) == 2**bits - 1


def test_latent_codec_fp32_and_validation():
    codec = make_latent_codec(None, 5.0)
    x = np.float32([0.123456, 3.5])
    np.testing.assert_array_equal(np.asarray(codec.decode(codec.encode(x))), x)
    assert codec.bytes_per_latent(32768) == 131072
    assert make_latent_codec(8, 1.0).bytes_per_latent(32768) == 32768
    for bad in (0, 17, 2.5, "8"):
        with pytest.raises(ValueError, match="replay.bits"):
            make_latent_codec(bad, 1.0)
