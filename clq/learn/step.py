"""The learner: ``init`` and ``step(state, event, hyper) -> (state, metrics)``, pure functions of arrays.

One learning event (paper.md §3) is, in order:

1. the strategy's ``before`` (e.g. CWR*'s reset of the classifier, a fresh optimizer state);
2. the learning rate set from ``hyper.lr``;
3. training: `clq.train.event.make_event_fn` (epochs x iterations of SGD on new latents mixed with replays);
4. the strategy's ``after`` (e.g. CWR*'s consolidation);
5. the buffer takes the event's latents (`clq.replay`).

A single run jits `step` with the state donated (`Learner.jit_step`); a sweep scans and vmaps the same
function. The mini-batch composition depends on the event's size, so it is static: `Learner.step(composition)`
returns the step for one composition (cached).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from clq.learn.state import Event, Hyper, LearnerState
from clq.learn.strategies import Strategy
from clq.model.specs import LayerSpec
from clq.replay.buffer import ReplayBuffer
from clq.train.event import Composition, EventMetrics, make_event_fn, set_learning_rate
from clq.train.norm import AdaptiveNorm

__all__ = ["Learner", "make_learner"]


class Learner(NamedTuple):
    """init(params, norm_state, event0, hyper) -> LearnerState: the state after event 0 (strategy applied to
    event 0's data, buffer seeded with its latents).
    step(composition, masked=False) -> step(state, event, hyper) -> (state, EventMetrics), pure (`masked`: events
    needing fewer iterations per epoch than `composition` skip the rest, `clq.train.event.make_event_fn`).
    jit_step(composition, masked=False) -> the same step under `jax.jit` with the state donated."""

    init: Callable
    step: Callable
    jit_step: Callable
    buffer: ReplayBuffer
    strategy: Strategy


def make_learner(
    adaptive_specs: Sequence[LayerSpec],
    optimizer: optax.GradientTransformation,
    buffer: ReplayBuffer,
    norm: AdaptiveNorm,
    strategy: Strategy,
    epochs: int,
) -> Learner:
    """Bind the static parts of the learning phase.

    Args:
      adaptive_specs: layers l+1..28.
      optimizer: `clq.train.make_optimizer` (learning rate injected, set per event from `Hyper.lr`).
      buffer: `clq.replay.make_replay_buffer`.
      norm: the adaptive stage's normalization (`clq.train.norm.make_adaptive_norm`).
      strategy: `clq.learn.strategies.chain(...)` of pieces.
      epochs: epochs per learning event.
    """

    def scaled(hyper: Hyper) -> ReplayBuffer:
        """The buffer with `hyper.lr_scale` as its codec's scale, when given."""
        return buffer if hyper.lr_scale is None else buffer.with_scale(hyper.lr_scale)

    def _add(state: LearnerState, event: Event, hyper: Hyper) -> LearnerState:
        valid = jnp.arange(event.labels.shape[0]) < event.n_new
        return state._replace(buffer=scaled(hyper).add(state.buffer, event.latents, event.labels, valid,
                                                       jax.random.fold_in(hyper.k_buffer, event.index)))

    def init(params, norm_state, event0: Event, hyper: Hyper) -> LearnerState:
        state = LearnerState(params, optimizer.init(params), buffer.init(), norm_state, strategy.init(params))
        state, s = strategy.after(state, state.strategy, event0)
        return _add(state._replace(strategy=s), event0, hyper)

    @functools.lru_cache(maxsize=None)
    def step(composition: Composition, masked: bool = False):
        def learning_event(state: LearnerState, event: Event, hyper: Hyper):
            train_event = make_event_fn(adaptive_specs, optimizer, scaled(hyper), composition, epochs, norm, masked)
            state, s = strategy.before(state, state.strategy, event)
            opt_state = set_learning_rate(state.opt_state, hyper.lr)
            params, opt_state, metrics, norm_state = train_event(
                state.params, opt_state, event.latents, event.labels, event.n_new, state.buffer,
                jax.random.fold_in(hyper.k_train, event.index), state.norm)
            state = state._replace(params=params, opt_state=opt_state, norm=norm_state)
            state, s = strategy.after(state, s, event)
            return _add(state._replace(strategy=s), event, hyper), metrics

        return learning_event

    @functools.lru_cache(maxsize=None)
    def jit_step(composition: Composition, masked: bool = False):
        return jax.jit(step(composition, masked), donate_argnums=0)

    return Learner(init, step, jit_step, buffer, strategy)
