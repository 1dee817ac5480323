"""Event 0: train the whole network on the first experience, in BN form.

This is the only time the frozen stage learns (paper.md §1, §3): afterwards the frozen stage's statistics are
frozen, BN is folded into its convolutions and layers 0..l are quantized. How BN trains here is a choice
(`clq.train.norm`): batch statistics everywhere then the experience's population statistics ('batch'), or
AR1's pretrained statistics below the latent layer and batch renormalization above ('ar1'). Batch statistics
make the whole-network step different from the adaptive one, so it has its own jitted epoch (a `lax.scan` over
the epoch's mini-batches).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clq.model.forward import forward_bn, forward_norm, init_params
from clq.model.specs import LayerSpec
from clq.programs import persistent, persistent_jit
from clq.train.event import cross_entropy
from clq.train.norm import FIRST_EVENT_NORMS, ar1_first_event_schedule

__all__ = ["train_first_event", "population_bn_stats", "configure_head", "SCHEDULES", "HEAD_INITS"]

SCHEDULES = ("cosine", "constant")
HEAD_INITS = ("random", "zeros")


def _to_input(pixels):
    """uint8 [B,H,W,C] -> float32 in [0, 1] (the network's input convention, see clq.quant.INPUT_SCALE)."""
    return pixels.astype(jnp.float32) / 255.0


def population_bn_stats(specs, params, bn_stats, images: np.ndarray, batch_size: int) -> tuple[dict, ...]:
    """Exact per-layer mean/variance of the pre-BN activations over `images` (uint8 [N,H,W,C]).

    The statistics of layer k are taken with layers < k already normalised by their own batch statistics,
    i.e. the network exactly as trained; means and second moments are averaged over equal-size batches.
    Returns float32 {"mean": [C], "var": [C]} per layer with BN ({} for the others).
    """
    specs = tuple(specs)
    n = (len(images) // batch_size) * batch_size or len(images)
    # The moments are summed on the host in float32, one numpy operation per layer and batch: the same IEEE
    # operations, in the same order, as summing them with JAX arrays op by op, without the ~3,700 dispatches of
    # one-op programs that cost event 0 of the default experiment ~0.3 s (the per-batch program is unchanged).
    batches = [_batch_stats(specs, params, bn_stats, jnp.asarray(images[start : start + batch_size]))
               for start in range(0, n, batch_size)]
    sums = None
    for st in jax.device_get(batches):
        moments = [(d["mean"], d["var"] + np.square(d["mean"])) if d else () for d in st]
        sums = moments if sums is None else [tuple(a + b for a, b in zip(s, m)) for s, m in zip(sums, moments)]
    return _moments_to_stats(sums, len(batches))


# Parameters as arguments, not constants of the program: the compilation cache then serves every seed; at module
# level with the specs static, so a process's later event 0 of the same network reuses it (and a later process
# loads it traced, `clq.programs`).
@persistent_jit("event0.batch_stats", static_argnums=1)
def _batch_stats(specs, params, bn_stats, pixels):
    """Per-layer batch statistics ({'mean', 'var'} [C] float32, {} without BN) of uint8 `pixels` [B, H, W, C]."""
    return forward_bn(specs, params, bn_stats, _to_input(pixels), train=True)[1]


def _moments_to_stats(sums, count: int):
    """Per layer {"mean": m1 / count, "var": max(m2 / count - mean^2, 0)} ({} where `sums` has no moments).

    Without the op-by-op JAX form's ~20 one-op programs to trace and load (~0.2 s on the default model), and with
    its values: every moment is divided in one XLA division over their concatenation, with `count` an argument
    (XLA's CPU division rounds otherwise than numpy's; several divisions by one value in a program, or a division
    by a constant, become multiplications by its reciprocal, a third rounding). The square, difference and
    maximum are IEEE operations in numpy (in one XLA program the square and the difference would contract into a
    fused multiply-add). Checked bit for bit on event 0 of the default experiment (all 137 arrays). Two cases
    could still round otherwise than the op-by-op form, neither of which MobileNet-V1 reaches: a one-channel
    layer (XLA divided a 1-element array exactly, a vector otherwise) and subnormal moments (XLA flushes them to
    zero, numpy does not)."""
    moments = [a for m in sums if m for a in m]
    flat = np.asarray(_divide(np.concatenate(moments), jnp.float32(count)))
    quotients = iter(np.split(flat, np.cumsum([len(a) for a in moments])[:-1]))
    out = []
    for m in sums:
        if m:
            mean, second = next(quotients), next(quotients)
            out.append({"mean": mean, "var": np.maximum(second - mean * mean, np.float32(0))})
        else:
            out.append({})
    return jax.device_put(tuple(out))  # one transfer; jnp.asarray compiled a program per shape


@jax.jit
def _divide(flat, count):
    return flat / count


def configure_head(params: Sequence[dict], bias: bool, init: str) -> tuple[dict, ...]:
    """The classifier as configured: ``init='zeros'`` zeroes it (AR1: CWR* resets it before the first experience),
    ``bias=False`` drops its bias (AR1's ``Linear(1024, K, bias=False)``). Other layers are returned as they are."""
    if init not in HEAD_INITS:
        raise ValueError(f"train.head.init must be one of {list(HEAD_INITS)}, got {init!r}")
    head = dict(params[-1])
    if init == "zeros":
        head = {k: jnp.zeros_like(v) for k, v in head.items()}
    if not bias:
        head.pop("b", None)
    return tuple(params[:-1]) + (head,)


@functools.lru_cache(maxsize=8)
def _event0_programs(specs: tuple[LayerSpec, ...], n: int, bs: int, epochs: int, lr: float, momentum: float,
                     weight_decay: float, schedule: str, norm: str, frozen: tuple[bool, ...]):
    """(optimizer init, epoch program) of one event-0 setting, jitted: built once per process and setting.

    Everything the programs depend on besides arrays is an argument here, so a second event 0 of the same shapes
    and settings in this process (a run started again in a notebook, the tests, a sweep's members run one by one)
    reuses the traced and compiled programs instead of tracing, lowering and loading them again (~1 s of a tiny
    run on 2 cores). The programs are those the closures of one call built before, bit for bit.

    Returns:
      init_opt(params) -> optimizer state; epoch_fn(params, opt_state, stats, key, t0, x_all, y_all) ->
      (params, opt_state, stats, mean loss, mean accuracy) of one epoch of ``n // bs`` steps.
    """
    steps = n // bs
    # Cosine decay: from-scratch training needs a large step early, a small one late; AR1 keeps its rate.
    sched = optax.cosine_decay_schedule(lr, max(1, epochs * steps)) if schedule == "cosine" else lr
    optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(sched, momentum=momentum))
    renorm = ar1_first_event_schedule(bs)

    def loss_fn(p, stats, x, y, t):
        if norm == "batch":  # batch statistics: `stats` (the initial ones, carried unchanged) are not read
            logits, _ = forward_bn(specs, p, stats, _to_input(x), train=True)
        else:
            r_max, d_max = renorm.limits(t)
            logits, stats = forward_norm(specs, p, stats, _to_input(x), frozen, renorm.momentum, r_max, d_max)
        logits = logits.reshape(x.shape[0], -1)
        return cross_entropy(logits, y), (jnp.mean(jnp.argmax(logits, -1) == y), stats)

    # The experience's images and labels are arguments, not constants of the program: as constants they made
    # every seed's first experience (and every dataset) a new program to compile (3-5 s on the default model).
    @jax.jit
    def epoch_fn(params, opt_state, stats, k, t0, x_all, y_all):
        perm = jax.random.permutation(k, n)[: steps * bs].reshape(steps, bs)

        def step(carry, xs):
            p, s, st = carry
            idx, t = xs
            (loss, (acc, st)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, st, x_all[idx], y_all[idx], t)
            u, s = optimizer.update(g, s, p)
            return (optax.apply_updates(p, u), s, st), (loss, acc)

        (params, opt_state, stats), (loss, acc) = jax.lax.scan(
            step, (params, opt_state, stats), (perm, t0 + jnp.arange(steps)))
        return params, opt_state, stats, jnp.mean(loss), jnp.mean(acc)

    # One program (~0.02 s from the compilation cache), not ~25 one-op programs to trace and load (~0.2 s). The
    # epoch, the largest program of a run, is kept whole on disk (`clq.programs`): a new process loads it without
    # tracing and lowering it (~0.7 s).
    settings = (specs, n, bs, epochs, lr, momentum, weight_decay, schedule, norm, frozen)
    return jax.jit(optimizer.init), persistent(epoch_fn, "event0.epoch", settings)


def train_first_event(
    specs: Sequence[LayerSpec],
    images: np.ndarray,
    labels: np.ndarray,
    key: jax.Array,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    progress=None,
    init=None,
    norm: str = "batch",
    latent_layer: int | None = None,
    schedule: str = "cosine",
    head_bias: bool = True,
    head_init: str = "random",
):
    """Train the whole network on the first experience (from scratch or from `init`); returns it in BN form.

    Args:
      images: uint8 [N, H, W, C]; labels: int32 [N].
      init: optional (params, bn_stats) in BN form to start from, e.g. ImageNet weights with a fresh
        classifier (`clq.model.imagenet.load_imagenet_mobilenet_v1`); None initialises from `key`.
      norm: 'batch' (batch statistics everywhere, then the experience's population statistics) or 'ar1'
        (layers 0..latent_layer keep `init`'s statistics, batch renormalization above; `clq.train.norm`).
      schedule: 'cosine' (decay to 0 over the fine-tuning) or 'constant' (AR1's SGD).
      head_bias, head_init: the classifier's form (`configure_head`).
      progress: optional callable(epoch, loss, accuracy) called after every epoch.
    Returns:
      ((params, stats) in BN form aligned with `specs`, list of (loss, accuracy) per epoch). `fold_batch_norm`
      turns it into the folded form.
    """
    if norm not in FIRST_EVENT_NORMS:
        raise ValueError(f"train.first_event.norm must be one of {list(FIRST_EVENT_NORMS)}, got {norm!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"train.first_event.schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if norm == "ar1" and (init is None or latent_layer is None):
        raise ValueError("train.first_event.norm='ar1' keeps pretrained statistics below the latent layer: it needs "
                         "pretrained weights (model.weights=imagenet); use 'batch' for a network trained from scratch")
    n = len(images)
    bs = min(batch_size, n)
    steps = n // bs
    k_init, k_data = jax.random.split(key)
    params, bn_stats = init if init is not None else init_params(specs, k_init)
    params = configure_head(params, head_bias, head_init)
    frozen = tuple(norm == "ar1" and s.index <= latent_layer for s in specs)  # BN in inference mode (AR1: 0..l)
    init_opt, epoch_fn = _event0_programs(tuple(specs), n, bs, epochs, float(lr), float(momentum),
                                          float(weight_decay), schedule, norm, frozen)
    opt_state = init_opt(params)
    x_all = jnp.asarray(images)
    y_all = jnp.asarray(labels, jnp.int32)
    history = []
    stats = tuple(bn_stats)
    for e in range(epochs):
        params, opt_state, stats, loss, acc = epoch_fn(params, opt_state, stats, jax.random.fold_in(k_data, e),
                                                       jnp.int32(e * steps), x_all, y_all)
        history.append((float(loss), float(acc)))
        if not np.isfinite(history[-1][0]):
            raise FloatingPointError(f"non-finite loss in event 0 (first experience), epoch {e}; lower train.first_event.lr")
        if progress is not None:
            progress(e, *history[-1])
    if norm == "batch":
        stats = population_bn_stats(specs, params, bn_stats, images, bs)
    return (params, stats), history
