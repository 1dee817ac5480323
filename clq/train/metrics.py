"""Continual-learning metrics over the accuracy matrix (plain NumPy)."""

from __future__ import annotations

import numpy as np

__all__ = ["forgetting", "average_accuracy", "at_chance", "CHANCE_PATIENCE"]

#: Learning events in a row at chance level before a run says so.
CHANCE_PATIENCE = 3


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


def at_chance(accuracies, num_classes: int, patience: int = CHANCE_PATIENCE) -> int | None:
    """The learning event from which accuracy has stayed at chance level for the last `patience` events, or None.

    "At chance" is below 1.5 / num_classes: a network that has collapsed onto one class scores 1 / num_classes on a
    balanced test set. Event 0 is not counted (it has seen only some classes).

    Args:
      accuracies: float, overall test accuracy after events 0, 1, ...
    """
    acc = np.asarray(accuracies, np.float64)[1:]
    if len(acc) < patience or not np.all(acc[-patience:] < 1.5 / num_classes):
        return None
    start = len(acc) - patience
    while start > 0 and acc[start - 1] < 1.5 / num_classes:
        start -= 1
    return start + 1
