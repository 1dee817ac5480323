"""Event 0: train the whole network (BN in training mode) on the first experience, then fold batch norm.

This is the only time the frozen stage learns (paper.md §1, §3): afterwards BN statistics are frozen
(population statistics over the first experience), BN is folded into every convolution and layers 0..l are
quantized. Batch statistics make the whole-network step different from the adaptive one, so it has its own
jitted epoch (a `lax.scan` over the epoch's mini-batches).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clq.model.forward import fold_batch_norm, forward_bn, init_params
from clq.model.specs import LayerSpec
from clq.train.event import cross_entropy, make_optimizer

__all__ = ["train_first_event", "population_bn_stats"]


def _to_input(pixels):
    """uint8 [B,H,W,C] -> float32 in [0, 1] (the network's input convention, see clq.quant.INPUT_SCALE)."""
    return pixels.astype(jnp.float32) / 255.0


def population_bn_stats(specs, params, bn_stats, images: np.ndarray, batch_size: int) -> tuple[dict, ...]:
    """Exact per-layer mean/variance of the pre-BN activations over `images` (uint8 [N,H,W,C]).

    The statistics of layer k are taken with layers < k already normalised by their own batch statistics,
    i.e. the network exactly as trained; means and second moments are averaged over equal-size batches.
    """
    fn = jax.jit(lambda x: forward_bn(specs, params, bn_stats, _to_input(x), train=True)[1])
    n = (len(images) // batch_size) * batch_size or len(images)
    sums = None
    count = 0
    for start in range(0, n, batch_size):
        st = fn(jnp.asarray(images[start : start + batch_size]))
        moments = [{"mean": d["mean"], "sq": d["var"] + d["mean"] ** 2} if d else {} for d in st]
        sums = moments if sums is None else jax.tree.map(jnp.add, sums, moments)
        count += 1
    out = []
    for m in sums:
        if m:
            mean = m["mean"] / count
            out.append({"mean": mean, "var": jnp.maximum(m["sq"] / count - mean**2, 0.0)})
        else:
            out.append({})
    return tuple(out)


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
):
    """Train the whole network on the first experience (from scratch or from `init`) and fold its BN.

    Args:
      images: uint8 [N, H, W, C]; labels: int32 [N].
      init: optional (params, bn_stats) in BN form to start from, e.g. ImageNet weights with a fresh
        classifier (`clq.model.imagenet.load_imagenet_mobilenet_v1`); None initialises from `key`.
      progress: optional callable(epoch, loss, accuracy) called after every epoch.
    Returns:
      (folded params tuple aligned with `specs`, list of (loss, accuracy) per epoch)
    """
    n = len(images)
    bs = min(batch_size, n)
    steps = n // bs
    k_init, k_data = jax.random.split(key)
    params, bn_stats = init if init is not None else init_params(specs, k_init)
    # Cosine decay over the whole fine-tuning: from-scratch training needs a large step early, a small one late.
    sched = optax.cosine_decay_schedule(lr, max(1, epochs * steps))
    optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(sched, momentum=momentum))
    opt_state = optimizer.init(params)
    x_all = jnp.asarray(images)
    y_all = jnp.asarray(labels, jnp.int32)

    def loss_fn(p, x, y):
        logits, _ = forward_bn(specs, p, bn_stats, _to_input(x), train=True)
        logits = logits.reshape(x.shape[0], -1)
        return cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)

    @jax.jit
    def epoch_fn(params, opt_state, k):
        perm = jax.random.permutation(k, n)[: steps * bs].reshape(steps, bs)

        def step(carry, idx):
            p, s = carry
            (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x_all[idx], y_all[idx])
            u, s = optimizer.update(g, s, p)
            return (optax.apply_updates(p, u), s), (loss, acc)

        (params, opt_state), (loss, acc) = jax.lax.scan(step, (params, opt_state), perm)
        return params, opt_state, jnp.mean(loss), jnp.mean(acc)

    history = []
    for e in range(epochs):
        params, opt_state, loss, acc = epoch_fn(params, opt_state, jax.random.fold_in(k_data, e))
        history.append((float(loss), float(acc)))
        if not np.isfinite(history[-1][0]):
            raise FloatingPointError(f"non-finite loss in event 0 (first experience), epoch {e}; lower train.first_event.lr")
        if progress is not None:
            progress(e, *history[-1])
    stats = population_bn_stats(specs, params, bn_stats, images, bs)
    return fold_batch_norm(specs, params, stats), history
