"""Quantized latent replays: UINT-`lr_bits` codes plus one FP32 scale (paper.md §1, §5).

Latents are outputs of a ReLU (or of the average pool after one), hence non-negative, so they are stored
unsigned with zero point 0 and ``S_LR = a_max / (2^Q_LR - 1)`` where ``a_max`` is the latent layer's
calibrated activation maximum. With an 8-bit frozen stage and ``lr_bits=8`` the codes are exactly the frozen
stage's output codes. ``lr_bits=None`` stores FP32 latents unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from clq.quant.uniform import check_bits, storage_dtype

__all__ = ["LatentCodec", "make_latent_codec"]


class LatentCodec(NamedTuple):
    """Encode/decode latents for storage. Static: `bits`, `dtype`; `scale` is a float32 scalar.

    Fields:
      bits: Q_LR in 1..16, or None for FP32 storage.
      scale: S_LR (float32 scalar; 1.0 for FP32 storage).
      dtype: dtype of the codes `encode` returns: uint8 (bits <= 8), uint16 (9..16) or float32. The replay
        buffer bit-packs codes into uint32 words (`clq.replay.packing`), Q_LR bits each.
    """

    bits: int | None
    scale: np.float32
    dtype: type

    def encode(self, x):
        """float32 [..] latents -> codes of `dtype` (clipped to 0..2^Q-1)."""
        if self.bits is None:
            return jnp.asarray(x, jnp.float32)
        q = jnp.clip(jnp.round(x / self.scale), 0, 2**self.bits - 1)
        return q.astype(self.dtype)

    def decode(self, codes):
        """codes -> float32 latents S_LR * q."""
        if self.bits is None:
            return codes.astype(jnp.float32)
        return codes.astype(jnp.float32) * self.scale

    def bytes_per_latent(self, elements: int) -> float:
        """Storage of one latent of `elements` values at `bits` bits (paper arithmetic, no padding)."""
        return elements * (32 if self.bits is None else self.bits) / 8


def make_latent_codec(bits: int | None, a_max: float) -> LatentCodec:
    """Latent codec for `bits` (1..16 or None) and the latent layer's calibrated maximum `a_max`."""
    bits = check_bits(bits, "replay.bits")
    if bits is None:
        return LatentCodec(None, np.float32(1.0), np.float32)
    if not np.isfinite(a_max) or a_max <= 0:
        raise ValueError(f"latent a_max must be a positive finite number, got {a_max}")
    return LatentCodec(bits, np.float32(a_max / (2**bits - 1)), storage_dtype(bits))
