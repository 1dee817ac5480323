"""Bit-packing of Q-bit latent-replay codes into uint32 words, the layout a device would store.

The paper counts a latent replay of ``E`` codes at ``Q_LR`` bits as ``E * Q_LR / 8`` bytes (paper.md §5);
this module makes the replay buffer hold exactly that many bits (rounded up to whole 32-bit words).

Layout (one latent; ``Q`` in 1..16, ``E`` codes in the latent's flattened C order, i.e. HWC):

* the latent is its own contiguous little-endian bit stream: code ``i`` occupies stream bits
  ``[i*Q, (i+1)*Q)``, its least significant bit first;
* stream bit ``b`` is bit ``b % 32`` of word ``b // 32`` (bit 0 = least significant);
* a latent takes ``W = ceil(E*Q / 32)`` words; the unused high bits of its last word are zero.

A code may straddle two words: with Q=3, code 10 is stream bits 30..32, so its two low bits are bits 30..31
of word 0 and its high bit is bit 0 of word 1. Example, Q=3, codes [1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 5]
(11 codes = 33 bits, 2 words)::

    word 0 = 1 | 2<<3 | 3<<6 | 4<<9 | 5<<12 | 6<<15 | 7<<18 | 0<<21 | 1<<24 | 2<<27 | (5 & 0b11)<<30
           = 0x511f58d1
    word 1 = 5 >> 2 = 0x00000001   (bits 1..31 unused, zero)

Implementation: ``G = lcm(Q, 32) / Q`` codes fill exactly ``lcm(Q, 32) / 32`` words, so within such a group
every code's word index and shift are constants. Packing is an OR of statically shifted codes; unpacking takes
each code's word (a gather with constant indices, none when Q divides 32), shifts by a constant vector and masks
(a straddling code takes its high part from the next word). The codes are padded to whole groups and the words
cut to ``W``. No scatter, shapes static: it jits, vmaps and fuses.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

__all__ = ["packed_words", "pack", "unpack", "PACK_BITS"]

#: The code widths that can be packed.
PACK_BITS = range(1, 17)


def _check(bits, elements=None):
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in PACK_BITS:
        raise ValueError(f"bits must be an integer in 1..16, got {bits!r}")
    if elements is not None and (isinstance(elements, bool) or not isinstance(elements, int) or elements < 1):
        raise ValueError(f"elements must be an integer >= 1, got {elements!r}")


def packed_words(elements: int, bits: int) -> int:
    """Words of one packed latent: ``W = ceil(elements * bits / 32)``."""
    _check(bits, elements)
    return -(-elements * bits // 32)


def _group(bits: int) -> tuple[int, int]:
    """(codes, words) of one group: ``lcm(bits, 32) / bits`` codes fill ``lcm(bits, 32) / 32`` words exactly."""
    span = math.lcm(bits, 32)
    return span // bits, span // 32


def pack(codes, bits: int):
    """Pack Q-bit codes into uint32 words (module docstring for the layout).

    Args:
      codes: unsigned integers [..., E] in 0..2^bits-1 (bits above `bits` are dropped).
      bits: Q, a Python int in 1..16 (static).
    Returns:
      uint32 [..., W], W = `packed_words(E, bits)`.
    """
    _check(bits)
    e = codes.shape[-1]
    n_words = packed_words(e, bits)
    g_codes, g_words = _group(bits)
    n_groups = -(-e // g_codes)
    c = jnp.asarray(codes).astype(jnp.uint32) & jnp.uint32(2**bits - 1)
    c = jnp.pad(c, [(0, 0)] * (c.ndim - 1) + [(0, n_groups * g_codes - e)])
    c = c.reshape(*c.shape[:-1], n_groups, g_codes)
    terms = [[] for _ in range(g_words)]
    for j in range(g_codes):
        w, s = divmod(j * bits, 32)
        terms[w].append(c[..., j] << s)  # uint32: bits shifted past 31 fall off, and reappear below
        if s + bits > 32:
            terms[w + 1].append(c[..., j] >> (32 - s))  # the high part of a code straddling two words
    words = []
    for t in terms:
        acc = t[0]
        for x in t[1:]:
            acc = acc | x
        words.append(acc)
    out = jnp.stack(words, axis=-1).reshape(*c.shape[:-2], n_groups * g_words)
    return out[..., :n_words]


def unpack(words, bits: int, elements: int):
    """Inverse of `pack`: the first `elements` Q-bit codes of each packed latent.

    Args:
      words: uint32 [..., W] as written by `pack` (W = `packed_words(elements, bits)`).
      bits: Q, a Python int in 1..16 (static).
      elements: E, codes per latent (static).
    Returns:
      uint32 [..., E], each in 0..2^bits-1.
    """
    _check(bits, elements)
    n_words = packed_words(elements, bits)
    if words.shape[-1] != n_words:
        raise ValueError(f"{elements} codes of {bits} bits take {n_words} words, got {words.shape[-1]}")
    g_codes, g_words = _group(bits)
    n_groups = -(-elements // g_codes)
    w = jnp.asarray(words).astype(jnp.uint32)
    w = jnp.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, n_groups * g_words - n_words)])
    w = w.reshape(*w.shape[:-1], n_groups, g_words)
    # Per code of a group (NumPy constants): the word holding its low bits, their shift, and whether its high
    # bits spill into the next word. One broadcast shift over a static gather of words is several times faster
    # on XLA CPU than assembling the codes one by one (stacking G slices along the minor axis).
    start = np.arange(g_codes) * bits
    k, s = start // 32, start % 32
    straddle = s + bits > 32
    c = (w[..., k] if g_words > 1 else w) >> s.astype(np.uint32)  # g_words == 1: broadcast, no gather
    if straddle.any():
        hi = w[..., np.minimum(k + 1, g_words - 1)] << np.where(straddle, 32 - s, 0).astype(np.uint32)
        c = c | (hi & np.where(straddle, 0xFFFFFFFF, 0).astype(np.uint32))
    c = c & jnp.uint32(2**bits - 1)
    return c.reshape(*c.shape[:-2], n_groups * g_codes)[..., :elements]
