"""A whole sweep of the learning phase, K bit-widths x S seeds, as one compiled program.

After event 0 the frozen stage is fixed, so every configuration of a sweep over ``replay.bits`` and seeds
sees the same latents; what differs is the replay codec (Q_LR, hence the LR scale ``a_max / (2^Q - 1)``)
and the randomness of training and buffer replacement. Both are *values*, not shapes, as long as the storage
is shared (codes in uint8 for Q_LR <= 8, packed into the buffer's uint32 words at the sweep's largest Q_LR), so
the learning phase of every configuration is the same program:

    one configuration  = lax.scan over learning events 1..E-1 of
                         [the learner's step (`clq.learn`: learning event -> buffer.add) -> test accuracy]
    the sweep          = vmap over the K*S members (Q_LR, S_LR and the seed's keys traced), or a lax.map
                         over batches of `members_per_batch` of them, each batch vmapped (bounds memory)

and the whole sweep is one `jax.jit` call: one compilation, no host round trip between events or
configurations, the buffers kept as packed UINT codes, the latents of every event computed once and shared.

Seeds follow `clq.train.loop.run_continual`: seed s gives ``k_train, k_buf = split(PRNGKey(s), 3)[1:]``,
event i uses ``fold_in(k_train, i)`` and ``fold_in(k_buf, i)``. The stream, event 0 and the frozen stage are
those of one base run (as the paper's frozen stage is one ImageNet-pretrained network), so configuration
(Q_LR, seed) of the sweep is the learning phase of ``run_continual(..., ReplayConfig(size, Q_LR), seed)``
whose stream and event 0 come from the base seed; with seed == base seed it is the same computation as that run.
Equal numbers are checked at small scale (tests/train/test_vectorized.py, 1e-6). At the default scale XLA
evaluates the vmapped (batched) matmuls in another summation order than the single run's, and 75 events of
SGD amplify that rounding: Q_LR=8, seed 0 ends at 58.38 % in the sweep against 59.43 % in the single run, inside
the spread over seeds (bench/results/vectorized.json). Compare members of one sweep with each other.

Every strategy and adaptive normalization of `clq.learn` runs in a sweep (the learner's step is the same).
Events of unequal sizes run in one program as long as they share the split of a mini-batch into new latents and
replays (`shared_composition`): the program runs the largest number of iterations per epoch and masks the steps
a smaller event does not have. Limits: Q_LR in 1..16 (no FP32 latents in a vmapped sweep).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clq.model.forward import fold_batch_norm
from clq.model.specs import LayerSpec, split_specs
from clq.quant.latent import LatentCodec
from clq.quant.uniform import check_bits, storage_dtype
from clq.replay.buffer import make_replay_buffer
from clq.learn import Event, Hyper, Strategy, make_learner, make_strategy, plain
from clq.train.evaluate import make_hits
from clq.train.event import Composition, make_optimizer, minibatch_composition
from clq.train.norm import AdaptiveNorm, make_adaptive_norm
from clq.train.first_event import train_first_event
from clq.train.frozen_stage import make_frozen_stage

__all__ = ["SweepData", "SweepResult", "lr_scales", "make_sweep", "sweep_data", "prepare_sweep", "run_sweep",
           "shared_composition"]


class SweepData(NamedTuple):
    """The latents a sweep learns from, computed once (frozen-stage codes, not decoded).

    Fields:
      codes0: [n0, *latent_shape] frozen codes of event 0 (they fill the buffer), dtype of the frozen stage.
      labels0: int32 [n0].
      event_codes: [E-1, n_max, *latent_shape] codes of learning events 1..E-1, zero-padded rows.
      event_labels: int32 [E-1, n_max].
      event_n: int32 [E-1], valid rows per event.
      test_codes: [T, *latent_shape] test latents' codes; T a multiple of the evaluation chunk.
      test_labels: int32 [T], -1 on padding rows (never counted).
      frozen_scale: float32 (), real latents are ``codes * frozen_scale``.
      test_sessions: int32 [T], session of every test latent (None: all session 0).
    """

    codes0: jax.Array
    labels0: jax.Array
    event_codes: jax.Array
    event_labels: jax.Array
    event_n: jax.Array
    test_codes: jax.Array
    test_labels: jax.Array
    frozen_scale: jax.Array
    test_sessions: jax.Array | None = None


class SweepResult(NamedTuple):
    """Outputs of a sweep, indexed [bit-width k, seed s, ...].

    Fields:
      accuracy: float32 [K, S, E], test accuracy after every event (index 0: after event 0).
      train_loss: float32 [K, S, E-1], loss of the last step of every learning event.
      buffer_histogram: int32 [K, S, num_classes], labels held by the buffer at the end.
      class_hits: int32 [K, S, E, num_classes], correct test predictions per class after every event.
      session_hits: int32 [K, S, E, num_sessions], the same per session.
    """

    accuracy: jax.Array
    train_loss: jax.Array
    buffer_histogram: jax.Array
    class_hits: jax.Array
    session_hits: jax.Array


def lr_scales(lr_bits: Sequence[int], a_max: float) -> np.ndarray:
    """S_LR per bit-width: float32 [K], exactly `make_latent_codec(bits, a_max).scale` for each."""
    return np.asarray([np.float32(a_max / (2 ** check_bits(b, "replay.bits") - 1)) for b in lr_bits], np.float32)


def sweep_data(stream, frozen, eval_chunk: int = 1000) -> SweepData:
    """Push every image of `stream` through the frozen stage once and stack the codes for `make_sweep`.

    Args:
      stream: `clq.data.stream.Stream`.
      frozen: `clq.train.frozen_stage.FrozenStage` (its `latents` may be cached on disk).
      eval_chunk: the test set is padded to a multiple of it (padding labels are -1).
    """
    exp = stream.experiences
    later = exp[1:]
    if not later:
        raise ValueError("a sweep needs at least one learning event after event 0")
    n_max = max(len(e) for e in later)
    codes0 = frozen.latents(stream.train_images[exp[0]])
    latent_shape = codes0.shape[1:]
    ev_codes = np.zeros((len(later), n_max, *latent_shape), codes0.dtype)
    ev_labels = np.zeros((len(later), n_max), np.int32)
    for j, idx in enumerate(later):
        ev_codes[j, : len(idx)] = frozen.latents(stream.train_images[idx])
        ev_labels[j, : len(idx)] = stream.train_labels[idx]
    test = frozen.latents(stream.test_images)
    pad = -len(test) % eval_chunk
    test = np.concatenate([test, np.zeros((pad, *latent_shape), test.dtype)])
    test_labels = np.concatenate([stream.test_labels.astype(np.int32), np.full(pad, -1, np.int32)])
    test_sessions = np.concatenate([stream.test_sessions.astype(np.int32), np.zeros(pad, np.int32)])
    return SweepData(codes0, stream.train_labels[exp[0]].astype(np.int32), ev_codes, ev_labels,
                     np.asarray([len(e) for e in later], np.int32), test, test_labels, np.float32(frozen.scale),
                     test_sessions)


def make_sweep(
    adaptive_specs: Sequence[LayerSpec],
    optimizer: optax.GradientTransformation,
    replay_size: int,
    latent_shape: Sequence[int],
    num_classes: int,
    composition: Composition,
    epochs: int,
    max_bits: int = 8,
    policy: str = "ar1",
    eval_chunk: int = 1000,
    members_per_batch: int | None = None,
    strategy: Strategy | None = None,
    norm: AdaptiveNorm | None = None,
    masked: bool = False,
    num_sessions: int = 1,
) -> Callable[..., SweepResult]:
    """Build the jitted sweep program.

    Args:
      adaptive_specs: layers l+1..28.
      optimizer: `clq.train.make_optimizer(...)`; its learning rate is the one every event uses.
      replay_size: N_LR (static: it is the buffer's shape).
      composition: the mini-batch composition shared by every learning event.
      max_bits: the largest Q_LR the program will be called with; fixes the codes' dtype (uint8 up to 8) and
        the buffer's packing (every member's codes are stored in max_bits-bit fields, as they must share shapes).
      eval_chunk: test latents evaluated per step of the evaluation loop (bounds memory: K*S*chunk latents).
      members_per_batch: configurations vmapped together (`lax.map` over batches of them); None: all K*S.
      strategy: the learner's strategy (`clq.learn.make_strategy`); None: plain QLR.
      norm: the adaptive stage's normalization (`clq.train.norm.make_adaptive_norm`); None: folded.
      num_sessions: sessions of the test set (per-session hits).
      masked: events may need fewer iterations per epoch than `composition` (unequal sizes, one split of new
        and replays); each runs exactly its own (`clq.train.event.make_event_fn`).
    Returns:
      ``sweep(adaptive_params, lr_bits, lr_scale, seeds, data, norm_state=()) -> SweepResult`` where
      adaptive_params is the post-event-0 adaptive tree in `norm`'s form (shared) and norm_state its running
      statistics, lr_bits int32 [K], lr_scale float32 [K] (`lr_scales`), seeds int32 [S], data a `SweepData`.
      K, S and the data's shapes are the only things that recompile.
    """
    check_bits(max_bits, "max_bits")
    dtype = storage_dtype(max_bits)
    latent_shape = tuple(int(d) for d in latent_shape)

    hits = make_hits(adaptive_specs, num_classes, num_sessions)  # the single run's evaluator

    adaptive_norm = norm if norm is not None else make_adaptive_norm("fold", adaptive_specs)

    def one_config(params, norm_state, bits, scale, seed, data: SweepData):
        """The learning phase of one (Q_LR, seed); bits/scale/seed are traced scalars."""
        codec = LatentCodec(bits, scale, dtype)  # traced bits and scale: encode/decode are jnp arithmetic
        buffer = make_replay_buffer(replay_size, latent_shape, codec, policy, num_classes, code_bits=max_bits)
        # The same learner step a single run jits (`clq.learn`), here scanned over events and vmapped.
        learner = make_learner(adaptive_specs, optimizer, buffer, adaptive_norm, strategy or plain(), epochs)
        learning_event = learner.step(composition, masked)
        _, k_train, k_buf = jax.random.split(jax.random.PRNGKey(seed), 3)
        # The optimizer's own (injected) learning rate: every learning event of the sweep uses it.
        hyper = Hyper(optimizer.init(params).hyperparams["learning_rate"], k_train, k_buf)
        n_test = jnp.maximum(jnp.sum(data.test_labels >= 0), 1)
        test_codes = data.test_codes.reshape(-1, eval_chunk, *latent_shape)
        test_labels = data.test_labels.reshape(-1, eval_chunk)
        sessions = data.test_sessions if data.test_sessions is not None else jnp.zeros_like(data.test_labels)
        test_sessions = sessions.reshape(-1, eval_chunk)

        def accuracy(params):
            """(accuracy float32 (), class hits int32 [num_classes], session hits int32 [num_sessions])."""
            ch, sh = jax.lax.map(lambda c: hits(params, c[0], data.frozen_scale, c[1], c[2]),
                                 (test_codes, test_labels, test_sessions))
            ch, sh = jnp.sum(ch, 0), jnp.sum(sh, 0)
            return jnp.sum(ch) / n_test, ch, sh

        def decode(codes):
            return codes.astype(jnp.float32) * data.frozen_scale

        n0 = data.codes0.shape[0]
        event0 = Event(decode(data.codes0), data.labels0, jnp.int32(n0), jnp.int32(0))
        state = learner.init(params, norm_state, event0, hyper)
        acc0 = accuracy(adaptive_norm.fold(state.params, state.norm))

        def event(state, inp):
            codes, labels, n_new, i = inp
            state, m = learning_event(state, Event(decode(codes), labels, n_new, i), hyper)
            return state, (*accuracy(adaptive_norm.fold(state.params, state.norm)), m.last_loss())

        events = jnp.arange(1, data.event_n.shape[0] + 1)
        state, (acc, ch, sh, loss) = jax.lax.scan(
            event, state, (data.event_codes, data.event_labels, data.event_n, events))
        buf = state.buffer
        hist = jnp.zeros(num_classes, jnp.int32).at[jnp.where(buf.filled, buf.labels, 0)].add(
            buf.filled.astype(jnp.int32))
        return (jnp.concatenate([acc0[0][None], acc]), loss, hist, jnp.concatenate([acc0[1][None], ch]),
                jnp.concatenate([acc0[2][None], sh]))

    @jax.jit
    def sweep(adaptive_params, lr_bits, lr_scale, seeds, data: SweepData, norm_state=()) -> SweepResult:
        if data.test_codes.shape[0] % eval_chunk:
            raise ValueError(f"the test set ({data.test_codes.shape[0]}) must be padded to a multiple of "
                             f"eval_chunk={eval_chunk} (use sweep_data)")
        k, s = len(lr_bits), len(seeds)
        # Members flattened bit-width-major: member k*S + s is (lr_bits[k], seeds[s]).
        bits = jnp.repeat(jnp.asarray(lr_bits, jnp.int32), s)
        scale = jnp.repeat(jnp.asarray(lr_scale, jnp.float32), s)
        seed = jnp.tile(jnp.asarray(seeds, jnp.int32), k)
        chunk = k * s if members_per_batch is None else min(members_per_batch, k * s)
        out = jax.lax.map(lambda m: one_config(adaptive_params, norm_state, *m, data), (bits, scale, seed),
                          batch_size=chunk)
        return SweepResult(*(a.reshape(k, s, *a.shape[1:]) for a in out))

    return sweep


def shared_composition(event_sizes: Sequence[int], replay_size: int, batch_size: int) -> tuple[Composition, bool]:
    """The one program every learning event of a sweep runs: (composition, masked).

    Events must share the split of a mini-batch into new latents and replays; their iterations per epoch may
    differ (CORe50 NICv2-391's 293-300 images at N_LR=1500, B=128: 21 + 107, 14 or 15 iterations), in which case
    the program runs the largest and masks the steps an event does not have.

    Raises:
      ValueError naming the sizes and their compositions when the splits differ.
    """
    comps = {minibatch_composition(int(n), replay_size, batch_size) for n in set(event_sizes)}
    splits = {(c.new_per_batch, c.replays_per_batch) for c in comps}
    if len(splits) != 1:
        raise ValueError(f"a vectorized sweep needs learning events of one split of new and replayed latents per "
                         f"mini-batch; event sizes {sorted(set(event_sizes))} give {sorted(tuple(c) for c in comps)} "
                         f"(new, replays, iterations per epoch)")
    widest = max(comps, key=lambda c: c.iterations_per_epoch)
    return widest, len(comps) > 1


def prepare_sweep(stream, specs: Sequence[LayerSpec], latent_layer: int, train, quant, base_seed: int,
                  eval_chunk: int = 1000, initial_params=None, log: Callable[[str], None] | None = None):
    """Event 0 and the frozen stage of the base run, exactly as `run_continual(..., seed=base_seed)` makes them.

    Args:
      train: `clq.train.TrainConfig` (event-0 fields used here).
      quant: `clq.quant.QuantConfig`, or None for an FP32 frozen stage.
      initial_params: optional (params, bn_stats) in BN form that event 0 starts from (as in `run_continual`).
      log: optional callable(message) told each phase (event-0 epochs, frozen stage, latents).
    Returns:
      ((adaptive_params, norm_state): the adaptive stage after event 0 in its normalization's form (`norm_state`
      is () when folded), frozen: `FrozenStage`, data: `SweepData`)
    """
    say = log or (lambda msg: None)
    frozen_specs, _ = split_specs(specs, latent_layer)
    k_first = jax.random.split(jax.random.PRNGKey(base_seed), 3)[0]
    exp0 = stream.experiences[0]
    bn_form, _ = train_first_event(specs, stream.train_images[exp0], stream.train_labels[exp0], k_first,
                                   train.first_epochs, train.first_batch_size, train.first_lr, train.momentum,
                                   train.weight_decay,
                                   progress=None if log is None else lambda e, l, a: log(
                                       f"event 0 epoch {e + 1}/{train.first_epochs}: loss {l:.4f} acc {a:.3f}"),
                                   init=initial_params, norm=train.first_norm, latent_layer=latent_layer,
                                   schedule=train.first_schedule, head_bias=train.head_bias,
                                   head_init=train.head_init)
    folded = fold_batch_norm(specs, *bn_form)
    say(f"frozen stage: layers 0..{latent_layer} calibrated on event 0")
    frozen = make_frozen_stage(frozen_specs, folded[: latent_layer + 1], stream.train_images[exp0], quant)
    say("latents: every image of the stream through the frozen stage, once")
    # The adaptive stage in the form its normalization trains (as `run_continual` starts its learning events).
    _, adaptive_specs = split_specs(specs, latent_layer)
    norm = make_adaptive_norm(train.adaptive_norm, adaptive_specs, train.norm_momentum)
    bn_params, bn_stats = bn_form
    adaptive = norm.init(bn_params[latent_layer + 1 :], bn_stats[latent_layer + 1 :])
    return adaptive, frozen, sweep_data(stream, frozen, eval_chunk)


def run_sweep(stream, specs: Sequence[LayerSpec], latent_layer: int, train, replay_size: int,
              lr_bits: Sequence[int], seeds: Sequence[int], quant, base_seed: int = 0, policy: str = "ar1",
              eval_chunk: int = 1000, prepared=None, members_per_batch: int | None = None) -> dict:
    """K bit-widths x S seeds of the learning phase on one stream and frozen stage, as one compiled call.

    Args:
      train: `clq.train.TrainConfig` (strategy must be 'qlr').
      lr_bits: the K values of Q_LR (1..16).
      seeds: the S seeds of the learning phase.
      prepared: the result of `prepare_sweep` to reuse (else it is computed here).
      members_per_batch: configurations vmapped together (`make_sweep`); fewer bound the memory, None: all.
    Returns:
      dict with ``accuracy`` float [K, S, E], ``final_accuracy`` float [K, S], ``train_loss`` [K, S, E-1],
      ``buffer_histogram`` [K, S, num_classes], ``class_hits`` [K, S, E, num_classes] and ``session_hits``
      [K, S, E, num_sessions] (NumPy), and the ``lr_bits``/``seeds`` axes.
    """
    if not lr_bits or not seeds:
        raise ValueError("lr_bits and seeds must each hold at least one value")
    lr_bits = [check_bits(b, "replay.bits") for b in lr_bits]
    if any(b is None for b in lr_bits):
        raise ValueError("replay.bits=null (FP32 latents) cannot be vectorized with integer bit-widths")
    (params, norm_state), frozen, data = prepared if prepared is not None else prepare_sweep(
        stream, specs, latent_layer, train, quant, base_seed, eval_chunk)
    comp, masked = shared_composition([int(n) for n in np.asarray(data.event_n)], replay_size, train.batch_size)
    _, adaptive_specs = split_specs(specs, latent_layer)
    optimizer = make_optimizer(train.lr, train.momentum, train.weight_decay)
    sweep = make_sweep(adaptive_specs, optimizer, replay_size, data.codes0.shape[1:], stream.num_classes, comp,
                       train.epochs, max(lr_bits), policy, eval_chunk, members_per_batch, masked=masked,
                       strategy=make_strategy(train.strategy, train.reset_momentum, optimizer.init, stream.num_classes),
                       norm=make_adaptive_norm(train.adaptive_norm, adaptive_specs, train.norm_momentum),
                       num_sessions=len(stream.session_names))
    res = sweep(params, np.asarray(lr_bits, np.int32), lr_scales(lr_bits, frozen.a_max),
                np.asarray(seeds, np.int32), data, norm_state)
    acc = np.asarray(res.accuracy, np.float64)
    return {"lr_bits": list(lr_bits), "seeds": [int(s) for s in seeds], "accuracy": acc,
            "final_accuracy": acc[:, :, -1], "train_loss": np.asarray(res.train_loss),
            "buffer_histogram": np.asarray(res.buffer_histogram), "class_hits": np.asarray(res.class_hits),
            "session_hits": np.asarray(res.session_hits)}
