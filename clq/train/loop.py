"""The learning-event loop of QLR-CL (paper.md §1, §3).

1. Event 0: train the whole network on the first experience, fold batch norm.
2. Calibrate and quantize the frozen stage (layers 0..l) on the first experience's images.
3. Compute test latents once; compute each training image's latent once (the frozen stage never changes
   again, so nothing is recomputed), the later events' ahead of their arrival, many events per call
   (`clq.train.frozen_stage.latents_ahead`).
4. The learner (`clq.learn`) starts from event 0's latents (buffer filled, strategy applied); then every
   later event is one compiled learner step (strategy, training, buffer update; the state donated), followed
   by an evaluation on the cached test latents. A checkpoint is the learner's state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.data.stream import Stream
from clq.model.forward import fold_batch_norm
from clq.model.specs import LayerSpec, split_specs
from clq.programs import persistent
from clq.quant.frozen import QuantConfig
from clq.quant.latent import make_latent_codec
from clq.learn import Event, Hyper, LearnerState, make_learner, make_strategy
from clq.replay.buffer import make_replay_buffer
from clq.train.checkpoint import CheckpointError, CheckpointWriter, load_checkpoint
from clq.train.config import ReplayConfig, TrainConfig
from clq.train.evaluate import evaluate, jit_count_hits, make_hits, pad_eval_latents
from clq.train.latent_cache import with_latent_cache
from clq.train.event import all_finite, make_learning_event, make_optimizer, minibatch_composition
from clq.train.event0 import first_event, network_shapes
from clq.train.norm import make_adaptive_norm
from clq.train.frozen_stage import FrozenStage, check_quantization, latents_ahead, make_frozen_stage
from clq.train.record import History, buffer_record, event_fields, latent_record

# One jitted reduction over an event's losses and the learning state after it: one check instead of one per leaf.
_ALL_FINITE = jax.jit(all_finite)

__all__ = ["TrainConfig", "ReplayConfig", "run_continual", "NonFiniteError", "JOINT_MAX_BYTES", "folded_shapes",
           "calibrate_frozen_stage", "restore_frozen_stage"]

#: Largest FP32 latent set the joint upper bound trains on in memory.
JOINT_MAX_BYTES = 8e9


@dataclass
class _Timer:
    """``with timer(name):`` adds the block's wall time to ``totals[name]``."""

    totals: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t


def folded_shapes(specs: Sequence[LayerSpec], train: TrainConfig):
    """Shapes and dtypes of the folded network event 0 leaves: the restore template of a checkpoint's
    ``folded`` tree (the classifier's form follows `train.head_bias` / `train.head_init`)."""
    return jax.eval_shape(lambda params, stats: fold_batch_norm(specs, params, stats), *network_shapes(specs, train))


def calibrate_frozen_stage(
    stream: Stream, specs: Sequence[LayerSpec], latent_layer: int, folded, quant: QuantConfig | None
) -> FrozenStage:
    """Layers 0..l of the folded network, calibrated on the first experience's images and quantized: the frozen
    stage `run_continual` builds after event 0, and that `restore_frozen_stage` rebuilds from a checkpoint.

    Args:
      folded: the whole network's folded parameters (a sequence of dicts, one per spec).
      quant: frozen-stage quantization, or None for an FP32 frozen stage.
    """
    frozen_specs, _ = split_specs(specs, latent_layer)
    return make_frozen_stage(frozen_specs, folded[: latent_layer + 1], stream.train_images[stream.experiences[0]],
                             quant)


def restore_frozen_stage(
    checkpoint_dir: str, fingerprint: str, stream: Stream, specs: Sequence[LayerSpec], latent_layer: int,
    train: TrainConfig, quant: QuantConfig | None,
) -> tuple[int, FrozenStage]:
    """The frozen stage of a run, rebuilt from the folded network in its newest checkpoint.

    Returns:
      (event of the checkpoint, the FrozenStage), equal to the run's own (calibration is deterministic).
    Raises:
      CheckpointError: no complete checkpoint in `checkpoint_dir`, or one of another configuration.
    """
    restored = load_checkpoint(checkpoint_dir, {"folded": folded_shapes(specs, train)})
    if restored is None:
        raise CheckpointError(f"{checkpoint_dir} holds no complete checkpoint")
    event, trees, meta = restored
    if meta.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{checkpoint_dir} holds a checkpoint of a different configuration")
    return event, calibrate_frozen_stage(stream, specs, latent_layer, trees["folded"], quant)


