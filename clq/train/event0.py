"""Event 0 of a run, computed once per content: the whole network learns the first experience (paper.md §3).

Event 0 depends on the first experience's images and labels, the model, the seed, the event-0 training fields
and the initial weights, and on nothing else: not on the latent layer (except with AR1's ``first_event.norm=ar1``,
which keeps the statistics of layers 0..l), not on the quantization, not on the replay settings or the learning
events' hyper-parameters. So every run and every sweep member that shares those inputs shares one event 0:

* in one process (the vectorized launcher runs many members), `first_event` remembers results in `memo`;
* across processes and runs (joblib/Ray members, a later run), ``event0_cache_dir`` holds them on disk, in
  ``<dir>/<key>/``: an atomic, SHA-256-verified checkpoint (`clq.train.checkpoint`) of the BN-form network and
  the per-epoch history. The key is a content hash of every input above *and of the source of the code that
  trains event 0*, so a changed image, setting or implementation never returns a stale network.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from clq.model.forward import init_params
from clq.model.specs import LayerSpec
from clq.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from clq.train.config import TrainConfig
from clq.train.first_event import configure_head, train_first_event
from clq.train.latent_cache import code_version, content_key, prune_cache

__all__ = ["FirstEvent", "first_event", "event0_key", "event0_settings", "network_shapes"]

#: Bumped when the cache's layout or the meaning of its key changes.
CACHE_FORMAT = 1

#: Bound of an event-0 cache folder on disk (`prune_cache`, applied whenever a run uses it). One entry of the
#: default experiment is ~3 MB, of the ImageNet MobileNet-V1 1.0 ~26 MB.
EVENT0_CACHE_BYTES = 2 << 30


class FirstEvent(NamedTuple):
    """Event 0's outcome.

    Fields:
      bn_params, bn_stats: the whole network in BN form (`train_first_event`'s result).
      history: [(loss, accuracy)] per event-0 epoch (floats).
      key: the content key (32 hex characters).
      cached: True when it came from `memo` or the disk cache instead of being trained here.
    """

    bn_params: tuple
    bn_stats: tuple
    history: list
    key: str
    cached: bool


def _code_version() -> str:
    """Hash of the source of the modules that train event 0 and of what runs them (`code_version`)."""
    from clq.model.native import native_fingerprint

    # The native depthwise kernel (or XLA's form, where it is unavailable) is part of the code that trains it.
    return code_version(f"clq-event0-code-{native_fingerprint()}",
                        ("clq.train.first_event", "clq.model.forward", "clq.model.native", "clq.model.specs",
                         "clq.train.norm", "clq.train.event"))


def event0_key(stream, specs: Sequence[LayerSpec], latent_layer: int, train: TrainConfig, seed: int,
               initial_params=None) -> str:
    """Content key of event 0: images and labels of the first experience, specs, seed, event-0 fields, initial
    weights (None: from scratch), the latent layer only where event 0 uses it, and the code's version."""
    exp0 = stream.experiences[0]
    return content_key(f"clq-event0-{CACHE_FORMAT}", _code_version(), tuple(specs), int(seed),
                       event0_settings(train, latent_layer),
                       np.asarray(stream.train_images[exp0]), np.asarray(stream.train_labels[exp0]),
                       initial_params)


def event0_settings(train: TrainConfig, latent_layer: int) -> tuple:
    """The settings event 0 depends on besides data, model, seed and initial weights: its training fields, then
    the latent layer where ``first_event.norm=ar1`` uses it (None otherwise). `event0_key` hashes them; the
    vectorized launcher counts the event-0 trainings of a plan by them."""
    return (train.first_epochs, train.first_batch_size, train.first_lr, train.momentum, train.weight_decay,
            train.first_norm, train.first_schedule, train.head_bias, train.head_init,
            latent_layer if train.first_norm == "ar1" else None)


def network_shapes(specs: Sequence[LayerSpec], train: TrainConfig):
    """Shapes and dtypes of the whole network in BN form as event 0 leaves it, computing no weights.

    Returns:
      (params, bn_stats): tuples aligned with `specs` of dicts of `jax.ShapeDtypeStruct`, the structure of
      `train_first_event`'s result (the classifier's form follows `train.head_bias` / `train.head_init`). Pass
      them to `jax.eval_shape` to get a form derived from it (folded, the adaptive stage's) the same way.
    """

    def bn_form():
        # Any key: only shapes come out. Pretrained (ImageNet) weights have `init_params`' layout and go through
        # the same `configure_head`, so this describes a run started from them too.
        params, stats = init_params(specs, jax.random.PRNGKey(0))
        return configure_head(params, train.head_bias, train.head_init), stats

    return jax.eval_shape(bn_form)


def _prune(folder: str, say) -> None:
    """Mark the entry `folder` used and keep its cache under `EVENT0_CACHE_BYTES` (`prune_cache`)."""
    try:
        removed = prune_cache(os.path.dirname(folder), EVENT0_CACHE_BYTES, keep=folder)
    except OSError as e:
        say(f"event 0 cache {os.path.dirname(folder)} not pruned: {e}")
        return
    if removed:
        say(f"event 0 cache: removed {len(removed)} least recently used entries (bound {EVENT0_CACHE_BYTES >> 30} GiB)")


def first_event(stream, specs: Sequence[LayerSpec], latent_layer: int, train: TrainConfig, seed: int,
                initial_params=None, cache_dir: str | None = None, memo: dict | None = None,
                log: Callable[[str], None] | None = None) -> FirstEvent:
    """Event 0 of ``run_continual(..., seed)``: from `memo`, else from `cache_dir`, else trained (and stored).

    Args:
      stream: `clq.data.stream.Stream`; event 0 learns ``stream.experiences[0]``.
      specs: the whole network's layer specs.
      initial_params: optional (params, bn_stats) in BN form to start from (pretrained weights).
      cache_dir: on-disk cache root (None: none); safe to share between concurrent processes.
      memo: a dict to remember results in within this process (None: none).
      log: optional callable(message) told the event-0 epochs and cache hits.
    Returns:
      `FirstEvent`; the key derives from `seed` as ``split(PRNGKey(seed), 3)[0]``, as every run's.
    """
    say = log or (lambda msg: None)
    key = event0_key(stream, specs, latent_layer, train, seed, initial_params)
    if memo is not None and key in memo:
        return memo[key]._replace(cached=True)
    folder = None if cache_dir is None else os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), key)
    if folder is not None and os.path.isdir(folder):
        try:
            restored = load_checkpoint(folder, {"bn": network_shapes(specs, train)})
        except (CheckpointError, OSError, ValueError) as e:  # also: removed meanwhile by another run's pruning
            say(f"event 0 cache entry {folder} unusable ({e}); training event 0 again")
            restored = None
        if restored is not None:
            (params, stats), meta = restored[1]["bn"], restored[2]
            say(f"event 0 from the cache ({folder})")
            _prune(folder, say)
            out = FirstEvent(tuple(params), tuple(stats), [tuple(h) for h in meta["history"]], key, True)
            if memo is not None:
                memo[key] = out
            return out
    k_first = jax.random.split(jax.random.PRNGKey(seed), 3)[0]
    exp0 = stream.experiences[0]
    (params, stats), history = train_first_event(
        specs, stream.train_images[exp0], stream.train_labels[exp0], k_first, train.first_epochs,
        train.first_batch_size, train.first_lr, train.momentum, train.weight_decay,
        progress=None if log is None else lambda e, l, a: log(
            f"event 0 epoch {e + 1}/{train.first_epochs}: loss {l:.4f} acc {a:.3f}"),
        init=initial_params, norm=train.first_norm, latent_layer=latent_layer, schedule=train.first_schedule,
        head_bias=train.head_bias, head_init=train.head_init)
    out = FirstEvent(tuple(params), tuple(stats), history, key, False)
    if folder is not None:
        try:
            save_checkpoint(folder, 0, {"bn": (out.bn_params, out.bn_stats)}, {"history": history, "key": key})
        except OSError as e:  # a full or read-only disk costs the cache, never the run
            say(f"event 0 not cached in {folder}: {e}")
        else:
            _prune(folder, say)
    if memo is not None:
        memo[key] = out
    return out
