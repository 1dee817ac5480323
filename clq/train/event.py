"""Adaptive-stage training: optimizer, mini-batch composition and one compiled learning event.

A learning event trains the adaptive stage (layers l+1..28) for `epochs` epochs on the event's new latents
mixed with latent replays (paper.md §3):

    new per mini-batch  a = round(B * n_new / (n_new + N_LR))     (300 new, 1500 LRs, B=128 -> 21)
    replays per batch   b = B - a                                  (-> 107)
    iterations / epoch  ceil(n_new / a)                            (-> 15)

Each epoch visits the new latents in a fresh random order and walks through the buffer's filled slots in
a fresh random order (wrapping around when the buffer holds fewer than b * iterations latents), so that new
data and replays are each seen about once per epoch. The whole event (epochs x iterations SGD steps) is one
`lax.scan` (`make_event_fn`, pure); the learner (`clq.learn`) puts it into its step, which a run jits once per
(n_max, a, b, iterations, epochs) with its whole state donated and a sweep vmaps. `make_learning_event` jits
the event alone (the joint upper bound, benchmarks).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from clq.minibatch import Composition, minibatch_composition  # noqa: F401 (re-exported: the training API)
from clq.model.specs import LayerSpec
from clq.replay.buffer import BufferState, ReplayBuffer
from clq.train.norm import AdaptiveNorm, make_adaptive_norm

__all__ = [
    "all_finite",
    "Composition",
    "minibatch_composition",
    "make_optimizer",
    "set_learning_rate",
    "cross_entropy",
    "make_learning_event",
    "make_event_fn",
    "EventMetrics",
]


def all_finite(tree) -> jax.Array:
    """bool (): every floating leaf of `tree` is finite. One reduction, traceable: a run checks a learning
    event's state with one jitted call (one host sync), a vectorized group inside its program."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _sgd(learning_rate, momentum, weight_decay):
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def make_optimizer(lr: float, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay (ar1-pytorch); the learning rate is a traced hyper-parameter
    so that changing it between events does not recompile."""
    return optax.inject_hyperparams(_sgd)(learning_rate=lr, momentum=momentum, weight_decay=weight_decay)


def set_learning_rate(opt_state, lr):
    """Return `opt_state` with its injected learning rate replaced (dtype preserved)."""
    hp = dict(opt_state.hyperparams)
    hp["learning_rate"] = jnp.asarray(lr, hp["learning_rate"].dtype)
    return opt_state._replace(hyperparams=hp)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy. logits float32 [B, K], labels int32 [B]."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


class EventMetrics(NamedTuple):
    """Per-step training metrics of one event: loss float32 [steps], accuracy float32 [steps], active bool
    [steps] (False for the skipped steps of a masked event, `make_event_fn(masked=True)`)."""

    loss: jax.Array
    accuracy: jax.Array
    active: jax.Array

    def last_index(self) -> jax.Array:
        """int32 (): the index of the event's last step that ran."""
        return jnp.max(jnp.where(self.active, jnp.arange(self.loss.shape[0]), 0))


def make_event_fn(
    adaptive_specs: Sequence[LayerSpec],
    optimizer: optax.GradientTransformation,
    buffer: ReplayBuffer,
    composition: Composition,
    epochs: int,
    norm: AdaptiveNorm | None = None,
    masked: bool = False,
) -> Callable:
    """The learning event as a pure, un-jitted function.

    The learner's step (`clq.learn.step`) calls it, under `jax.jit` in a run and under a `vmap` over seeds and
    bit-widths in `clq.train.vectorized` (with a `buffer` whose codec scale is a traced value);
    `make_learning_event` jits it alone.

    Args:
      norm: how the adaptive stage normalizes (`clq.train.norm`); None = 'fold' (BN folded into `params`).
      masked: an event whose new latents need fewer iterations per epoch, ``ceil(n_new / a)``, than
        `composition` has runs exactly those (the other steps leave the state unchanged), so events of one
        (new, replays) split but different sizes share one program (CORe50's 293-300 images: 14 or 15
        iterations). Unmasked, every step of `composition` runs.
    Returns:
      ``train_event(params, opt_state, new_latents, new_labels, n_new, buffer_state, key, norm_state=()) ->
      (params, opt_state, EventMetrics, norm_state)`` where new_latents is float32 [n_max, *latent_shape] (rows
      n_new.. are padding), new_labels int32 [n_max], n_new int32 (); norm_state is the normalization's
      running statistics (() for 'fold').
    """
    if epochs < 1:
        raise ValueError(f"train.epochs must be >= 1, got {epochs}")
    a, b, iters = composition
    use_replay = buffer.size > 0 and b > 0
    norm = norm if norm is not None else make_adaptive_norm("fold", adaptive_specs)

    def loss_fn(params, norm_state, x, y):
        logits, norm_state = norm.apply(params, norm_state, x)
        logits = logits.reshape(x.shape[0], -1)
        return cross_entropy(logits, y), (jnp.mean(jnp.argmax(logits, -1) == y), norm_state)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_event(params, opt_state, new_latents, new_labels, n_new, buffer_state: BufferState, key, norm_state=()):
        n_max = new_latents.shape[0]
        n_new = jnp.maximum(n_new, 1)
        k_new, k_rep = jax.random.split(key)
        # Per-epoch visiting orders: valid new rows first in random order; filled slots first in random order.
        new_orders = jax.vmap(
            lambda k: jnp.argsort(jnp.where(jnp.arange(n_max) < n_new, jax.random.uniform(k, (n_max,)), 2.0))
        )(jax.random.split(k_new, epochs))
        if use_replay:
            rep_orders = jax.vmap(lambda k: buffer.order(buffer_state, k))(jax.random.split(k_rep, epochs))
            n_filled = jnp.maximum(jnp.sum(buffer_state.filled, dtype=jnp.int32), 1)

        # Iterations per epoch this event needs (static when unmasked: the composition was built for it).
        iters_event = jnp.minimum((n_new + a - 1) // a, iters) if masked else iters

        def step(carry, t):
            params, opt_state, norm_state = carry
            epoch, it = t // iters, t % iters
            rows = new_orders[epoch][(it * a + jnp.arange(a)) % n_new]
            x, y = new_latents[rows], new_labels[rows]
            if use_replay:
                slots = rep_orders[epoch][(it * b + jnp.arange(b)) % n_filled]
                xr, yr = buffer.read(buffer_state, slots)
                x, y = jnp.concatenate([x, xr]), jnp.concatenate([y, yr])
            (loss, (acc, norm_state)), grads = grad_fn(params, norm_state, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            new = (params, opt_state, norm_state)
            active = it < iters_event
            if masked:
                new = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, carry)
            return new, (loss, acc, jnp.asarray(active))

        (params, opt_state, norm_state), (loss, acc, active) = jax.lax.scan(
            step, (params, opt_state, norm_state), jnp.arange(epochs * iters))
        return params, opt_state, EventMetrics(loss, acc, active), norm_state

    return train_event


def make_learning_event(*args, **kwargs) -> Callable:
    """`make_event_fn(*args, **kwargs)`'s learning event (unmasked) under one `jax.jit`, with params, opt_state and
    norm_state donated."""
    return jax.jit(make_event_fn(*args, **kwargs), donate_argnums=(0, 1, 7))