def run_continual(
    stream: Stream,
    specs: Sequence[LayerSpec],
    latent_layer: int,
    train: TrainConfig,
    replay: ReplayConfig,
    quant: QuantConfig | None,
    seed: int,
    joint_upper_bound: bool = False,
    on_event: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = lambda msg: None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 1,
    resume: bool = True,
    fingerprint: str = "",
    initial_params=None,
    latent_cache_dir: str | None = None,
    on_frozen: Callable[[FrozenStage], None] | None = None,
    event0_cache_dir: str | None = None,
    event0_memo: dict | None = None,
) -> dict:
    """Run one QLR-CL experiment over `stream`.

    Args:
      specs: the whole network's layer specs (input shape must match the stream's images).
      latent_layer: l; layers 0..l frozen after event 0.
      quant: frozen-stage quantization, or None for an FP32 frozen stage.
      on_event: called after every event with its index and that event's metrics row, and with the event's
        per-class / per-session accuracies (`clq.train.record.History`) when it takes a third argument (also for
        the events
        restored from a checkpoint, so sinks can rebuild their history).
      checkpoint_dir: where to write atomic checkpoints (None: no checkpoints).
      checkpoint_every: checkpoint after every k-th event (and always after event 0 and the last one).
      resume: continue from the newest complete checkpoint in `checkpoint_dir` if there is one.
      fingerprint: identifies the configuration; a checkpoint written under another one is refused.
      initial_params: optional (params, bn_stats) in BN form that event 0 starts from (pretrained weights).
      latent_cache_dir: shared on-disk latent cache (`clq.train.latent_cache`): runs with the same frozen
        stage (a sweep over replay bits/size at one seed) compute each image's latent once between them.
      on_frozen: called with the FrozenStage as soon as it is built (after event 0, or on resume), before any
        latent is computed (`clq.run` exports it there when ``export=true``).
      event0_cache_dir, event0_memo: where event 0 may come from instead of being trained
        (`clq.train.event0.first_event`: on disk, content-addressed; in this process).
    Returns:
      a JSON-able dict: accuracy_per_event, final_accuracy, accuracy matrices (per class, per session),
      forgetting, per-event training metrics, latent facts, the buffer's fill, class histogram and RAM bytes
      (`clq.replay.buffer_nbytes` of its state: packed latents, labels, bookkeeping), timing (seconds per phase).

    Every random draw derives from `seed` by `fold_in(key, event)`, so a run resumed from a checkpoint
    produces bit-identical numbers to an uninterrupted one.
    """
    frozen_specs, adaptive_specs = split_specs(specs, latent_layer)
    if tuple(specs[0].in_shape) != tuple(stream.train_images.shape[1:]):
        raise ValueError(f"model input {specs[0].in_shape} does not match the stream's images "
                         f"{stream.train_images.shape[1:]} (model.input_size vs data)")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    timer = _Timer()
    key = jax.random.PRNGKey(seed)
    _, k_train, k_buf = jax.random.split(key, 3)  # the first key is event 0's (`clq.train.event0`)
    K, S = stream.num_classes, len(stream.session_names)
    exp0 = stream.experiences[0]
    latent_shape = tuple(frozen_specs[-1].out_shape)
    optimizer, norm, _ = _learning_parts(tuple(adaptive_specs), train, K)
    eval_chunk = min(train.eval_batch_size, len(stream.test_labels))
    learner, init_learner, count, step_program = _learner_programs(tuple(adaptive_specs), train, replay,
                                                                   latent_shape, K, S, eval_chunk)

    # Shapes of everything a checkpoint holds, to restore onto without deserialising objects.
    folded_t = folded_shapes(specs, train)
    adaptive_t, norm_t = jax.eval_shape(  # the adaptive stage's (params, norm_state) as event 0 leaves them
        lambda params, stats: norm.init(params[latent_layer + 1 :], stats[latent_layer + 1 :]),
        *network_shapes(specs, train))
    templates = {
        "folded": folded_t,
        "learner": LearnerState(adaptive_t, jax.eval_shape(optimizer.init, adaptive_t),
                                jax.eval_shape(learner.buffer.init), norm_t,
                                jax.eval_shape(learner.strategy.init, adaptive_t)),
    }
    restored = load_checkpoint(checkpoint_dir, templates) if (checkpoint_dir and resume) else None
    if restored is not None and restored[2].get("fingerprint") != fingerprint:
        raise CheckpointError(f"{checkpoint_dir} holds a checkpoint of a different configuration; use a new run "
                              "dir or resume=false to start over")

    if restored is None:
        # 1. Event 0: the whole network learns the first experience.
        with timer("first_event_s"):
            ev0 = first_event(stream, specs, latent_layer, train, seed, initial_params, event0_cache_dir,
                              event0_memo, log)
            bn_params, bn_stats, history = ev0.bn_params, ev0.bn_stats, ev0.history
            folded = fold_batch_norm(specs, bn_params, bn_stats)
    else:
        done, trees, meta = restored
        folded, history = trees["folded"], [tuple(h) for h in meta["history"]]
        log(f"resuming from the checkpoint of event {done} in {checkpoint_dir}")

    # 2. Freeze + quantize layers 0..l, calibrated on the first experience (deterministic: redone on resume).
    with timer("frozen_calibration_s"):
        frozen = calibrate_frozen_stage(stream, specs, latent_layer, folded, quant)
    if on_frozen is not None:
        on_frozen(frozen)
    cache = None
    if latent_cache_dir:
        # An FP32 stage has no quantized layers to hash: its parameters identify it.
        frozen, cache = with_latent_cache(frozen, latent_cache_dir, frozen_specs,
                                          () if quant is not None else folded[: latent_layer + 1])

    # 3. Test latents once.
    with timer("frozen_pass_s"):
        test_codes = frozen.latents(stream.test_images)
    # On the device once: every evaluation reads the same test latents (`clq.train.evaluate.evaluate`).
    test = jax.device_put(pad_eval_latents(test_codes, stream.test_labels, stream.test_sessions, eval_chunk))
    # Event 0's latents fill the buffer; first they show what quantizing the frozen stage cost event 0's network.
    with timer("frozen_pass_s"):
        codes0 = frozen.latents(stream.train_images[exp0])
    with timer("eval_s"):
        quant_check, warning = check_quantization(specs, latent_layer, folded, frozen, stream.train_images[exp0],
                                                  stream.train_labels[exp0], codes0)

    def run_eval(params, norm_state=None):
        """Test accuracy of the adaptive stage; norm_state None: `params` are already folded (the joint bound)."""
        with timer("eval_s"):
            folded_params = params if norm_state is None else norm.fold(params, norm_state)
            return evaluate(count, folded_params, frozen.scale, test, stream.test_labels, stream.test_sessions)

    codec = make_latent_codec(replay.bits, frozen.a_max)
    # S_LR a traced value (`Hyper.lr_scale`): the compilation cache then serves every seed's learning step.
    hyper = Hyper(jnp.float32(train.lr), k_train, k_buf, jnp.float32(codec.scale))
    later = stream.experiences[1:]
    n_max = max((len(e) for e in later), default=1)
    compositions: set = set()

    def decode(codes):
        return jnp.asarray(codes, jnp.float32) * frozen.scale

    hist = History(stream, _with_detail(on_event), f"train.lr={train.lr}, train.first_event.lr={train.first_lr}",
                   log)
    hist.quantized(warning)
    rows = hist.rows  # per event: {"per_class", "per_session", "row"}; a checkpoint's meta holds them

    # Checkpoints are written in the background while the next event computes (`CheckpointWriter`); leaving
    # the block, normally or by an error, waits for the last one.
    with CheckpointWriter() as writer:
        def checkpoint(i):
            if checkpoint_dir and (i % checkpoint_every == 0 or i == stream.num_events - 1):
                with timer("checkpoint_s"):
                    # The folded network never changes after event 0: written once, not after every event
                    # (a third of the default run's checkpoint bytes).
                    writer.save(checkpoint_dir, i, {"learner": state},
                                {"fingerprint": fingerprint, "history": history, "rows": rows},
                                static={"folded": folded})

        if restored is None:
            # A copy: the learning step donates the state, and the joint bound restarts from `folded`.
            adaptive_params, norm_state = jax.tree.map(
                jnp.array, norm.init(bn_params[latent_layer + 1 :], bn_stats[latent_layer + 1 :]))
            # Event 0's latents fill the buffer (and the strategy sees event 0's data, e.g. CWR* consolidates it).
            with timer("buffer_s"):
                event0 = Event(decode(codes0), jnp.asarray(stream.train_labels[exp0]), jnp.int32(len(exp0)),
                               jnp.int32(0))
                state = init_learner(adaptive_params, norm_state, event0, hyper)
            hist.add(0, run_eval(state.params, state.norm), n_new=len(exp0), train_loss=history[-1][0],
                     train_accuracy=history[-1][1])
            checkpoint(0)
            first = 1
        else:
            state = trees["learner"]
            for r in meta["rows"]:
                hist.restore(r)
            first = done + 1

        # 4. Learning events 1.. : one compiled learner step each (`clq.learn`), state donated. Their latents are
        # computed ahead, many events per call of the frozen stage (`latents_ahead`).
        ahead = latents_ahead(frozen.latents, stream.train_images, stream.experiences[first:], codes0[0].nbytes)
        for i in range(first, stream.num_events):
            idx = stream.experiences[i]
            with timer("frozen_pass_s"):
                codes = next(ahead)
            n_new = len(idx)
            pad = n_max - n_new
            new_x = np.concatenate([codes, np.zeros((pad, *latent_shape), codes.dtype)]) if pad else codes
            event = Event(decode(new_x), jnp.asarray(np.concatenate([stream.train_labels[idx], np.zeros(pad, np.int32)])),
                          jnp.int32(n_new), jnp.int32(i))
            comp = minibatch_composition(n_new, replay.size, train.batch_size)
            compositions.add(comp)
            with timer("train_s"):
                state, m = step_program(comp)(state, event, hyper)
                loss = np.asarray(m.loss)
            if not bool(_ALL_FINITE((m.loss, state.params, state.norm))):
                bad = ~np.isfinite(loss)
                step = int(np.argmax(bad)) if bad.any() else len(loss) - 1  # a bad loss, else the state after
                raise NonFiniteError(hist.non_finite(i, train.lr, (step, len(loss))), completed=[r["row"] for r in rows])
            hist.add(i, run_eval(state.params, state.norm), **event_fields(
                n_new, float(loss[-1]), float(np.asarray(m.accuracy)[-1]), comp, train.epochs))
            checkpoint(i)

        with timer("checkpoint_s"):
            writer.wait()  # the last checkpoint is committed (and its time counted) before the run's record

        results = hist.record(history, latent_record(latent_layer, latent_shape, frozen, codec.scale, replay.bits),
                              buffer_record(state.buffer, replay.size, K), len(compositions),
                              None if restored is None else restored[0])
        # Whether event 0 came from the event-0 cache (None: restored from a checkpoint, not run here).
        results["event0_cached"] = ev0.cached if restored is None else None
        results["quantization_check"] = quant_check  # None for an FP32 frozen stage
        if cache is not None:
            results["latent_cache"] = {"dir": cache.directory, **dataclasses.asdict(cache.stats)}
        if joint_upper_bound:
            with timer("joint_s"):
                results["joint_accuracy"] = _joint(stream, frozen, folded[latent_layer + 1 :], adaptive_specs, train,
                                                   run_eval, jax.random.fold_in(key, 7))
        results["timing_s"] = {k: round(v, 3) for k, v in timer.totals.items()}
        return results


