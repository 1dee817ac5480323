import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clq.quant.requant import (
    multiplier_value,
    quantize_multiplier,
    requantize,
    requantize_double_rounding,
    requantize_jax,
)

INT32 = st.integers(-(2**31), 2**31 - 1)
WIDE = (-(2**31), 2**31 - 1)  # no clamp


@settings(max_examples=300, deadline=None)
@given(st.floats(2.0**-40, 2.0**20))
def test_quantize_multiplier_precision(m):
    mult, shift = quantize_multiplier(m)
    assert 1 <= shift <= 62
    if m >= 2.0**-31:  # normal range: Q0.31 mantissa in [2^30, 2^31)
        assert 2**30 <= mult < 2**31
        assert abs(multiplier_value(mult, shift) - m) <= m * 2.0**-31
    else:
        assert abs(multiplier_value(mult, shift) - m) <= 2.0**-63


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(2**26), 2**26), min_size=1, max_size=32), st.floats(2.0**-24, 4.0))
def test_requantize_matches_float_reference_within_1lsb(accs, m):
    """Integer requantization of int32 accumulators vs round(acc * M) in float64, over random scales."""
    acc = np.asarray(accs, np.int32)
    mult, shift = quantize_multiplier(m)
    got = requantize(acc, mult, shift, *WIDE).astype(np.int64)
    ref = np.floor(acc.astype(np.float64) * m + 0.5)
    assert np.abs(got - ref).max() <= 1
    # Inside the exactly representable range the fixed-point result is the correctly rounded one except on
    # near-ties, so disagreements must be rare.
    dbl = requantize_double_rounding(acc, mult, shift, *WIDE).astype(np.int64)
    assert np.abs(dbl - got).max() <= 1


# One compilation for every example: fixed shapes, multiplier/shift/hi traced.
_requantize_jax = jax.jit(requantize_jax)


@settings(max_examples=200, deadline=None)
@given(st.lists(INT32, min_size=16, max_size=16), st.integers(0, 2**31 - 1), st.integers(1, 62),
       st.integers(0, 2**31 - 1))
def test_requantize_jax_bit_exact_with_int64_reference(accs, mult, shift, hi):
    """The 32-bit limb emulation equals the 64-bit reference for every accumulator, multiplier and shift."""
    acc = np.asarray(accs, np.int32)
    ref = requantize(acc, np.int32(mult), np.int32(shift), 0, hi)
    got = np.asarray(_requantize_jax(jnp.asarray(acc), jnp.int32(mult), jnp.int32(shift), jnp.int32(hi)))
    np.testing.assert_array_equal(got, ref)


def test_requantize_jax_per_channel_and_extremes():
    rng = np.random.default_rng(0)
    c = 64
    acc = np.concatenate([rng.integers(-(2**31), 2**31, (200, c), dtype=np.int64),
                          np.full((1, c), 2**31 - 1), np.full((1, c), -(2**31)), np.zeros((1, c)),
                          np.ones((1, c))]).astype(np.int32)
    mult = rng.integers(2**30, 2**31, c).astype(np.int32)
    shift = rng.integers(1, 63, c).astype(np.int32)
    shift[:4] = [1, 31, 32, 62]
    for hi in (255, 6, 2**31 - 1):
        ref = requantize(acc, mult, shift, 0, hi)
        got = np.asarray(jax.jit(lambda a: requantize_jax(a, mult, shift, hi))(jnp.asarray(acc)))
        np.testing.assert_array_equal(got, ref)
    # Traced multipliers/shifts (per-channel vectors as arguments) work too.
    f = jax.jit(lambda a, m, s: requantize_jax(a, m, s, 255))
    np.testing.assert_array_equal(np.asarray(f(jnp.asarray(acc), jnp.asarray(mult), jnp.asarray(shift))),
                                  requantize(acc, mult, shift, 0, 255))


def test_requantize_rounds_half_up_and_validates():
    mult, shift = quantize_multiplier(0.25)  # M0 = 2^30, n = 32: acc / 4
    acc = np.asarray([-6, -2, 2, 6, 10], np.int32)
    np.testing.assert_array_equal(requantize(acc, mult, shift, *WIDE), [-1, 0, 1, 2, 3])  # ties go up
    # gemmlowp double rounding sends negative ties away from zero instead.
    np.testing.assert_array_equal(requantize_double_rounding(acc, mult, shift, *WIDE), [-2, -1, 1, 2, 3])
    with pytest.raises(TypeError):
        requantize(acc.astype(np.int64), mult, shift, 0, 255)
    for bad in (0.0, -1.0, np.inf, 2.0**31):
        with pytest.raises(ValueError, match="multipliers"):
            quantize_multiplier(bad)


def _gemmlowp(x: int, m0: int, n: int) -> int:
    """Line-by-line port of TFLite's default MultiplyByQuantizedMultiplier (Python ints)."""
    shift = 31 - n
    left, right = (shift, 0) if shift > 0 else (0, -shift)
    a = x * (1 << left)
    ab = a * m0
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    high = abs(ab + nudge) // (1 << 31) * (1 if ab + nudge >= 0 else -1)  # C++ division truncates
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if (high & mask) > threshold else 0)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**24), 2**24), st.floats(2.0**-20, 0.99))
def test_double_rounding_is_gemmlowp(acc, m):
    mult, shift = quantize_multiplier(m)
    got = requantize_double_rounding(np.asarray([acc], np.int32), mult, shift, *WIDE)[0]
    assert got == _gemmlowp(acc, int(mult), int(shift))
