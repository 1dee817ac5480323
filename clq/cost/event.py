"""One learning event: how many samples the adaptive stage sees (paper.md §3).

A learning event brings ``n_new`` new images. Each mini-batch of ``B`` samples holds

    new_per_batch     = round(B * n_new / (n_new + N_LR))      (at most n_new; < 1 is refused)
    replays_per_batch = B - new_per_batch                       (0 when N_LR = 0: min(B, n_new) are new)
    iterations/epoch  = ceil(n_new / new_per_batch)

(`clq.train.event.minibatch_composition`, the rule the learning events use; the cost model calls it)

so that every new image is used once per epoch (300 new + 1500 LRs, B = 128 -> 21 new + 107 replays, 15
iterations). The last iteration of an epoch holds the leftover new images (300 - 14 * 21 = 6) plus the usual
107 replays; the cost model counts exactly those samples (an MCU does not pad), so an epoch is
``n_new + iterations * replays_per_batch`` samples (1905 here) and the event ``epochs`` times that.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["LearningEvent", "learning_event", "event_arrays"]


class LearningEvent(NamedTuple):
    """Sample counts of one learning event (all plain ints).

    Attributes:
      new_images: new images of the event (n_new).
      buffer_size: latent replays in the buffer (N_LR).
      epochs: passes over the new images.
      batch_size: samples per mini-batch (B).
      new_per_batch: new samples in a mini-batch.
      replays_per_batch: replays in a mini-batch.
      iterations_per_epoch: mini-batches (optimizer steps) per epoch.
      iterations: optimizer steps per event (epochs x iterations_per_epoch).
      samples: samples through the adaptive stage per event (forward + backward each).
      replays_drawn: replay samples per event (replays are drawn with replacement across mini-batches).
    """

    new_images: int
    buffer_size: int
    epochs: int
    batch_size: int
    new_per_batch: int
    replays_per_batch: int
    iterations_per_epoch: int
    iterations: int
    samples: int
    replays_drawn: int


def event_arrays(new_images, buffer_size, epochs, batch_size) -> dict[str, np.ndarray]:
    """Vectorized `learning_event`: every argument broadcasts; returns float64 arrays keyed like the fields."""
    from clq.minibatch import minibatch_composition

    n, nlr, e, b = (np.asarray(v, dtype=np.float64) for v in (new_images, buffer_size, epochs, batch_size))
    # The rule once per distinct (n_new, N_LR, B): a grid has few of them.
    shape = np.broadcast_shapes(n.shape, nlr.shape, b.shape)
    (un, i_n), (unlr, i_nlr), (ub, i_b) = (np.unique(np.broadcast_to(v, shape).ravel(), return_inverse=True)
                                           for v in (n, nlr, b))
    dims = (len(un), len(unlr), len(ub))
    codes, where = np.unique(np.ravel_multi_index((i_n.ravel(), i_nlr.ravel(), i_b.ravel()), dims),
                             return_inverse=True)
    comps = np.array([minibatch_composition(int(un[i]), int(unlr[j]), int(ub[k]))
                      for i, j, k in zip(*np.unravel_index(codes, dims))], np.float64).reshape(-1, 3)
    new_pb, rep_pb, iters_pe = (comps[where.ravel(), c].reshape(shape) for c in range(3))
    samples = e * (n + iters_pe * rep_pb)
    return {
        "new_images": n,
        "buffer_size": nlr,
        "epochs": e,
        "batch_size": b,
        "new_per_batch": new_pb,
        "replays_per_batch": rep_pb,
        "iterations_per_epoch": iters_pe,
        "iterations": e * iters_pe,
        "samples": samples,
        "replays_drawn": e * iters_pe * rep_pb,
    }


def learning_event(new_images: int, buffer_size: int, epochs: int, batch_size: int) -> LearningEvent:
    """Mini-batch composition and sample counts of one learning event (see the module docstring).

    Args:
      new_images: n_new >= 1.
      buffer_size: N_LR >= 0.
      epochs: >= 1.
      batch_size: B >= 1.
    """
    from clq.cost.validate import check_event

    check_event(new_images, buffer_size, epochs, batch_size)
    a = event_arrays(new_images, buffer_size, epochs, batch_size)
    return LearningEvent(**{k: int(v) for k, v in a.items()})
