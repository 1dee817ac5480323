"""The driver of a group: the learning phase of M sweep members as one compiled program, run chunk by chunk.

A group is a set of runs that differ only in values a program can trace (Q_LR, hence S_LR; the learning events'
learning rate): the same stream,
seed, event 0, frozen stage, latent layer, replay size and policy, strategy and event shapes. `run_group` takes
what they share (`clq.train.vectorized.Prepared`: event 0, the frozen stage, every latent once) and runs

    init (event 0's latents into each member's buffer, evaluation) -> run(events a..b) -> run(events b..c) ...

with `clq.train.vectorized.make_group_program`: one compilation for every chunk. Between chunks, on the host:

* each member's metrics rows go to its sinks (`on_event`: events.jsonl, wandb), as a single run's do;
* non-finite losses or parameters end that member (as `run_continual` ends a run: rows up to the event before,
  a `NonFiniteError`); the others go on;
* the group's state (every member's learner state and outputs) is checkpointed atomically: a group killed at any
  moment resumes from its last chunk and gives bit-identical numbers;
* a progress bar advances.

Each member's record is built by the single run's builder (`clq.train.record.History`), so results.json has
the same schema. Numbers equal a single run's up to the summation order of vmapped matmuls (docs/sweeps.md).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.model.specs import LayerSpec
from clq.quant.latent import make_latent_codec
from clq.replay.buffer import buffer_nbytes, make_replay_buffer
from clq.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from clq.train.config import TrainConfig
from clq.train.evaluate import evaluation_from_hits
from clq.train.event import minibatch_composition
from clq.train.loop import NonFiniteError
from clq.train.record import History, buffer_record, event_fields, latent_record
from clq.train.vectorized import Prepared, group_program, lr_scales

__all__ = ["run_group", "EVENTS_PER_CHUNK"]

#: Learning events per chunk: progress, non-finite checks and checkpoints happen between chunks.
EVENTS_PER_CHUNK = 8


def _member(tree, m: int):
    return jax.tree.map(lambda x: np.asarray(x[m]), tree)


def run_group(
    stream,
    specs: Sequence[LayerSpec],
    latent_layer: int,
    train: TrainConfig,
    replay_size: int,
    policy: str,
    bits: Sequence[int | None],
    prepared: Prepared,
    *,
    on_event: Callable[[int, int, dict, dict], None] | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int], None] | None = None,
    checkpoint_dir: str | None = None,
    fingerprint: str = "",
    resume: bool = True,
    events_per_chunk: int = EVENTS_PER_CHUNK,
    members_per_batch: int | None = None,
    eval_chunk: int = 1000,
    seed: int = 0,
    lrs: Sequence[float] | None = None,
) -> list:
    """The learning phase of every member of a group.

    Args:
      stream, specs, latent_layer, train: the members' shared experiment (`run_continual`'s arguments).
      replay_size, policy: the members' shared buffer.
      bits: Q_LR of each of the M members: integers 1..16, or all None (FP32 replays).
      prepared: `clq.train.vectorized.prepare_sweep`'s result for this stream, seed, latent layer and quantization.
      on_event: called with (member, event index, metrics row, detail) as each row is ready (detail as
        `clq.train.record.History`'s) (also for rows restored
        from a checkpoint, so sinks can rebuild their history).
      progress: called with the number of events completed so far (the same for every member) after each chunk.
      checkpoint_dir: where the group's atomic checkpoints go (None: none); `fingerprint` identifies the group.
      events_per_chunk: learning events per compiled call.
      seed: the members' seed (training and buffer keys, as `run_continual`'s).
      lrs: each member's learning rate of the learning events (traced; None: ``train.lr`` for all).
    Returns:
      one entry per member: the learning record (the dict `run_continual` returns, ``timing_s`` being the
      group's), or a `NonFiniteError` whose ``completed`` holds the rows before the bad event.
    Raises:
      CheckpointError: `checkpoint_dir` holds a checkpoint of another group.
    """
    if not bits:
        raise ValueError("a group needs at least one member")
    fp32 = [b is None for b in bits]
    if any(fp32) and not all(fp32):
        raise ValueError(f"a group's members store replays all as FP32 or all as codes, got bits {list(bits)}")
    if events_per_chunk < 1:
        raise ValueError(f"events_per_chunk must be >= 1, got {events_per_chunk}")
    timer: dict[str, float] = {}
    t0 = time.perf_counter()
    M, E, K = len(bits), stream.num_events, stream.num_classes
    (params, norm_state), frozen, data, ev0 = prepared.adaptive, prepared.frozen, prepared.data, prepared.event0
    max_bits = None if all(fp32) else max(bits)
    program = group_program(stream, specs, latent_layer, train, replay_size, policy, max_bits, eval_chunk,
                            members_per_batch, [int(n) for n in np.asarray(data.event_n)])
    b = np.asarray([0 if x is None else x for x in bits], np.int32)
    scale = np.ones(M, np.float32) if max_bits is None else lr_scales(bits, frozen.a_max)
    seeds = np.full(M, seed, np.int32)
    lrs = [train.lr] * M if lrs is None else list(lrs)
    lr = np.asarray(lrs, np.float32)
    init_args = (params, norm_state, b, scale, seeds, lr, data)
    restored = None
    if checkpoint_dir and resume:  # restored onto the shapes the program's init gives (traced, not run)
        templates = dict(zip(("states", "outputs"), jax.eval_shape(program.init, *init_args)))
        restored = load_checkpoint(checkpoint_dir, templates)
    if restored is not None and restored[2].get("fingerprint") != fingerprint:
        raise CheckpointError(f"{checkpoint_dir} holds a checkpoint of a different group; use a new sweep dir or "
                              "resume=false")

    hists = [History(stream, None if on_event is None else (lambda i, row, d, m=m: on_event(m, i, row, d)),
                     f"train.lr={lrs[m]}, train.first_event.lr={train.first_lr}", log) for m in range(M)]
    for h in hists:
        h.quantized(prepared.quant_check[1], announce=False)  # `prepare_sweep` told it once
    failed: dict[int, tuple[int, str]] = {}
    exp0 = stream.experiences[0]
    test_labels, test_sessions = stream.test_labels, stream.test_sessions
    sizes = [len(e) for e in stream.experiences]
    comps = [None] + [minibatch_composition(n, replay_size, train.batch_size) for n in sizes[1:]]

    def add_rows(out, start: int, stop: int) -> None:
        """Rows of events start..stop-1 of every member still running; an event with a non-finite loss or state
        (the program's per-event check, as a single run checks after every event) ends that member."""
        loss, finite = np.asarray(out.train_loss), np.asarray(out.finite)
        for m in range(M):
            if m in failed:
                continue
            for i in range(start, stop):
                if not finite[m, i]:
                    failed[m] = (i, hists[m].non_finite(i, lrs[m]))
                    break
                ev = evaluation_from_hits(np.asarray(out.class_hits[m, i], np.int64),
                                          np.asarray(out.session_hits[m, i], np.int64), test_labels, test_sessions)
                if i == 0:
                    fields = {"n_new": len(exp0), "train_loss": ev0.history[-1][0],
                              "train_accuracy": ev0.history[-1][1]}
                else:
                    fields = event_fields(sizes[i], float(loss[m, i]), float(out.train_accuracy[m, i]), comps[i],
                                          train.epochs)
                hists[m].add(i, ev, **fields)

    def checkpoint(done: int, states, out) -> None:
        if checkpoint_dir:
            t = time.perf_counter()
            save_checkpoint(checkpoint_dir, done, {"states": states, "outputs": out},
                            {"fingerprint": fingerprint, "failed": {str(m): v for m, v in failed.items()},
                             "rows": [h.rows for h in hists]})
            timer["checkpoint_s"] = timer.get("checkpoint_s", 0.0) + time.perf_counter() - t

    t = time.perf_counter()
    if restored is None:
        states, out = program.init(*init_args)
        out = jax.tree.map(np.asarray, out)
        add_rows(out, 0, 1)
        checkpoint(0, states, out)
        first = 1
    else:
        done, trees, meta = restored
        states, out = trees["states"], trees["outputs"]
        failed = {int(m): tuple(v) for m, v in meta["failed"].items()}
        for h, rows in zip(hists, meta["rows"]):
            for r in rows:
                h.restore(r)
        first = done + 1
        log(f"group resumed from its checkpoint after event {done} in {checkpoint_dir}")
    if progress is not None:
        progress(first)
    start = first
    while start < E and len(failed) < M:
        stop = min(start + events_per_chunk, E)
        states, out = program.run(states, out, b, scale, seeds, lr, data, jnp.int32(start), jnp.int32(stop))
        out = jax.tree.map(np.asarray, out)
        add_rows(out, start, stop)
        checkpoint(stop - 1, states, out)
        if progress is not None:
            progress(stop)
        start = stop
    timer["learning_events_s"] = time.perf_counter() - t - timer.get("checkpoint_s", 0.0)
    timer["total_s"] = time.perf_counter() - t0

    latent_shape = tuple(data.codes0.shape[1:])
    n_comp = len(set(comps[1:]))
    results = []
    for m in range(M):
        if m in failed:
            i, msg = failed[m]
            results.append(NonFiniteError(msg, completed=[r["row"] for r in hists[m].rows]))
            continue
        lr_scale = 1.0 if max_bits is None else float(scale[m])
        buf = buffer_record(_member(states.buffer, m), replay_size, K)
        # The group packs every member at its largest Q_LR; a member's RAM is what its own buffer holds in a run.
        own = make_replay_buffer(replay_size, latent_shape, make_latent_codec(bits[m], frozen.a_max), policy, K)
        buf["ram_bytes"] = buffer_nbytes(jax.eval_shape(own.init))
        rec = hists[m].record(ev0.history, latent_record(latent_layer, latent_shape, frozen, lr_scale, bits[m]), buf,
                              n_comp, None if restored is None else restored[0])
        rec["timing_s"] = {k: round(v, 3) for k, v in timer.items()}
        results.append(rec)
    return results
