"""Functional latent-replay buffer: fixed-shape state, pure `init/add/sample`, jittable.

`make_replay_buffer(...)` binds the static hyper-parameters (size N, latent shape, bit-width, policy)
and returns a `ReplayBuffer` of pure functions over a `BufferState` NamedTuple, in the style of optax's
`GradientTransformation` and flashbax's buffers. Latents are stored encoded with their labels: UINT-Q_LR codes
(`clq.quant.latent`) bit-packed into uint32 words (`clq.replay.packing`: ``ceil(E * Q_LR / 32)`` words per latent
of E elements, the device's layout, so the RAM they take is the cost model's LR-buffer bytes without the FP32
scale), or FP32 latents unchanged; `sample`/`read` unpack and decode to float32. `buffer_nbytes` measures a
state's RAM.

Policies (what `add` does with a learning event's latents):

* ``ar1``: the AR1*/latent-replay rule (paper.md §3): after event i (0-based, counted by `add` calls),
  ``h = min(N // (i+1), n_new)`` random latents of this event overwrite ``h`` random slots (empty slots
  are taken first, so event 0 fills the buffer; while slots are still empty, h is at least their number,
  so small first events cannot leave the buffer half empty). Each event's share shrinks as 1/(i+1), so the buffer
  approximates a uniform sample over events.
* ``reservoir``: classic reservoir sampling over every latent offered; each has probability N/seen of
  being in the buffer.
* ``class_balanced``: class-balancing reservoir (Chrysakis & Moens, ICML 2020): while the buffer is not
  full every latent is stored; once full, a latent of a class that is not among the largest in the buffer
  replaces a random latent of a largest class, and a latent of a largest class replaces a random latent of
  its own class with probability (its class's slots) / (its class's latents seen).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.quant.latent import LatentCodec
from clq.replay.packing import PACK_BITS, pack, packed_words, unpack

__all__ = ["BufferState", "ReplayBuffer", "make_replay_buffer", "buffer_nbytes", "masked_counts", "POLICIES"]

POLICIES = ("ar1", "reservoir", "class_balanced")


class BufferState(NamedTuple):
    """State of a replay buffer of N slots.

    Fields:
      latents: uint32 [N, W] bit-packed codes (W = `packed_words(E, code_bits)`, E elements per latent) for
        quantized latents; float32 [N, *latent_shape] for FP32 latents (codec.bits None).
      labels: int32 [N], label of each slot, -1 where empty.
      filled: bool [N], slot holds a latent.
      seen: int32 (), latents offered to `add` so far.
      events: int32 (), `add` calls so far (the AR1 rule's event index i).
      class_seen: int32 [num_classes], latents offered per class (class-balanced policy).
    """

    latents: jax.Array
    labels: jax.Array
    filled: jax.Array
    seen: jax.Array
    events: jax.Array
    class_seen: jax.Array


class ReplayBuffer(NamedTuple):
    """Pure functions over `BufferState` plus the static facts they were built with.

    init() -> BufferState
    add(state, latents, labels, valid, key) -> BufferState
        latents float32 [n, *latent_shape]; labels int32 [n]; valid bool [n] (padding rows False).
    sample(state, key, batch) -> (float32 [batch, *latent_shape], int32 [batch])
        uniform with replacement over filled slots (precondition: at least one filled slot).
    read(state, slots) -> (float32 [k, *latent_shape], int32 [k]): decode given slots.
    order(state, key) -> int32 [N]: the filled slots in random order, then the empty ones.

    Static facts: size (N), latent_shape, codec, policy; code_bits, the bits each stored code takes (the
    packing's Q; None for FP32 latents); latent_bytes, the RAM bytes of the N stored latents
    (``N * 4 * packed_words(E, code_bits)``, or ``N * 4 * E`` for FP32).
    with_scale(scale) -> the same buffer with the codec's scale S_LR replaced, e.g. by a traced value
    (`clq.learn.Hyper.lr_scale`): S_LR follows event 0's network, and as a constant of a compiled program it
    makes every seed's program a new one.
    """

    init: Callable[[], BufferState]
    add: Callable[..., BufferState]
    sample: Callable[..., tuple[jax.Array, jax.Array]]
    read: Callable[..., tuple[jax.Array, jax.Array]]
    order: Callable[..., jax.Array]
    size: int
    latent_shape: tuple[int, ...]
    codec: LatentCodec
    policy: str
    code_bits: int | None
    latent_bytes: int
    with_scale: Callable[..., "ReplayBuffer"]


def buffer_nbytes(state: BufferState) -> dict[str, int]:
    """RAM bytes of a buffer state as this process holds it (arrays, or `jax.eval_shape` structs).

    Returns:
      {"latents": the stored latents (packed words or FP32), "labels": int32 labels, "bookkeeping": the filled
      flags and counters, "total": their sum}.
    """
    size = {k: math.prod(a.shape) * np.dtype(a.dtype).itemsize for k, a in state._asdict().items()}
    out = {"latents": size.pop("latents"), "labels": size.pop("labels"), "bookkeeping": sum(size.values())}
    return {**out, "total": sum(out.values())}


def masked_counts(index, valid, length: int, dtype=jnp.int32, weights=None) -> jax.Array:
    """How many entries of `index` fall in each of `length` bins, counting only the `valid` ones; jittable.

    Args:
      index: int [n], each entry's bin in [0, length) (any value where not `valid`, e.g. the -1 of an empty slot).
      valid: bool [n], the entries that count.
      length: the number of bins K (static).
      dtype: the result's dtype (int32 counts by default; float32 for CWR*'s class counts).
      weights: optional [n], what each valid entry adds instead of 1 (e.g. int32 0/1 correct predictions);
        cast to `dtype`.
    Returns:
      `dtype` [K]: per bin, the number (or the summed `weights`) of its valid entries.

    The scatter keeps every entry so that shapes stay fixed under jit/vmap (no boolean indexing): a masked entry
    goes to bin 0 (its own index may be out of range, e.g. -1) and adds 0 there.
    """
    valid = jnp.asarray(valid, bool)
    add = valid.astype(dtype) if weights is None else jnp.where(valid, weights, 0).astype(dtype)
    return jnp.zeros(length, dtype).at[jnp.where(valid, index, 0)].add(add)


def _code_bits(codec: LatentCodec, code_bits):
    """The packing's Q: codec.bits when it is a Python int; `code_bits` when codec.bits is traced."""
    if codec.bits is None:
        if code_bits is not None:
            raise ValueError(f"code_bits applies to quantized latents only (codec.bits is None), got {code_bits!r}")
        return None
    static = isinstance(codec.bits, (int, np.integer)) and not isinstance(codec.bits, bool)
    if code_bits is None:
        if not static:
            raise ValueError("codec.bits is traced: code_bits (the largest Q_LR it takes, 1..16) must be given")
        return int(codec.bits)
    if isinstance(code_bits, bool) or not isinstance(code_bits, int) or code_bits not in PACK_BITS:
        raise ValueError(f"code_bits must be an integer in 1..16, got {code_bits!r}")
    if static and code_bits < codec.bits:
        raise ValueError(f"code_bits must be >= codec.bits ({codec.bits}), got {code_bits}")
    return code_bits


def _check(size, latent_shape, policy, num_classes):
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"replay.size must be an integer >= 0, got {size!r}")
    if policy not in POLICIES:
        raise ValueError(f"replay.policy must be one of {list(POLICIES)}, got {policy!r}")
    if not latent_shape or any((not isinstance(d, int)) or d < 1 for d in latent_shape):
        raise ValueError(f"latent_shape must be a tuple of positive ints, got {latent_shape!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


def make_replay_buffer(
    size: int, latent_shape: Sequence[int], codec: LatentCodec, policy: str = "ar1", num_classes: int = 50,
    code_bits: int | None = None,
) -> ReplayBuffer:
    """Build a replay buffer of `size` latents of `latent_shape`, encoded with `codec` and bit-packed.

    Args:
      size: N_LR (0 gives a buffer that never stores anything: the no-replay baseline).
      latent_shape: shape of one latent, e.g. (8, 8, 512) at l=19.
      codec: storage codec (`clq.quant.make_latent_codec`).
      policy: one of `POLICIES`.
      num_classes: number of labels (for per-class counters).
      code_bits: bits per packed code; None: codec.bits. Only a codec whose bits are traced (the vectorized sweep,
        one program for several Q_LR) needs it: its largest Q_LR, so that every member's codes fit.
    """
    latent_shape = tuple(int(d) for d in latent_shape)
    _check(size, latent_shape, policy, num_classes)
    code_bits = _code_bits(codec, code_bits)
    n_slots = size
    elements = math.prod(latent_shape)
    if code_bits is None:
        stored_shape, stored_dtype = latent_shape, jnp.float32
    else:
        stored_shape, stored_dtype = (packed_words(elements, code_bits),), jnp.uint32

    def store(latents):
        """float32 [n, *latent_shape] -> the stored form [n, *stored_shape]."""
        codes = codec.encode(latents)
        return codes if code_bits is None else pack(codes.reshape(codes.shape[0], elements), code_bits)

    def load(stored):
        """The stored form [k, *stored_shape] -> float32 [k, *latent_shape]."""
        if code_bits is None:
            return codec.decode(stored)
        return codec.decode(unpack(stored, code_bits, elements)).reshape(stored.shape[0], *latent_shape)

    def init() -> BufferState:
        return BufferState(
            latents=jnp.zeros((n_slots, *stored_shape), stored_dtype),
            labels=jnp.full((n_slots,), -1, jnp.int32),
            filled=jnp.zeros((n_slots,), bool),
            seen=jnp.zeros((), jnp.int32),
            events=jnp.zeros((), jnp.int32),
            class_seen=jnp.zeros((num_classes,), jnp.int32),
        )

    def _bookkeeping(state: BufferState, labels, valid) -> BufferState:
        per_class = masked_counts(labels, valid, num_classes)
        return state._replace(
            seen=state.seen + jnp.sum(valid, dtype=jnp.int32),
            events=state.events + 1,
            class_seen=state.class_seen + per_class,
        )

    def _add_ar1(state: BufferState, codes, labels, valid, key) -> BufferState:
        n = codes.shape[0]
        k_item, k_slot = jax.random.split(key)
        n_new = jnp.sum(valid, dtype=jnp.int32)
        # The rule assumes event 0 fills the buffer; if it did not, empty slots are filled first as well.
        n_empty = n_slots - jnp.sum(state.filled, dtype=jnp.int32)
        h = jnp.minimum(jnp.maximum(n_slots // (state.events + 1), n_empty), n_new)
        # Random valid items first; random slots with empty ones first.
        item_order = jnp.argsort(jnp.where(valid, jax.random.uniform(k_item, (n,)), 2.0))
        slot_order = jnp.argsort(jnp.where(state.filled, 1.0, 0.0) + jax.random.uniform(k_slot, (n_slots,)))
        k = min(n, n_slots)
        items, slots = item_order[:k], slot_order[:k]
        write = jnp.arange(k) < h
        wshape = (k,) + (1,) * len(stored_shape)
        lat = jnp.where(write.reshape(wshape), codes[items], state.latents[slots])
        lab = jnp.where(write, labels[items], state.labels[slots])
        fil = write | state.filled[slots]
        return state._replace(
            latents=state.latents.at[slots].set(lat),
            labels=state.labels.at[slots].set(lab),
            filled=state.filled.at[slots].set(fil),
        )

    def _add_sequential(state: BufferState, codes, labels, valid, key) -> BufferState:
        """Reservoir and class-balanced reservoir: one latent at a time (lax.scan)."""
        keys = jax.random.split(key, codes.shape[0])

        def step(carry, inp):
            st, seen, class_seen = carry
            x, y, v, k = inp
            k1, k2, k3 = jax.random.split(k, 3)
            seen = seen + v.astype(jnp.int32)
            class_seen = class_seen.at[y].add(v.astype(jnp.int32))
            n_filled = jnp.sum(st.filled, dtype=jnp.int32)
            full = n_filled >= n_slots
            first_empty = jnp.argmin(st.filled)  # index of the first False
            if policy == "reservoir":
                j = jax.random.randint(k1, (), 0, jnp.maximum(seen, 1))
                slot = jnp.where(full, j, first_empty)
                do = v & (~full | (j < n_slots))
            else:
                counts = masked_counts(st.labels, st.filled, num_classes)
                largest = jnp.max(counts)
                own_is_largest = counts[y] >= largest
                # Random victim class among the largest ones (random tie-break).
                victim_cls = jnp.argmax(jnp.where(counts == largest, jax.random.uniform(k1, (num_classes,)), -1.0))
                cls = jnp.where(own_is_largest, y, victim_cls)
                u = jax.random.uniform(k2, (n_slots,))
                victim_slot = jnp.argmax(jnp.where(st.filled & (st.labels == cls), u, -1.0))
                keep_prob = counts[y] / jnp.maximum(class_seen[y], 1)
                replace_own = jax.random.uniform(k3) < keep_prob
                slot = jnp.where(full, victim_slot, first_empty)
                do = v & (~full | ~own_is_largest | replace_own)
            slot = jnp.clip(slot, 0, n_slots - 1)
            st = st._replace(
                latents=st.latents.at[slot].set(jnp.where(do, x, st.latents[slot])),
                labels=st.labels.at[slot].set(jnp.where(do, y, st.labels[slot])),
                filled=st.filled.at[slot].set(do | st.filled[slot]),
            )
            return (st, seen, class_seen), None

        (st, _, _), _ = jax.lax.scan(step, (state, state.seen, state.class_seen), (codes, labels, valid, keys))
        return st

    def add(state: BufferState, latents, labels, valid, key) -> BufferState:
        labels = labels.astype(jnp.int32)
        valid = valid.astype(bool)
        if n_slots > 0:
            fn = _add_ar1 if policy == "ar1" else _add_sequential
            state = fn(state, store(latents), labels, valid, key)
        return _bookkeeping(state, labels, valid)

    def read(state: BufferState, slots):
        return load(state.latents[slots]), state.labels[slots]

    def sample(state: BufferState, key, batch: int):
        logits = jnp.where(state.filled, 0.0, -jnp.inf)
        slots = jax.random.categorical(key, logits, shape=(batch,))
        return read(state, slots)

    def order(state: BufferState, key):
        return jnp.argsort(jnp.where(state.filled, 0.0, 1.0) + jax.random.uniform(key, (n_slots,)) * 0.5)

    latent_bytes = n_slots * math.prod(stored_shape) * np.dtype(stored_dtype).itemsize
    def with_scale(scale) -> ReplayBuffer:
        return make_replay_buffer(size, latent_shape, codec._replace(scale=scale), policy, num_classes, code_bits)

    return ReplayBuffer(init, add, sample, read, order, size, latent_shape, codec, policy, code_bits, latent_bytes,
                        with_scale)
