"""Strategies as small composable pieces around a learning event (optax's ``chain``, not ``if`` branches).

A piece is a `Strategy` of pure functions over the `LearnerState`:

* ``init(params) -> piece_state``;
* ``before(state, piece_state, event) -> (state, piece_state)``: before training on the event;
* ``after(state, piece_state, event) -> (state, piece_state)``: after training, before the buffer takes the
  event's latents (so ``state.buffer`` is the buffer the event trained with).

`chain` composes pieces into one; the learner keeps their states in ``LearnerState.strategy``. Pieces:
`plain` (the paper's QLR: nothing), `cwr_star` (AR1*'s consolidation of the classifier, `clq.train.cwr`) and
`fresh_momentum` (a new optimizer state per event, as AR1 builds a new SGD per experience).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from clq.learn.state import Event, LearnerState
from clq.train.config import STRATEGIES  # `train.strategy` values: the paper's QLR, or AR1* (latent replay + CWR*)
from clq.train.cwr import class_counts, cwr_apply, cwr_consolidate, cwr_init, cwr_reset

__all__ = ["Strategy", "chain", "plain", "cwr_star", "fresh_momentum", "event_classes", "make_strategy",
           "STRATEGIES"]


class Strategy(NamedTuple):
    """init(params) -> s; before/after(state, s, event) -> (state, s)."""

    init: Callable
    before: Callable
    after: Callable


def _identity(state, s, event):
    return state, s


def plain() -> Strategy:
    """The paper's QLR: the learning event alone."""
    return Strategy(lambda params: (), _identity, _identity)


def event_classes(state: LearnerState, event: Event, num_classes: int) -> jax.Array:
    """float32 [K]: samples per class in the event's training data, new latents and the buffer's replays."""
    valid = jnp.arange(event.labels.shape[0]) < event.n_new
    return (class_counts(event.labels, valid, num_classes)
            + class_counts(state.buffer.labels, state.buffer.filled, num_classes))


def _with_head(state: LearnerState, head: dict) -> LearnerState:
    return state._replace(params=tuple(state.params[:-1]) + (head,))


def cwr_star(num_classes: int) -> Strategy:
    """CWR*: the classifier trains among the event's classes from their consolidated weights, then is folded
    back into them; evaluation sees the consolidated classifier (`clq.train.cwr`)."""

    def init(params):
        return cwr_init(params[-1])

    def before(state, s, event):
        present = event_classes(state, event, num_classes) > 0
        return _with_head(state, cwr_reset(state.params[-1], s, present)), s

    def after(state, s, event):
        counts = event_classes(state, event, num_classes)
        s = cwr_consolidate(state.params[-1], s, counts > 0, counts)
        return _with_head(state, cwr_apply(state.params[-1], s)), s

    return Strategy(init, before, after)


def fresh_momentum(optimizer_init: Callable) -> Strategy:
    """Every learning event starts from a fresh optimizer state (AR1's new SGD per experience)."""

    def before(state, s, event):
        return state._replace(opt_state=optimizer_init(state.params)), s

    return Strategy(lambda params: (), before, _identity)


def chain(*pieces: Strategy) -> Strategy:
    """One strategy running `pieces` in order (``after`` too), each with its own slot of the state tuple."""
    pieces: Sequence[Strategy] = tuple(pieces)

    def init(params):
        return tuple(p.init(params) for p in pieces)

    def run(which):
        def fn(state, s, event):
            out = []
            for p, si in zip(pieces, s):
                state, si = getattr(p, which)(state, si, event)
                out.append(si)
            return state, tuple(out)

        return fn

    return Strategy(init, run("before"), run("after"))


def make_strategy(name: str, reset_momentum: bool, optimizer_init: Callable, num_classes: int) -> Strategy:
    """The pieces a run's `train.strategy` and `train.reset_momentum` name, chained.

    Args:
      name: one of `STRATEGIES`.
      reset_momentum: prepend `fresh_momentum`.
      optimizer_init: the optimizer's ``init`` (for `fresh_momentum`).
      num_classes: K (for `cwr_star`).
    """
    if name not in STRATEGIES:
        raise ValueError(f"train.strategy must be one of {list(STRATEGIES)}, got {name!r}")
    pieces = [fresh_momentum(optimizer_init)] if reset_momentum else []
    pieces.append(cwr_star(num_classes) if name == "ar1star" else plain())
    return chain(*pieces)
