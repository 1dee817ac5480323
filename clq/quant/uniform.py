"""Uniform affine quantization primitives (pure, jittable, NumPy or JAX arrays).

A real value x is represented by an integer code q with a scale S and a zero point z:

    q = clip(round(x / S) + z, q_min, q_max),      x_hat = S * (q - z)

Unsigned Q-bit codes span 0..2^Q-1, signed ones -2^(Q-1)..2^(Q-1)-1. Inside the representable range the
round-trip error |x - x_hat| is at most S/2, and `fake_quant` is idempotent.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["code_range", "quantize", "dequantize", "fake_quant", "storage_dtype", "check_bits"]


def check_bits(bits, field: str, lo: int = 1, hi: int = 16, allow_none: bool = True):
    """Validate a bit-width; raise ValueError naming `field` and the allowed values."""
    if bits is None and allow_none:
        return None
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not lo <= bits <= hi:
        allowed = f"an integer in {lo}..{hi}" + (" or null (FP32)" if allow_none else "")
        raise ValueError(f"{field} must be {allowed}, got {bits!r}")
    return int(bits)


def code_range(bits: int, signed: bool = False) -> tuple[int, int]:
    """(q_min, q_max) of a `bits`-bit integer code."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def storage_dtype(bits: int | None):
    """Narrowest unsigned NumPy dtype holding `bits`-bit codes (float32 when bits is None)."""
    if bits is None:
        return np.float32
    return np.uint8 if bits <= 8 else np.uint16


def quantize(x, scale, zero_point, bits: int, signed: bool = False):
    """Integer codes (as int32) of x. scale/zero_point broadcast against x."""
    lo, hi = code_range(bits, signed)
    q = jnp.round(x / scale) + zero_point
    return jnp.clip(q, lo, hi).astype(jnp.int32)


def dequantize(q, scale, zero_point=0):
    """float32 values S * (q - z)."""
    return (q.astype(jnp.float32) - zero_point) * scale


def fake_quant(x, scale, zero_point, bits: int, signed: bool = False):
    """Quantize then dequantize: the value the device sees, kept in float32."""
    return dequantize(quantize(x, scale, zero_point, bits, signed), scale, zero_point)
