"""Evaluation of the adaptive stage on cached test latents."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.batching import padded_batches
from clq.model.forward import forward
from clq.model.specs import LayerSpec
from clq.replay.buffer import masked_counts

__all__ = ["make_hits", "Evaluation", "hit_rates", "evaluation_from_hits", "evaluate"]


def make_hits(adaptive_specs: Sequence[LayerSpec], num_classes: int, num_sessions: int):
    """Pure ``hits(params, codes, scale, labels, sessions) -> (class_hits int32 [K], session_hits int32 [S])``.

    The one evaluator of clq: correct predictions counted per class and per session, in-graph (a single run
    jits it per batch, a sweep maps it over chunks inside its program). codes [B, *latent_shape] stored as
    ``codes * scale``; labels int32 [B] with -1 on padding rows (never counted); sessions int32 [B].
    """

    def hits(params, codes, scale, labels, sessions):
        x = codes.astype(jnp.float32) * scale
        pred = jnp.argmax(forward(adaptive_specs, params, x).reshape(x.shape[0], -1), -1)
        valid = labels >= 0
        ok = ((pred == labels) & valid).astype(jnp.int32)
        return (masked_counts(labels, valid, num_classes, weights=ok),
                masked_counts(sessions, valid, num_sessions, weights=ok))

    return hits


class Evaluation(dict):
    """accuracy (float), per_class float [K] (NaN where absent), per_session float [S]."""


def hit_rates(hits, groups: np.ndarray) -> np.ndarray:
    """Accuracy per group from hit counts.

    Args:
      hits: int [..., G], correct predictions per group (`make_hits`, summed over the test set).
      groups: int [T], the group (class or session) of every test image.
    Returns:
      float64 [..., G]: exact counts divided in float64, NaN where a group has no test image.
    """
    hits = np.asarray(hits)
    tot = np.bincount(groups, minlength=hits.shape[-1]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, hits / tot, np.nan)


def evaluation_from_hits(class_hits, session_hits, labels: np.ndarray, sessions: np.ndarray) -> Evaluation:
    """`Evaluation` from hit counts (`make_hits`, summed over the test set) and the test set's labels/sessions."""
    return Evaluation(accuracy=float(np.sum(class_hits)) / len(labels), per_class=hit_rates(class_hits, labels),
                      per_session=hit_rates(session_hits, sessions))


def evaluate(
    hits,
    params,
    codes: np.ndarray,
    scale,
    labels: np.ndarray,
    sessions: np.ndarray,
    batch_size: int,
) -> Evaluation:
    """Accuracy over the test latents, overall, per class and per session.

    Args:
      hits: `make_hits(...)` under `jax.jit`; the last batch is padded (labels -1) so that it compiles once.
    """
    class_hits = session_hits = 0
    for s, chunk, m in padded_batches(codes, batch_size):
        lab = np.full(len(chunk), -1, np.int32)
        lab[:m] = labels[s : s + m]
        ses = np.zeros(len(chunk), np.int32)
        ses[:m] = sessions[s : s + m]
        c, t = hits(params, chunk, scale, lab, ses)
        class_hits, session_hits = class_hits + np.asarray(c, np.int64), session_hits + np.asarray(t, np.int64)
    return evaluation_from_hits(class_hits, session_hits, labels, sessions)
