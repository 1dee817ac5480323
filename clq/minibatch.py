"""The mini-batch rule of a learning event (paper.md §3), in plain Python: the training loop, the config checks and
the cost model (which must not load JAX for it) share this one copy."""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["Composition", "minibatch_composition"]


class Composition(NamedTuple):
    """Static mini-batch composition of a learning event."""

    new_per_batch: int
    replays_per_batch: int
    iterations_per_epoch: int


def minibatch_composition(n_new: int, buffer_size: int, batch_size: int) -> Composition:
    """The paper's rule (paper.md §3): a mini-batch of B holds new = round(B * n_new / (n_new + N_LR)) new samples
    (at most n_new: never one twice) and B - new replays; all min(B, n_new) are new when N_LR = 0.

    The one copy of the rule: the learning events use it, `clq.config` checks a configuration with it, and the
    cost model (`clq.cost.event`) counts its samples with it.

    Raises:
      ValueError naming the fields when the rule leaves no new sample in a mini-batch.
    """
    if n_new < 1:
        raise ValueError(f"a learning event needs at least one new image, got n_new={n_new}")
    if batch_size < 1:
        raise ValueError(f"train.batch_size must be >= 1, got {batch_size}")
    if buffer_size == 0:
        new, replays = min(batch_size, n_new), 0
    else:
        # Python's round() is banker's rounding; the paper's figures use round-half-up.
        new = math.floor(batch_size * n_new / (n_new + buffer_size) + 0.5)
        if new < 1:
            raise ValueError(
                f"train.batch_size={batch_size} with replay.size={buffer_size} and {n_new} new images per "
                f"learning event (data.images_per_event) leaves {new} new samples per mini-batch; it must be "
                ">= 1 (raise train.batch_size or lower replay.size)")
        new = min(new, n_new)
        replays = batch_size - new
    return Composition(new, replays, math.ceil(n_new / new))
