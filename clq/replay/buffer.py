"""Functional latent-replay buffer: fixed-shape state, pure `init/add/sample`, jittable.

`make_replay_buffer(...)` binds the static hyper-parameters (size N, latent shape, bit-width, policy)
and returns a `ReplayBuffer` of pure functions over a `BufferState` NamedTuple, in the style of optax's
`GradientTransformation` and flashbax's buffers. Latents are stored encoded (UINT-Q_LR codes, see
`clq.quant.latent`) with their labels; `sample`/`read` decode to float32.

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

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from clq.quant.latent import LatentCodec

__all__ = ["BufferState", "ReplayBuffer", "make_replay_buffer", "POLICIES"]

POLICIES = ("ar1", "reservoir", "class_balanced")


class BufferState(NamedTuple):
    """State of a replay buffer of N slots.

    Fields:
      latents: [N, *latent_shape] codes in the codec's storage dtype (uint8/uint16/float32).
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
    size: int, latent_shape: Sequence[int], codec: LatentCodec, policy: str = "ar1", num_classes: int = 50
) -> ReplayBuffer:
    """Build a replay buffer of `size` latents of `latent_shape`, encoded with `codec`.

    Args:
      size: N_LR (0 gives a buffer that never stores anything: the no-replay baseline).
      latent_shape: shape of one latent, e.g. (8, 8, 512) at l=19.
      codec: storage codec (`clq.quant.make_latent_codec`).
      policy: one of `POLICIES`.
      num_classes: number of labels (for per-class counters).
    """
    latent_shape = tuple(int(d) for d in latent_shape)
    _check(size, latent_shape, policy, num_classes)
    n_slots = size

    def init() -> BufferState:
        return BufferState(
            latents=jnp.zeros((n_slots, *latent_shape), codec.dtype),
            labels=jnp.full((n_slots,), -1, jnp.int32),
            filled=jnp.zeros((n_slots,), bool),
            seen=jnp.zeros((), jnp.int32),
            events=jnp.zeros((), jnp.int32),
            class_seen=jnp.zeros((num_classes,), jnp.int32),
        )

    def _bookkeeping(state: BufferState, labels, valid) -> BufferState:
        per_class = jnp.zeros((num_classes,), jnp.int32).at[jnp.where(valid, labels, 0)].add(valid.astype(jnp.int32))
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
        wshape = (k,) + (1,) * len(latent_shape)
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
                counts = jnp.zeros((num_classes,), jnp.int32).at[jnp.where(st.filled, st.labels, 0)].add(
                    st.filled.astype(jnp.int32)
                )
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
            codes = codec.encode(latents)
            fn = _add_ar1 if policy == "ar1" else _add_sequential
            state = fn(state, codes, labels, valid, key)
        return _bookkeeping(state, labels, valid)

    def read(state: BufferState, slots):
        return codec.decode(state.latents[slots]), state.labels[slots]

    def sample(state: BufferState, key, batch: int):
        logits = jnp.where(state.filled, 0.0, -jnp.inf)
        slots = jax.random.categorical(key, logits, shape=(batch,))
        return read(state, slots)

    def order(state: BufferState, key):
        return jnp.argsort(jnp.where(state.filled, 0.0, 1.0) + jax.random.uniform(key, (n_slots,)) * 0.5)

    return ReplayBuffer(init, add, sample, read, order, size, latent_shape, codec, policy)
