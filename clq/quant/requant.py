"""Integer requantization of int32 accumulators with a fixed-point multiplier and a right shift.

An integer layer computes an int32 accumulator ``acc`` at scale ``S_in * S_w`` and must bring it to the
output scale ``S_out``, i.e. multiply by the real number ``M = S_in * S_w / S_out``. MCU inference
libraries (TFLite Micro, CMSIS-NN, PULP-NN) never touch floating point for that: M is stored as an int32
*multiplier* ``M0`` in ``[2^30, 2^31)`` and a right *shift* ``n`` with ``M ~= M0 * 2^-n``, and

    y = floor((acc * M0 + 2^(n-1)) / 2^n)                                    (single rounding)

computed with a 64-bit product. That is TFLite's ``MultiplyByQuantizedMultiplier`` built with
``TFLITE_SINGLE_ROUNDING`` and CMSIS-NN's ``arm_nn_requantize`` with ``CMSIS_NN_USE_SINGLE_ROUNDING``
(their ``shift`` is ``31 - n``): round half up, one rounding step. The result is then clamped to the
activation's code range, which is where ReLU / ReLU6 happen on the device.

`requantize_double_rounding` is the gemmlowp/TFLite default (``SaturatingRoundingDoublingHighMul`` then
``RoundingDivideByPOT``, two roundings, ties away from zero); it differs from single rounding by at most
1 LSB and only on (near-)ties. clq, its export and its integer reference use single rounding.

`requantize_jax` computes the single-rounding result bit-exactly inside a JAX graph although JAX runs
with 32-bit integers only (x64 disabled): the 62-bit product is assembled from 16-bit limbs in uint32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MIN_SHIFT",
    "MAX_SHIFT",
    "quantize_multiplier",
    "multiplier_value",
    "requantize",
    "requantize_double_rounding",
    "requantize_jax",
]

#: Range of the right shift n (TFLite: shift = 31 - n in [-31, 30]).
MIN_SHIFT, MAX_SHIFT = 1, 62


def quantize_multiplier(m) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point form of positive real multipliers.

    ``m ~= multiplier * 2^-shift`` with ``multiplier`` in ``[2^30, 2^31)`` (Q0.31 mantissa, relative error
    <= 2^-31) and ``shift`` in 1..62. Multipliers below 2^-32 use shift 62 and a denormal mantissa
    (< 2^30, possibly 0: the layer then outputs constant 0 codes, as it would on the device).

    Args:
      m: float () or (C,), the real multipliers ``S_in * S_w / S_out``; must be positive and < 2^30.
    Returns:
      (multiplier, shift): int32 arrays of m's shape.
    """
    m = np.asarray(m, np.float64)
    if not np.all(np.isfinite(m)) or np.any(m <= 0) or np.any(m >= 2.0**30):
        raise ValueError(f"requantization multipliers must be finite and in (0, 2^30), got {m}")
    frac, exp = np.frexp(m)  # m = frac * 2^exp, frac in [0.5, 1)
    mult = np.round(frac * 2.0**31)
    carry = mult == 2.0**31  # frac rounded up to 1.0
    mult = np.where(carry, 2.0**30, mult)
    exp = exp + carry
    shift = 31 - exp
    small = shift > MAX_SHIFT
    mult = np.where(small, np.round(m * 2.0**MAX_SHIFT), mult)
    shift = np.where(small, MAX_SHIFT, shift)
    return mult.astype(np.int32), shift.astype(np.int32)


def multiplier_value(multiplier, shift) -> np.ndarray:
    """The real multiplier ``multiplier * 2^-shift`` (float64) that a (multiplier, shift) pair encodes."""
    return np.asarray(multiplier, np.float64) * np.exp2(-np.asarray(shift, np.float64))


def requantize(acc, multiplier, shift, lo: int, hi: int) -> np.ndarray:
    """Integer reference: ``clip(floor((acc * M0 + 2^(n-1)) / 2^n), lo, hi)`` with a 64-bit product.

    Args:
      acc: int32 [..., C] accumulators.
      multiplier, shift: int32 () or (C,) from `quantize_multiplier` (broadcast over the last axis).
      lo, hi: the output code range after the activation (ReLU: lo = 0; ReLU6: hi = code of 6).
    Returns:
      int32 array of acc's shape.
    """
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise TypeError(f"accumulators must be int32, got {acc.dtype}")
    n = np.asarray(shift, np.int64)
    prod = acc.astype(np.int64) * np.asarray(multiplier, np.int64)  # |prod| < 2^62: no overflow
    y = (prod + (np.int64(1) << (n - 1))) >> n  # arithmetic shift = floor division by 2^n
    return np.clip(y, lo, hi).astype(np.int32)


