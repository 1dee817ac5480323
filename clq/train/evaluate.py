"""Evaluation of the adaptive stage on cached test latents."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.batching import padded_batches
from clq.model.forward import forward
from clq.model.specs import LayerSpec

__all__ = ["make_predict", "Evaluation", "evaluate"]


def make_predict(adaptive_specs: Sequence[LayerSpec]):
    """Jitted ``predict(params, codes, scale) -> int32 [B]`` on latents stored as codes * scale."""

    @jax.jit
    def predict(params, codes, scale):
        x = codes.astype(jnp.float32) * scale
        return jnp.argmax(forward(adaptive_specs, params, x).reshape(x.shape[0], -1), -1).astype(jnp.int32)

    return predict


class Evaluation(dict):
    """accuracy (float), per_class float [K] (NaN where absent), per_session float [S]."""


def _group_accuracy(correct: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    tot = np.bincount(groups, minlength=n).astype(np.float64)
    hit = np.bincount(groups, weights=correct, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, hit / tot, np.nan)


def evaluate(
    predict,
    params,
    codes: np.ndarray,
    scale,
    labels: np.ndarray,
    sessions: np.ndarray,
    num_classes: int,
    num_sessions: int,
    batch_size: int,
) -> Evaluation:
    """Accuracy over the test latents, overall, per class and per session.

    The last batch is padded to `batch_size` so that `predict` compiles once.
    """
    n = len(labels)
    preds = np.empty(n, np.int32)
    for s, chunk, m in padded_batches(codes, batch_size):
        preds[s : s + m] = np.asarray(predict(params, chunk, scale))[:m]
    correct = (preds == labels).astype(np.float64)
    return Evaluation(
        accuracy=float(correct.mean()),
        per_class=_group_accuracy(correct, labels, num_classes),
        per_session=_group_accuracy(correct, sessions, num_sessions),
    )
