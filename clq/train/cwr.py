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

Plain NumPy on the host: it runs once per event on a [K, D+1] matrix, never per sample.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = ["CWRState", "cwr_init", "cwr_reset", "cwr_consolidate", "cwr_apply"]


class CWRState(NamedTuple):
    """consolidated: float32 [K, D(+1)] (per class its weight column, then its bias if the classifier has one);
    seen: bool [K]; past: float32 [K]."""

    consolidated: np.ndarray
    seen: np.ndarray
    past: np.ndarray


def _rows(fc: dict) -> np.ndarray:
    cols = [np.asarray(fc["w"]).T] + ([np.asarray(fc["b"])[:, None]] if "b" in fc else [])
    return np.concatenate(cols, axis=1)


def _from_rows(rows: np.ndarray, fc: dict) -> dict:
    """Rows back into the classifier's form (with a bias column iff `fc` has a bias)."""
    if "b" not in fc:
        return {"w": jnp.asarray(rows.T, jnp.float32)}
    return {"w": jnp.asarray(rows[:, :-1].T, jnp.float32), "b": jnp.asarray(rows[:, -1], jnp.float32)}


def cwr_init(fc: dict) -> CWRState:
    """Empty CWR* state for a classifier {'w': [D, K][, 'b': [K]]} (shapes only are read).

    Without a bias (AR1's classifier) the consolidated rows are the weight columns alone, so the mean over
    present classes in `cwr_consolidate` is over weights only, as in Avalanche's CWRStarPlugin."""
    d, k = fc["w"].shape
    d += "b" in fc
    return CWRState(jnp.zeros((k, d), jnp.float32), jnp.zeros(k, bool), jnp.zeros(k, jnp.float32))


def cwr_reset(fc: dict, state: CWRState, present: np.ndarray) -> dict:
    """Classifier for training on an event whose data (new + replays) holds the classes `present`."""
    cons, seen = np.asarray(state.consolidated), np.asarray(state.seen)
    rows = np.zeros_like(cons)
    keep = np.zeros_like(seen)
    keep[present] = True
    keep &= seen
    rows[keep] = cons[keep]
    return _from_rows(rows, fc)


def cwr_consolidate(fc: dict, state: CWRState, present: np.ndarray, counts: np.ndarray) -> CWRState:
    """Fold the trained classifier into the consolidated weights.

    Args:
      present: int [P], classes in the event's data; counts: float [K], samples per class in it (cur_j).
    """
    rows = _rows(fc)
    cons, seen, past = (np.array(a) for a in state)
    avg = rows[present].mean()  # ar1-pytorch: one scalar average over the present classes' weights
    for c in present:
        new = rows[c] - avg
        if seen[c]:
            wp = np.sqrt(past[c] / max(counts[c], 1.0))
            cons[c] = (cons[c] * wp + new) / (wp + 1.0)
        else:
            cons[c] = new
            seen[c] = True
    return CWRState(cons.astype(np.float32), seen, (past + counts).astype(np.float32))


def cwr_apply(fc: dict, state: CWRState) -> dict:
    """Classifier with the consolidated weights (classes never seen keep zeros)."""
    return _from_rows(np.where(np.asarray(state.seen)[:, None], np.asarray(state.consolidated), 0.0).astype(np.float32),
                      fc)
