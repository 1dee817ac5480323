import functools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clq.replay import pack, packed_words, unpack


def _reference_words(codes, bits):
    """The documented layout with Python integers: one little-endian bit stream, cut into 32-bit words."""
    stream = 0
    for i, c in enumerate(int(c) for c in codes):
        stream |= c << (i * bits)
    n = -(-len(codes) * bits // 32)
    return np.asarray([(stream >> (32 * k)) & 0xFFFFFFFF for k in range(n)], np.uint32)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 16), elements=st.integers(1, 200), seed=st.integers(0, 2**31 - 1))
def test_pack_matches_the_documented_layout_and_round_trips(bits, elements, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, elements).astype(np.uint16)
    # Jitted: one program per example instead of an eager dispatch per operation (same values; the layout test
    # below checks the eager path).
    words = np.asarray(jax.jit(pack, static_argnums=1)(codes, bits))
    assert words.dtype == np.uint32 and words.shape == (packed_words(elements, bits),)
    assert words.shape[0] == -(-elements * bits // 32)
    np.testing.assert_array_equal(words, _reference_words(codes, bits))
    used = elements * bits % 32
    if used:  # the high bits of the last word past the stream are zero
        assert int(words[-1]) >> used == 0
    back = np.asarray(jax.jit(unpack, static_argnums=(1, 2))(words, bits, elements))
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, codes)


def test_hand_written_example_q3():
    # Module docstring: code 10 (value 5 = 0b101) straddles words 0 and 1.
    codes = np.asarray([1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 5], np.uint8)
    np.testing.assert_array_equal(np.asarray(pack(codes, 3)), np.asarray([0x511F58D1, 0x1], np.uint32))
    # Q=8: four codes per word, the first in the low byte.
    np.testing.assert_array_equal(np.asarray(pack(np.asarray([0x11, 0x22, 0x33, 0x44, 0x55], np.uint8), 8)),
                                  np.asarray([0x44332211, 0x55], np.uint32))
    # Q=16: two codes per word; Q=1: bit i of word 0 is code i.
    np.testing.assert_array_equal(np.asarray(pack(np.asarray([0xBEEF, 0xDEAD], np.uint16), 16)),
                                  np.asarray([0xDEADBEEF], np.uint32))
    np.testing.assert_array_equal(np.asarray(pack(np.asarray([1, 0, 1, 1], np.uint8), 1)), np.asarray([0b1101]))


@pytest.mark.parametrize("bits", [3, 8, 11])
def test_leading_axes_pack_each_latent_separately(bits):
    codes = np.random.default_rng(bits).integers(0, 2**bits, (2, 3, 37)).astype(np.uint16)
    # Jitted: one program per example instead of an eager dispatch per operation (same values; the layout test
    # below checks the eager path).
    words = np.asarray(jax.jit(pack, static_argnums=1)(codes, bits))
    assert words.shape == (2, 3, packed_words(37, bits))
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(words[i, j], _reference_words(codes[i, j], bits))
    np.testing.assert_array_equal(np.asarray(unpack(words, bits, 37)), codes)


def test_bits_above_q_are_dropped():
    np.testing.assert_array_equal(np.asarray(pack(np.asarray([0xFF, 0x01], np.uint8), 4)), np.asarray([0x1F]))


@pytest.mark.parametrize("bits", [1, 5, 8, 13, 16])
def test_jit_compiles_once(bits):
    p = jax.jit(functools.partial(pack, bits=bits))
    u = jax.jit(functools.partial(unpack, bits=bits, elements=50))
    rng = np.random.default_rng(bits)
    for _ in range(3):
        codes = rng.integers(0, 2**bits, (4, 50)).astype(np.uint16)
        words = p(codes)
        np.testing.assert_array_equal(np.asarray(u(words)), codes)
    assert p._cache_size() == 1 and u._cache_size() == 1


def test_validation():
    for bad in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match="bits"):
            packed_words(8, bad)
    with pytest.raises(ValueError, match="elements"):
        packed_words(0, 8)
    with pytest.raises(ValueError, match="take 3 words"):
        unpack(np.zeros((4,), np.uint32), 8, 10)
