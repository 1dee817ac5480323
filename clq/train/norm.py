"""How the network normalizes while it learns: the choices of event 0 and of the adaptive stage, as small pieces.

Three ways to treat batch norm above the latent layer in the learning events (`train.adaptive_norm`):

* ``fold``: after event 0 the statistics are frozen and BN is folded into the weights (``w' = w g/sigma``,
  ``b' = beta - mu g/sigma``). It is what an integer-only device without BN support runs, and what clq did
  before this choice existed.
* ``bn``: batch norm in training mode (the statistics of each mini-batch of new latents + replays), running
  statistics updated with `momentum` for evaluation. Ravaglia et al. replace AR1's Batch Renormalization with
  BN and freeze the statistics of the frozen stage only (paper.md §3).
* ``brn``: Batch Renormalization as AR1 has it (Avalanche's BatchRenorm2D after event 0: momentum 5e-5,
  r_max 1.25, d_max 0.5).

Event 0 (`train.first_event.norm`):

* ``batch``: every layer normalizes with batch statistics; afterwards the population statistics of the first
  experience replace the running ones (the from-scratch default).
* ``ar1``: as Avalanche's AR1 trains its first experience: layers 0..l keep the pretrained statistics (BN in
  inference mode: the weights learn, the statistics do not), layers above run Batch Renormalization with
  momentum 0.01 and r_max, d_max growing from 1, 0 by 4.1e-5 per sample up to 1.25, 0.5.

In every mode the evaluation runs the folded network (`AdaptiveNorm.fold`), so the predictor is one function.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax.numpy as jnp

from clq.model.forward import fold_batch_norm, forward, forward_norm
from clq.model.specs import LayerSpec

__all__ = [
    "ADAPTIVE_NORMS",
    "FIRST_EVENT_NORMS",
    "AdaptiveNorm",
    "make_adaptive_norm",
    "RenormSchedule",
    "ar1_first_event_schedule",
]

ADAPTIVE_NORMS = ("fold", "bn", "brn")
FIRST_EVENT_NORMS = ("batch", "ar1")


class RenormSchedule(NamedTuple):
    """Batch-renormalization limits over the steps of one phase: r_max, d_max = min(start + step * per_step, max)."""

    momentum: float
    r_max: float
    d_max: float
    r_start: float = 1.0
    d_start: float = 0.0
    per_step: float = 0.0

    def limits(self, step):
        """(r_max, d_max) at `step` (int32 scalar, traced or not)."""
        if self.per_step == 0.0:
            return self.r_max, self.d_max
        t = jnp.asarray(step, jnp.float32) * self.per_step
        return jnp.minimum(self.r_start + t, self.r_max), jnp.minimum(self.d_start + t, self.d_max)


def ar1_first_event_schedule(batch_size: int) -> RenormSchedule:
    """Avalanche AR1's first experience: momentum (init_update_rate) 0.01; r_max, d_max grow by inc_step 4.1e-5 per
    sample, i.e. 4.1e-5 x batch_size per step, up to 1.25 and 0.5."""
    return RenormSchedule(momentum=0.01, r_max=1.25, d_max=0.5, per_step=4.1e-5 * batch_size)


class AdaptiveNorm(NamedTuple):
    """The adaptive stage's normalization during learning events (see the module docstring).

    init(params, stats) -> (params, norm_state): from event 0's BN form (`params` per layer {'w', 'gamma',
      'beta'} / classifier {'w'[, 'b']}; `stats` {'mean', 'var'}) to the learning events' trainable params
      and non-trainable state (() for ``fold``).
    apply(params, norm_state, x) -> (output, norm_state): the training forward of one mini-batch.
    fold(params, norm_state) -> folded params {'w', 'b'} per layer, for evaluation.
    """

    name: str
    init: Callable
    apply: Callable
    fold: Callable


def make_adaptive_norm(
    name: str, adaptive_specs: Sequence[LayerSpec], momentum: float = 5e-5, r_max: float = 1.25, d_max: float = 0.5
) -> AdaptiveNorm:
    """The `name` normalization ('fold' | 'bn' | 'brn') of the stage `adaptive_specs`.

    `momentum` updates the running statistics (bn, brn); `r_max`, `d_max` bound batch renormalization (brn; bn
    is the same with r_max = 1, d_max = 0).
    """
    specs = tuple(adaptive_specs)
    if name not in ADAPTIVE_NORMS:
        raise ValueError(f"train.adaptive_norm must be one of {list(ADAPTIVE_NORMS)}, got {name!r}")
    if name == "fold":
        return AdaptiveNorm(
            name,
            init=lambda params, stats: (fold_batch_norm(specs, params, stats), ()),
            apply=lambda params, state, x: (forward(specs, params, x, per_pixel=True), state),
            fold=lambda params, state: params,
        )
    if name == "bn":
        r_max, d_max = 1.0, 0.0
    frozen = (False,) * len(specs)
    return AdaptiveNorm(
        name,
        init=lambda params, stats: (tuple(params), tuple(stats)),
        apply=lambda params, state, x: forward_norm(specs, params, state, x, frozen, momentum, r_max, d_max),
        fold=lambda params, state: fold_batch_norm(specs, params, state),
    )
