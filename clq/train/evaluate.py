"""Evaluation of the adaptive stage on cached test latents."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.model.forward import forward
from clq.model.specs import LayerSpec
from clq.replay.buffer import masked_counts

__all__ = ["make_hits", "EvalLatents", "pad_eval_latents", "count_hits", "jit_count_hits", "Evaluation",
           "hit_rates", "evaluation_from_hits", "evaluate"]


def make_hits(adaptive_specs: Sequence[LayerSpec], num_classes: int, num_sessions: int):
    """Pure ``hits(params, codes, scale, labels, sessions) -> (class_hits int32 [K], session_hits int32 [S])``.

    The one evaluator of clq: correct predictions counted per class and per session, in-graph, mapped over
    chunks of the test set by `count_hits` (a single run compiles that once, a sweep calls it in its program).
    codes [B, *latent_shape] stored as ``codes * scale``; labels int32 [B] with -1 on padding rows (never
    counted); sessions int32 [B].
    """

    def hits(params, codes, scale, labels, sessions):
        x = codes.astype(jnp.float32) * scale
        pred = jnp.argmax(forward(adaptive_specs, params, x, per_pixel=True).reshape(x.shape[0], -1), -1)
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


class EvalLatents(NamedTuple):
    """The test latents padded to whole evaluation chunks, to be placed on the device once per run.

    Fields:
      codes: [T, *latent_shape] frozen-stage codes (real latents are ``codes * scale``), T a multiple of the chunk.
      labels: int32 [T], -1 on padding rows (never counted).
      sessions: int32 [T], the session of every test latent (0 on padding rows).
    """

    codes: jax.Array
    labels: jax.Array
    sessions: jax.Array


def pad_eval_latents(codes: np.ndarray, labels: np.ndarray, sessions: np.ndarray | None, chunk: int) -> EvalLatents:
    """`EvalLatents` of numpy arrays: `codes` [N, ...], `labels` [N] and `sessions` [N] (None: all 0) padded to a
    multiple of `chunk` rows (>= 1)."""
    if chunk < 1:
        raise ValueError(f"the evaluation chunk must be >= 1, got {chunk}")
    pad = -len(codes) % chunk
    sessions = np.zeros(len(labels), np.int32) if sessions is None else sessions
    return EvalLatents(np.concatenate([codes, np.zeros((pad, *codes.shape[1:]), codes.dtype)]),
                       np.concatenate([np.asarray(labels, np.int32), np.full(pad, -1, np.int32)]),
                       np.concatenate([np.asarray(sessions, np.int32), np.zeros(pad, np.int32)]))


def count_hits(hits, params, scale, test: EvalLatents, chunk: int) -> tuple[jax.Array, jax.Array]:
    """Correct predictions over the whole test set, in-graph: `hits` (`make_hits`) mapped over chunks of `chunk`
    rows (`lax.map`: one chunk's activations live at a time).

    A single run compiles it once (`jit_count_hits`, called by `evaluate`); a sweep calls it inside its program.
    Returns:
      (class_hits int32 [num_classes], session_hits int32 [num_sessions]).
    """
    codes = test.codes.reshape(-1, chunk, *test.codes.shape[1:])
    ch, sh = jax.lax.map(lambda c: hits(params, c[0], scale, c[1], c[2]),
                         (codes, test.labels.reshape(-1, chunk), test.sessions.reshape(-1, chunk)))
    return jnp.sum(ch, 0), jnp.sum(sh, 0)


def jit_count_hits(hits, chunk: int):
    """`count_hits` of `hits` over chunks of `chunk` rows, compiled once: ``(params, scale, test) -> (class_hits,
    session_hits)``. A run makes it once per setting and process (`clq.train.loop`: a later run of the same
    setting reuses the compiled program)."""
    return jax.jit(lambda params, scale, test: count_hits(hits, params, scale, test, chunk))


def evaluate(count, params, scale, test: EvalLatents, labels: np.ndarray, sessions: np.ndarray) -> Evaluation:
    """Accuracy over the test latents, overall, per class and per session: one compiled call.

    Args:
      count: `jit_count_hits(make_hits(...), chunk)`.
      test: `pad_eval_latents(...)` with that chunk, best placed on the device once (`jax.device_put`): a run
        evaluates it after every event. Before, each evaluation copied the codes to the device batch by batch and
        waited on each batch's result (10 calls per event on the default experiment).
      labels, sessions: int [N] of the unpadded test set (per-class and per-session denominators).
    """
    class_hits, session_hits = count(params, jnp.float32(scale), test)
    return evaluation_from_hits(np.asarray(class_hits, np.int64), np.asarray(session_hits, np.int64), labels,
                                sessions)