@functools.lru_cache(maxsize=8)
def _learning_parts(adaptive_specs: tuple[LayerSpec, ...], train: TrainConfig, num_classes: int):
    """(optimizer, adaptive normalization, strategy) of a run's learning events, built once per process and
    setting (`_learner_programs` says why)."""
    optimizer = make_optimizer(train.lr, train.momentum, train.weight_decay)
    norm = make_adaptive_norm(train.adaptive_norm, adaptive_specs, train.norm_momentum)
    return optimizer, norm, make_strategy(train.strategy, train.reset_momentum, optimizer.init, num_classes)


@functools.lru_cache(maxsize=8)
def _learner_programs(adaptive_specs: tuple[LayerSpec, ...], train: TrainConfig, replay: ReplayConfig,
                      latent_shape: tuple[int, ...], num_classes: int, num_sessions: int, eval_chunk: int):
    """(learner, its jitted ``init``, the jitted evaluation `jit_count_hits`, ``step_program(composition)``: the
    learner's jitted step kept on disk whole, `clq.programs`) of one run's settings and shapes.

    Built once per process and key: every program of a learner (its step per composition, its init) and the
    evaluation are closures of these objects, so a second run of the same settings in this process (the tests, a
    notebook that runs a configuration again, a sweep's members run one by one) reuses them, traced and compiled,
    instead of tracing, lowering and loading them again (~0.5 s of a tiny run on 2 cores). Pure functions of
    their arguments: sharing them changes no number. The latents' scale S_LR is no part of the key: every program
    takes it as `Hyper.lr_scale` (the buffer's codec is rebuilt with it, `ReplayBuffer.with_scale`), so runs at
    other seeds share the programs too; the codec here only fixes the bits and dtype.
    """
    optimizer, norm, strategy = _learning_parts(adaptive_specs, train, num_classes)
    buffer = make_replay_buffer(replay.size, latent_shape, make_latent_codec(replay.bits, 1.0), replay.policy,
                                num_classes)
    learner = make_learner(adaptive_specs, optimizer, buffer, norm, strategy, train.epochs)
    settings = (adaptive_specs, train, replay, latent_shape, num_classes)

    # The learning event is the run's second largest program: loaded traced, a new process does not trace and
    # lower it (~0.5 s on 2 cores); its init and the evaluation likewise (`clq.programs`).
    @functools.lru_cache(maxsize=None)
    def step_program(composition):
        return persistent(learner.jit_step(composition), "learner.step", (settings, composition), donate_argnums=(0,))

    init = persistent(jax.jit(learner.init), "learner.init", settings)
    count = persistent(jit_count_hits(make_hits(adaptive_specs, num_classes, num_sessions), eval_chunk),
                       "learner.count_hits", (settings, num_sessions, eval_chunk))
    return learner, init, count, step_program


