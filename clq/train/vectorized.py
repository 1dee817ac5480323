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
a smaller event does not have. FP32 replays (``replay.bits=null``) run as a program of their own (``max_bits=None``).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clq.model.forward import fold_batch_norm
from clq.model.specs import LayerSpec, split_specs
from clq.quant.latent import LatentCodec, make_latent_codec
from clq.quant.uniform import check_bits, storage_dtype
from clq.replay.buffer import make_replay_buffer, masked_counts
from clq.learn import Event, Hyper, Strategy, make_learner, make_strategy, plain
from clq.train.evaluate import EvalLatents, count_hits, make_hits, pad_eval_latents
from clq.train.event import Composition, all_finite, make_optimizer, minibatch_composition
from clq.train.norm import AdaptiveNorm, make_adaptive_norm
from clq.train.event0 import first_event
from clq.train.frozen_stage import check_quantization, latents_ahead

__all__ = ["SweepData", "SweepResult", "Prepared", "Outputs", "GroupProgram", "make_group_program", "group_program", "lr_scales", "make_sweep", "sweep_data", "prepare_sweep",
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


class Prepared(NamedTuple):
    """What every member of a group shares, computed once (`prepare_sweep`).

    Fields:
      adaptive: (adaptive_params, norm_state): the adaptive stage after event 0 in its normalization's form
        (norm_state is () when folded).
      frozen: the `FrozenStage` (layers 0..l, calibrated on event 0).
      data: the `SweepData` (every latent of the stream, once).
      event0: the `clq.train.event0.FirstEvent` (its history is each member's event-0 record).
      quant_check: (record, warning or None) of `clq.train.frozen_stage.check_quantization`, as a run records it.
    """

    adaptive: tuple
    frozen: object
    data: SweepData
    event0: object
    quant_check: tuple = (None, None)


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
    # Many events per call of the frozen stage, as a single run computes them (`latents_ahead`).
    ahead = latents_ahead(frozen.latents, stream.train_images, later, codes0[0].nbytes)
    for j, (idx, codes) in enumerate(zip(later, ahead)):
        ev_codes[j, : len(idx)] = codes
        ev_labels[j, : len(idx)] = stream.train_labels[idx]
    test = pad_eval_latents(frozen.latents(stream.test_images), stream.test_labels, stream.test_sessions, eval_chunk)
    return SweepData(codes0, stream.train_labels[exp[0]].astype(np.int32), ev_codes, ev_labels,
                     np.asarray([len(e) for e in later], np.int32), test.codes, test.labels, np.float32(frozen.scale),
                     test.sessions)


class Outputs(NamedTuple):
    """Per-event outputs of one member, filled in as its events run (row i: after event i; row 0: event 0).

    Fields:
      accuracy: float32 [E], test accuracy.
      class_hits: int32 [E, num_classes]; session_hits: int32 [E, num_sessions]: correct test predictions.
      train_loss, train_accuracy: float32 [E], of the event's last training step (row 0: NaN, event 0's own
        history is the single run's).
      finite: bool [E], every step's loss of the event and the state after it are finite (a single run's check).
    """

    accuracy: jax.Array
    class_hits: jax.Array
    session_hits: jax.Array
    train_loss: jax.Array
    train_accuracy: jax.Array
    finite: jax.Array


class GroupProgram(NamedTuple):
    """The compiled learning phase of a group of M members (one static configuration; Q_LR, S_LR, seeds and the
    learning events' learning rate traced).

    init(adaptive_params, norm_state, bits int32 [M], scale float32 [M], seeds int32 [M], lrs float32 [M], data)
        -> (states: LearnerState with a leading [M] axis, outputs: `Outputs` [M, E] with row 0 filled)
    run(states, outputs, bits, scale, seeds, lrs, data, start, stop) -> (states, outputs) after learning events
        start..stop-1 (int32 scalars, 1 <= start <= stop <= E): one compiled program for every chunk of events,
        states and outputs donated. A driver calls it chunk by chunk (`clq.train.group`) to report progress,
        check for non-finite values and checkpoint between chunks; `make_sweep` calls it once.
    optimizer: the optax optimizer the programs were built with (its injected learning rate is the default).
    """

    init: Callable
    run: Callable
    optimizer: optax.GradientTransformation


def make_group_program(
    adaptive_specs: Sequence[LayerSpec],
    optimizer: optax.GradientTransformation,
    replay_size: int,
    latent_shape: Sequence[int],
    num_classes: int,
    composition: Composition,
    epochs: int,
    max_bits: int | None = 8,
    policy: str = "ar1",
    eval_chunk: int = 1000,
    members_per_batch: int | None = None,
    strategy: Strategy | None = None,
    norm: AdaptiveNorm | None = None,
    masked: bool = False,
    num_sessions: int = 1,
) -> GroupProgram:
    """Build the group's jitted programs.

    Args:
      adaptive_specs: layers l+1..28.
      optimizer: `clq.train.make_optimizer(...)` (learning rate injected: each member's is traced, `GroupProgram`).
      replay_size: N_LR (static: it is the buffer's shape).
      composition: the mini-batch composition shared by every learning event.
      max_bits: the largest Q_LR the program will be called with; fixes the codes' dtype (uint8 up to 8) and
        the buffer's packing (every member's codes are stored in max_bits-bit fields, as they must share shapes).
        None: FP32 replays.
      eval_chunk: test latents evaluated per step of the evaluation loop (bounds memory: M*chunk latents).
      members_per_batch: members vmapped together (`lax.map` over batches of them); None: all M.
      strategy: the learner's strategy (`clq.learn.make_strategy`); None: plain QLR.
      norm: the adaptive stage's normalization (`clq.train.norm.make_adaptive_norm`); None: folded.
      num_sessions: sessions of the test set (per-session hits).
      masked: events may need fewer iterations per epoch than `composition` (unequal sizes, one split of new
        and replays); each runs exactly its own (`clq.train.event.make_event_fn`).
    """
    dtype = None if max_bits is None else storage_dtype(check_bits(max_bits, "max_bits"))
    latent_shape = tuple(int(d) for d in latent_shape)
    hits = make_hits(adaptive_specs, num_classes, num_sessions)  # the single run's evaluator
    adaptive_norm = norm if norm is not None else make_adaptive_norm("fold", adaptive_specs)

    def member(bits, scale, seed, lr):
        """The learner and hyper-parameters of one member (bits/scale/seed/lr traced scalars)."""
        # Traced bits: encode/decode are jnp arithmetic; FP32 replays need neither. S_LR reaches the learner the
        # way a single run passes it (`Hyper.lr_scale`, applied by the learner's `ReplayBuffer.with_scale`).
        codec = make_latent_codec(None, 1.0) if max_bits is None else LatentCodec(bits, jnp.float32(1.0), dtype)
        buffer = make_replay_buffer(replay_size, latent_shape, codec, policy, num_classes, code_bits=max_bits)
        # The same learner step a single run jits (`clq.learn`), here looped over events and vmapped.
        learner = make_learner(adaptive_specs, optimizer, buffer, adaptive_norm, strategy or plain(), epochs)
        _, k_train, k_buf = jax.random.split(jax.random.PRNGKey(seed), 3)
        return learner, Hyper(lr, k_train, k_buf, None if max_bits is None else scale)

    def evaluation(state, data: SweepData):
        """(accuracy float32 (), class hits int32 [num_classes], session hits int32 [num_sessions])."""
        params = adaptive_norm.fold(state.params, state.norm)
        sessions = data.test_sessions if data.test_sessions is not None else jnp.zeros_like(data.test_labels)
        ch, sh = count_hits(hits, params, data.frozen_scale, EvalLatents(data.test_codes, data.test_labels, sessions),
                               eval_chunk)
        return jnp.sum(ch) / jnp.maximum(jnp.sum(data.test_labels >= 0), 1), ch, sh

    def decode(codes, data: SweepData):
        return codes.astype(jnp.float32) * data.frozen_scale

    def init_one(params, norm_state, bits, scale, seed, lr, data: SweepData):
        learner, hyper = member(bits, scale, seed, lr)
        n0 = data.codes0.shape[0]
        state = learner.init(params, norm_state, Event(decode(data.codes0, data), data.labels0, jnp.int32(n0),
                                                       jnp.int32(0)), hyper)
        e = data.event_n.shape[0] + 1
        acc, ch, sh = evaluation(state, data)
        nan = jnp.full((e,), jnp.nan, jnp.float32)
        out = Outputs(jnp.zeros((e,), jnp.float32).at[0].set(acc),
                      jnp.zeros((e, num_classes), jnp.int32).at[0].set(ch),
                      jnp.zeros((e, num_sessions), jnp.int32).at[0].set(sh), nan, nan,
                      jnp.ones((e,), bool).at[0].set(all_finite((state.params, state.norm))))
        return state, out

    def run_one(state, out: Outputs, bits, scale, seed, lr, data: SweepData, start, stop):
        learner, hyper = member(bits, scale, seed, lr)
        step = learner.step(composition, masked)

        def body(i, carry):
            state, out = carry
            j = i - 1  # learning event i is row j of the stacked event data
            event = Event(decode(data.event_codes[j], data), data.event_labels[j], data.event_n[j], i)
            state, m = step(state, event, hyper)
            acc, ch, sh = evaluation(state, data)
            last = m.last_index()
            ok = jnp.all(jnp.where(m.active, jnp.isfinite(m.loss), True)) & all_finite((state.params, state.norm))
            out = Outputs(out.accuracy.at[i].set(acc), out.class_hits.at[i].set(ch), out.session_hits.at[i].set(sh),
                          out.train_loss.at[i].set(m.loss[last]), out.train_accuracy.at[i].set(m.accuracy[last]),
                          out.finite.at[i].set(ok))
            return state, out

        return jax.lax.fori_loop(start, stop, body, (state, out))

    def over_members(fn, batched, shared):
        """lax.map over the members (vmapped `members_per_batch` at a time; None: all at once)."""
        m = jax.tree.leaves(batched)[0].shape[0]
        size = m if members_per_batch is None else min(members_per_batch, m)
        return jax.lax.map(lambda b: fn(*b, *shared), batched, batch_size=size)

    @jax.jit
    def init(adaptive_params, norm_state, bits, scale, seeds, lrs, data: SweepData):
        if data.test_codes.shape[0] % eval_chunk:
            raise ValueError(f"the test set ({data.test_codes.shape[0]}) must be padded to a multiple of "
                             f"eval_chunk={eval_chunk} (use sweep_data)")
        return over_members(lambda b, s, k, r, *sh: init_one(adaptive_params, norm_state, b, s, k, r, *sh),
                            (bits, scale, seeds, lrs), (data,))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def run(states, outputs, bits, scale, seeds, lrs, data: SweepData, start, stop):
        return over_members(run_one, (states, outputs, bits, scale, seeds, lrs), (data, start, stop))

    return GroupProgram(init, run, optimizer)


def make_sweep(*args, **kwargs) -> Callable[..., SweepResult]:
    """The whole learning phase of K bit-widths x S seeds in one call (`make_group_program`'s arguments; its init
    and one run over every event).

    Returns:
      ``sweep(adaptive_params, lr_bits, lr_scale, seeds, data, norm_state=()) -> SweepResult`` where
      adaptive_params is the post-event-0 adaptive tree in `norm`'s form (shared) and norm_state its running
      statistics, lr_bits int32 [K], lr_scale float32 [K] (`lr_scales`), seeds int32 [S], data a `SweepData`.
      K, S and the data's shapes are the only things that recompile.
    """
    program = make_group_program(*args, **kwargs)

    def sweep(adaptive_params, lr_bits, lr_scale, seeds, data: SweepData, norm_state=()) -> SweepResult:
        k, s = len(lr_bits), len(seeds)
        # Members flattened bit-width-major: member k*S + s is (lr_bits[k], seeds[s]).
        bits = jnp.repeat(jnp.asarray(lr_bits, jnp.int32), s)
        scale = jnp.repeat(jnp.asarray(lr_scale, jnp.float32), s)
        seed = jnp.tile(jnp.asarray(seeds, jnp.int32), k)
        # The optimizer's own (injected) learning rate: every member's learning events use it.
        lrs = jnp.full((k * s,), program.optimizer.init(adaptive_params).hyperparams["learning_rate"], jnp.float32)
        states, out = program.init(adaptive_params, norm_state, bits, scale, seed, lrs, data)
        e = data.event_n.shape[0] + 1
        states, out = program.run(states, out, bits, scale, seed, lrs, data, jnp.int32(1), jnp.int32(e))
        buf, num_classes = states.buffer, out.class_hits.shape[-1]
        hist = jax.vmap(lambda f, l: masked_counts(l, f, num_classes))(buf.filled, buf.labels)
        res = SweepResult(out.accuracy, out.train_loss[:, 1:], hist, out.class_hits, out.session_hits)
        return SweepResult(*(a.reshape(k, s, *a.shape[1:]) for a in res))

    sweep.program = program  # its jitted init/run, e.g. to count compilations
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
                  eval_chunk: int = 1000, initial_params=None, log: Callable[[str], None] | None = None,
                  event0_cache_dir: str | None = None, event0_memo: dict | None = None):
    """Event 0 and the frozen stage of the base run, exactly as `run_continual(..., seed=base_seed)` makes them.

    Args:
      train: `clq.train.TrainConfig` (event-0 fields used here).
      quant: `clq.quant.QuantConfig`, or None for an FP32 frozen stage.
      initial_params: optional (params, bn_stats) in BN form that event 0 starts from (as in `run_continual`).
      log: optional callable(message) told each phase (event-0 epochs, frozen stage, latents).
      event0_cache_dir, event0_memo: where event 0 may come from (`clq.train.event0.first_event`).
    Returns:
      `Prepared`
    """
    from clq.train.loop import calibrate_frozen_stage  # the run's own builder (the loop imports JAX programs)

    say = log or (lambda msg: None)
    ev0 = first_event(stream, specs, latent_layer, train, base_seed, initial_params, event0_cache_dir, event0_memo,
                      log)
    say(f"frozen stage: layers 0..{latent_layer} calibrated on event 0")
    folded = fold_batch_norm(specs, ev0.bn_params, ev0.bn_stats)
    frozen = calibrate_frozen_stage(stream, specs, latent_layer, folded, quant)
    say("latents: every image of the stream through the frozen stage, once")
    data = sweep_data(stream, frozen, eval_chunk)
    exp0 = stream.experiences[0]
    check = check_quantization(specs, latent_layer, folded, frozen, stream.train_images[exp0],
                               stream.train_labels[exp0], np.asarray(data.codes0))
    if check[1]:
        say("warning: " + check[1])
    # The adaptive stage in the form its normalization trains (as `run_continual` starts its learning events).
    _, adaptive_specs = split_specs(specs, latent_layer)
    norm = make_adaptive_norm(train.adaptive_norm, adaptive_specs, train.norm_momentum)
    adaptive = norm.init(ev0.bn_params[latent_layer + 1 :], ev0.bn_stats[latent_layer + 1 :])
    return Prepared(adaptive, frozen, data, ev0, check)


