"""Continual-learning metrics over the accuracy matrix (plain NumPy)."""

from __future__ import annotations

import numpy as np

__all__ = ["forgetting", "average_accuracy", "at_chance", "below_chance", "CHANCE_PATIENCE", "accuracy_record",
           "nan_to_none"]

#: Learning events in a row at chance level before a run says so.
CHANCE_PATIENCE = 3


def below_chance(accuracy, num_classes: int):
    """Whether accuracy (float, or an array of them) is at chance level: below 1.5 / num_classes. A network that
    has collapsed onto one class scores 1 / num_classes on a balanced test set."""
    return np.asarray(accuracy) < 1.5 / num_classes


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

    "At chance" is `below_chance`. Event 0 is not counted (it has seen only some classes).

    Args:
      accuracies: float, overall test accuracy after events 0, 1, ...
    """
    acc = np.asarray(accuracies, np.float64)[1:]
    if len(acc) < patience or not np.all(below_chance(acc[-patience:], num_classes)):
        return None
    start = len(acc) - patience
    while start > 0 and below_chance(acc[start - 1], num_classes):
        start -= 1
    return start + 1


def nan_to_none(a) -> list:
    """JSON-ready nested lists rounded to 6 digits, with None where the value is NaN (a group never tested)."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isnan(a), None, np.round(a, 6)).tolist()


def accuracy_record(stream, accuracy, class_matrix, session_matrix) -> dict:
    """The accuracy part of every run's results.json (a single run and each member of a sweep write the same).

    Args:
      stream: the `clq.data.stream.Stream` (which classes and sessions each experience holds, session names).
      accuracy: float [E'], overall test accuracy after events 0..E'-1 (E' <= E when a run stopped early).
      class_matrix: float [E', K], accuracy per class after each event (NaN where a class has no test image).
      session_matrix: float [E', S], the same per session.
    Returns:
      accuracy_per_event, final_accuracy, average_accuracy, accuracy_matrix (per_class, per_session),
      forgetting (per_class, per_session; over groups seen before the last event), final_accuracy_per_class,
      final_accuracy_per_session (by session name).
    """
    class_m, sess_m = np.asarray(class_matrix, float), np.asarray(session_matrix, float)
    n = len(accuracy)
    seen_cls = np.zeros((n, class_m.shape[1]), bool)
    seen_sess = np.zeros((n, sess_m.shape[1]), bool)
    # CORe50's NICv2-79/196, NI and NC batches mix sessions: count every session of an experience as seen.
    sess_sets = getattr(stream, "experience_session_sets", None) or [[s] for s in stream.experience_sessions]
    for i in range(n):
        seen_cls[i:, stream.experience_classes[i]] = True
        seen_sess[i:, np.asarray(sess_sets[i], int)] = True
    acc = [float(a) for a in accuracy]
    return {
        "accuracy_per_event": acc,
        "final_accuracy": acc[-1],
        "average_accuracy": average_accuracy(acc),
        "accuracy_matrix": {"per_class": nan_to_none(class_m), "per_session": nan_to_none(sess_m)},
        "forgetting": {"per_class": forgetting(class_m, seen_cls), "per_session": forgetting(sess_m, seen_sess)},
        "final_accuracy_per_class": nan_to_none(class_m[-1]),
        "final_accuracy_per_session": dict(zip(stream.session_names, nan_to_none(sess_m[-1]))),
    }