def _with_detail(on_event):
    """`on_event` as History calls it, (i, row, detail): a callback of (i, row) does not get the detail."""
    import inspect

    if on_event is None:
        return None
    try:
        params = inspect.signature(on_event).parameters.values()
    except (TypeError, ValueError):
        return on_event
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params):
        return on_event
    return lambda i, row, detail: on_event(i, row)


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or parameter; `completed` holds the metrics rows finished before."""

    def __init__(self, message: str, completed: list):
        super().__init__(message)
        self.completed = completed


def _joint(stream, frozen, params, adaptive_specs, train: TrainConfig, run_eval, key) -> float:
    """Upper bound: the same frozen stage; the adaptive stage (from its post-event-0 state) trained i.i.d.
    on the latents of the whole stream for `train.joint_epochs` epochs, no replay.

    Latents are computed as the run computes them, event 0's, then the later events' ahead in bounded calls
    (`latents_ahead`; lazy image sources are never decoded whole, and a latent cache serves the run's own unless
    it was resumed: its windows then started elsewhere), and kept in the frozen stage's dtype; the FP32 copy the
    compiled training needs must fit in memory.
    """
    idx = np.concatenate(stream.experiences)
    need = len(idx) * int(np.prod(adaptive_specs[0].in_shape)) * 4
    if need > JOINT_MAX_BYTES:
        raise ValueError(f"joint_upper_bound needs {need / 1e9:.1f} GB of FP32 latents for {len(idx)} images, "
                         f"more than {JOINT_MAX_BYTES / 1e9:.0f} GB; set joint_upper_bound=false or cut later")
    exp = stream.experiences
    codes0 = frozen.latents(stream.train_images[exp[0]])
    codes = np.concatenate([codes0, *latents_ahead(frozen.latents, stream.train_images, exp[1:], codes0[0].nbytes)])
    x = jnp.asarray(codes, jnp.float32) * frozen.scale
    y = jnp.asarray(stream.train_labels[idx])
    empty = make_replay_buffer(0, tuple(x.shape[1:]), make_latent_codec(None, 1.0), "ar1", stream.num_classes)
    optimizer = make_optimizer(train.lr, train.momentum, train.weight_decay)
    comp = minibatch_composition(len(idx), 0, train.batch_size)
    fn = make_learning_event(adaptive_specs, optimizer, empty, comp, train.joint_epochs)
    params = jax.tree.map(jnp.array, params)
    params, _, _, _ = fn(params, optimizer.init(params), x, y, jnp.int32(len(idx)), empty.init(), key)
    return run_eval(params)["accuracy"]  # folded parameters, whatever the learning events' normalization
