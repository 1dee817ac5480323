"""CWR*: consolidation of the output layer (the "*" of AR1*; Maltoni & Lomonaco 2019, ar1-pytorch).

The classifier keeps, per class, a consolidated weight vector (its weight column and bias). Around each
learning event:

1. `reset`: every class's output weights are zeroed, then the classes present in the event (new data and
   replays) get their consolidated weights back, so training only competes among the present classes;
2. training as usual;
3. `consolidate`: for each present class c, with the event's trained vector w_c and the mean over present
   classes' vectors avg: ``new = w_c - avg``; a class seen before is averaged with weight
   ``sqrt(past_c / cur_c)``: ``cons_c = (cons_c * sqrt(past_c / cur_c) + new) / (sqrt(past_c / cur_c) + 1)``,
   a new class takes ``new``; then ``past_c += cur_c``;
4. `apply`: the consolidated vectors are written into the classifier for evaluation (unseen classes stay 0).

Pure `jax.numpy` over a [K, D+1] matrix with class masks (no host round trip), so that it runs inside the
learner's compiled step (`clq.learn`) and under a sweep's vmap.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from clq.replay.buffer import masked_counts

__all__ = ["CWRState", "cwr_init", "class_counts", "cwr_reset", "cwr_consolidate", "cwr_apply"]


class CWRState(NamedTuple):
    """consolidated: float32 [K, D(+1)] (per class its weight column, then its bias if the classifier has one);
    seen: bool [K]; past: float32 [K]."""

    consolidated: jax.Array
    seen: jax.Array
    past: jax.Array


def _rows(fc: dict) -> jax.Array:
    cols = [jnp.asarray(fc["w"]).T] + ([jnp.asarray(fc["b"])[:, None]] if "b" in fc else [])
    return jnp.concatenate(cols, axis=1)


def _from_rows(rows: jax.Array, fc: dict) -> dict:
    """Rows back into the classifier's form (with a bias column iff `fc` has a bias)."""
    rows = rows.astype(jnp.float32)
    if "b" not in fc:
        return {"w": rows.T}
    return {"w": rows[:, :-1].T, "b": rows[:, -1]}


def cwr_init(fc: dict) -> CWRState:
    """Empty CWR* state for a classifier {'w': [D, K][, 'b': [K]]} (shapes only are read).

    Without a bias (AR1's classifier) the consolidated rows are the weight columns alone, so the mean over
    present classes in `cwr_consolidate` is over weights only, as in Avalanche's CWRStarPlugin."""
    d, k = fc["w"].shape
    d += "b" in fc
    return CWRState(jnp.zeros((k, d), jnp.float32), jnp.zeros(k, bool), jnp.zeros(k, jnp.float32))


def class_counts(labels: jax.Array, valid: jax.Array, num_classes: int) -> jax.Array:
    """float32 [K]: how many of `labels` (int32 [n]) with `valid` (bool [n]) fall in each class."""
    return masked_counts(labels, valid, num_classes, jnp.float32)


def cwr_reset(fc: dict, state: CWRState, present: jax.Array) -> dict:
    """Classifier for training on an event whose data (new + replays) holds the classes `present` (bool [K])."""
    keep = jnp.asarray(present, bool) & state.seen
    return _from_rows(jnp.where(keep[:, None], state.consolidated, 0.0), fc)


def cwr_consolidate(fc: dict, state: CWRState, present: jax.Array, counts: jax.Array) -> CWRState:
    """Fold the trained classifier into the consolidated weights.

    Args:
      present: bool [K], the classes in the event's data; counts: float32 [K], samples per class in it (cur_j).
    """
    rows = _rows(fc)
    present = jnp.asarray(present, bool)
    counts = jnp.asarray(counts, jnp.float32)
    # ar1-pytorch: one scalar average over every weight of the present classes.
    avg = jnp.sum(jnp.where(present[:, None], rows, 0.0)) / (jnp.maximum(jnp.sum(present), 1) * rows.shape[1])
    new = rows - avg
    wp = jnp.sqrt(state.past / jnp.maximum(counts, 1.0))[:, None]
    merged = jnp.where(state.seen[:, None], (state.consolidated * wp + new) / (wp + 1.0), new)
    cons = jnp.where(present[:, None], merged, state.consolidated)
    return CWRState(cons.astype(jnp.float32), state.seen | present, (state.past + counts).astype(jnp.float32))


def cwr_apply(fc: dict, state: CWRState) -> dict:
    """Classifier with the consolidated weights (classes never seen keep zeros)."""
    return _from_rows(jnp.where(state.seen[:, None], state.consolidated, 0.0), fc)
