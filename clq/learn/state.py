"""The learner's state, one learning event's data and the traced hyper-parameters (NamedTuples of arrays)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from clq.replay.buffer import BufferState

__all__ = ["LearnerState", "Event", "Hyper"]


class LearnerState(NamedTuple):
    """Everything a run's learning phase carries from one learning event to the next; a checkpoint is this.

    Fields:
      params: the adaptive stage's parameters (layers l+1..28, float32 tree).
      opt_state: the optimizer's state (optax, learning rate injected).
      buffer: the replay buffer (`clq.replay.BufferState`, packed codes).
      norm: the adaptive normalization's running statistics (`clq.train.norm`; () when folded).
      strategy: the strategies' states, one per piece (`clq.learn.strategies.chain`; () for plain QLR).
    """

    params: Any
    opt_state: Any
    buffer: BufferState
    norm: Any
    strategy: Any


class Event(NamedTuple):
    """One learning event's new data, padded to a fixed number of rows.

    Fields:
      latents: float32 [n_max, *latent_shape], decoded latents (rows n_new.. are padding).
      labels: int32 [n_max].
      n_new: int32 (), valid rows.
      index: int32 (), the event's index i in the stream (keys are ``fold_in(key, i)``).
    """

    latents: jax.Array
    labels: jax.Array
    n_new: jax.Array
    index: jax.Array


class Hyper(NamedTuple):
    """Traced hyper-parameters: the values a sweep may vary without recompiling.

    Fields:
      lr: float32 (), the learning events' learning rate.
      k_train: PRNG key of training (event i uses ``fold_in(k_train, i)``).
      k_buffer: PRNG key of buffer replacement (event i uses ``fold_in(k_buffer, i)``).
      lr_scale: float32 (), the replay codec's scale S_LR, or None to keep the buffer's own (FP32 replays).
        A single run and every member of a compiled sweep pass it here: S_LR follows event 0's network (and a
        sweep member's bit-width), and as a constant of the program it made every seed a new program to compile.
    """

    lr: jax.Array
    k_train: jax.Array
    k_buffer: jax.Array
    lr_scale: jax.Array | None = None