def _group_args(stream, specs, latent_layer, train, replay_size, policy, max_bits, eval_chunk, members_per_batch,
                event_sizes) -> tuple:
    """`make_group_program`'s arguments for a run's configuration (positional, in its order)."""
    comp, masked = shared_composition(event_sizes, replay_size, train.batch_size)
    _, adaptive_specs = split_specs(specs, latent_layer)
    optimizer = make_optimizer(train.lr, train.momentum, train.weight_decay)
    return (adaptive_specs, optimizer, replay_size, adaptive_specs[0].in_shape, stream.num_classes, comp,
            train.epochs, max_bits, policy, eval_chunk, members_per_batch,
            make_strategy(train.strategy, train.reset_momentum, optimizer.init, stream.num_classes),
            make_adaptive_norm(train.adaptive_norm, adaptive_specs, train.norm_momentum), masked,
            len(stream.session_names))


def group_program(stream, specs: Sequence[LayerSpec], latent_layer: int, train, replay_size: int, policy: str,
                  max_bits: int | None, eval_chunk: int, members_per_batch: int | None,
                  event_sizes: Sequence[int]) -> GroupProgram:
    """The `GroupProgram` of a run's configuration (`clq.train.TrainConfig` `train`, the stream's learning events
    of `event_sizes`): what `clq.train.group.run_group` runs."""
    return make_group_program(*_group_args(stream, specs, latent_layer, train, replay_size, policy, max_bits,
                                           eval_chunk, members_per_batch, event_sizes))