def requantize_double_rounding(acc, multiplier, shift, lo: int, hi: int) -> np.ndarray:
    """gemmlowp / TFLite (default build) requantization, for comparison with `requantize`.

    ``SaturatingRoundingDoublingHighMul(acc << left, M0)`` (round half away from zero over 2^31) followed
    by ``RoundingDivideByPOT(., right)`` (again half away from zero), with ``left = max(31 - n, 0)`` and
    ``right = max(n - 31, 0)``. Same arguments and return as `requantize`.
    """
    acc = np.asarray(acc, np.int64)
    mult = np.asarray(multiplier, np.int64)
    n = np.asarray(shift, np.int64)
    left = np.maximum(31 - n, 0)
    right = np.maximum(n - 31, 0)
    a = np.clip(acc << left, -(2**31), 2**31 - 1)  # saturating left shift
    ab = a * mult
    nudge = np.where(ab >= 0, np.int64(1) << 30, 1 - (np.int64(1) << 30))
    num = ab + nudge
    high = np.where(num >= 0, num >> 31, -((-num) >> 31))  # C++ '/' truncates toward zero
    high = np.where((a == -(2**31)) & (mult == -(2**31)), 2**31 - 1, high)
    mask = (np.int64(1) << right) - 1
    rem = high & mask
    threshold = (mask >> 1) + (high < 0)
    y = (high >> right) + (rem > threshold)
    return np.clip(y, lo, hi).astype(np.int32)


def requantize_jax(acc, multiplier, shift, hi, large_shifts: bool | None = None) -> jnp.ndarray:
    """`requantize` with ``lo = 0`` in 32-bit JAX arithmetic, bit-exact.

    Only non-negative outputs are needed (the frozen stage's activations are unsigned), and with a positive
    multiplier ``acc <= 0`` always yields a code <= 0, so the accumulator is clamped at 0 first and the
    rest is unsigned: ``acc * M0 < 2^62`` is built as (hi, lo) uint32 words from 16-bit limbs, the rounding
    constant is added with carry, and the 64-bit value is shifted right by n and saturated at `hi`.

    Args:
      acc: int32 [..., C] accumulators (traced).
      multiplier, shift: int () or (C,) NumPy (static) or JAX arrays; multiplier in [0, 2^31), shift 1..62.
      hi: int (or int32 scalar array), the largest output code, < 2^31.
      large_shifts: every shift is > 32 (the fast path); None: decided from concrete shifts (traced ones take the
        general path). A caller that knows it of traced shifts says so (`clq.quant.frozen.frozen_stage_plan`).
    Returns:
      int32 array of acc's shape with codes in 0..hi.
    """
    u32 = jnp.uint32
    a = jnp.maximum(acc, 0).astype(u32)
    a_hi, a_lo = a >> 16, a & 0xFFFF
    m = jnp.asarray(multiplier).astype(u32) if isinstance(multiplier, jax.core.Tracer) else np.asarray(multiplier, np.uint32)
    m_hi, m_lo = m >> 16, m & 0xFFFF
    # acc * M0 = a_hi*m_hi * 2^32 + (a_hi*m_lo + a_lo*m_hi) * 2^16 + a_lo*m_lo; each partial product and
    # the middle sum (< 2^31 + 2^31) fit in uint32.
    t0 = a_lo * m_lo
    mid = a_hi * m_lo + a_lo * m_hi
    w_lo = t0 + (mid << 16)
    w_hi = a_hi * m_hi + (mid >> 16) + (w_lo < t0).astype(u32)
    hi_u = jnp.asarray(hi).astype(u32)
    if large_shifts is None:
        large_shifts = not isinstance(shift, jax.core.Tracer) and bool(np.all(np.asarray(shift) > 32))
    if large_shifts:
        # Fast path (every M < 2^-1, i.e. all real layers): the rounding constant and the shift only touch the
        # high word, and the result (< 2^30) cannot overflow.
        n = np.asarray(shift, np.uint32) if not isinstance(shift, jax.core.Tracer) else shift.astype(u32)
        y = (w_hi + (u32(1) << (n - 33))) >> (n - 32)
        return jnp.minimum(y, hi_u).astype(jnp.int32)
    n = jnp.asarray(shift).astype(u32)
    # + 2^(n-1): into the low word when n <= 32, else into the high word.
    low_round = n <= 32
    r_lo = jnp.where(low_round, jnp.left_shift(u32(1), jnp.minimum(n - 1, 31)), u32(0))
    r_hi = jnp.where(low_round, u32(0), jnp.left_shift(u32(1), jnp.clip(n, 33, 63) - 33))
    s_lo = w_lo + r_lo
    s_hi = w_hi + r_hi + (s_lo < w_lo).astype(u32)
    # >> n. Shift amounts are kept inside 0..31 on both branches (XLA shifts by >= 32 are implementation
    # details we do not want to rely on); `where` picks the right branch.
    n_small = jnp.clip(n, 1, 31)
    small = (s_lo >> n_small) | (s_hi << (32 - n_small))
    small_overflow = (s_hi >> n_small) != 0
    big = s_hi >> (jnp.clip(n, 32, 63) - 32)
    is_small = n < 32
    y = jnp.where(is_small, small, big)
    sat = is_small & small_overflow
    y = jnp.where(sat | (y > hi_u), hi_u, y)
    return y.astype(jnp.int32)
