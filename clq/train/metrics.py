"""Continual-learning metrics over the accuracy matrix (plain NumPy)."""

from __future__ import annotations

import numpy as np

__all__ = ["forgetting", "average_accuracy"]


def forgetting(acc_matrix: np.ndarray, seen: np.ndarray) -> float:
    """Mean forgetting over groups (classes or sessions) seen before the last event.

    forgetting_g = max_{t < T} acc[t, g] - acc[T, g], averaged over groups g that were seen before the last
    event T (Chaudhry et al. 2018).

    Args:
      acc_matrix: float [E, G], accuracy of each group after each event (NaN where undefined).
      seen: bool [E, G], group g had been trained on by event t.
    """
    acc_matrix = np.asarray(acc_matrix, np.float64)
    if acc_matrix.shape[0] < 2:
        return 0.0
    past = np.where(seen[:-1], acc_matrix[:-1], -np.inf)
    best = past.max(axis=0)
    mask = np.isfinite(best) & np.isfinite(acc_matrix[-1])
    if not mask.any():
        return 0.0
    return float(np.mean(best[mask] - acc_matrix[-1][mask]))


def average_accuracy(accuracy_per_event) -> float:
    """Mean of the accuracy after each event (area under the accuracy curve, normalised)."""
    return float(np.mean(accuracy_per_event)) if len(accuracy_per_event) else 0.0
