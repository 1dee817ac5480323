"""`clq-vsweep` (also `python -m clq.vsweep`): K replay bit-widths x S seeds of the learning phase as one program.

    clq-vsweep                                               # vsweep.bits=[8,6,4] x vsweep.seeds=[0..4]
    clq-vsweep vsweep.bits=[8,7,6] vsweep.seeds=[0,1,2] latent_layer=23 replay.size=750

The experiment is `clq-run`'s (conf/config.yaml and its groups, validated by `clq.config.experiment_config`)
plus ``vsweep.bits`` and ``vsweep.seeds`` (conf/vsweep.yaml). Event 0, the frozen stage and every latent come
from one base run (``seed``); then the learning phase of every (Q_LR, seed) runs as ONE jitted call
(`clq.train.vectorized.run_sweep`). The member whose seed is the base seed is the same computation as `clq-run` with that
``replay.bits`` and ``seed``; another member shares the base run's stream and event 0 and draws its own training
and buffer randomness (a learning-phase replicate, not a `clq-run seed=s`).

Writes, in the run dir (``outputs/vsweep/<date>/<time>``): one folder per member, ``bits<Q>_seed<s>/results.json``
(the subset of `clq-run`'s schema that `clq.analysis.collect_runs` reads: status, config with that member's
``replay.bits`` and ``seed``, accuracy after every event, final/average accuracy, memory and cost report), so
``python -m clq.analysis <run dir>`` reads it like a multirun; and ``vsweep.json`` (the [K, S, E] accuracy array,
timings, the per-bit-width summary); members also carry per-class and per-session accuracy matrices and
forgetting, built as `clq-run` builds them (`clq.train.metrics.accuracy_record`). Not produced: the joint upper
bound, wandb runs and checkpoints (the learning phase is one call). Exit status 2 on a config error, before any
compute; 3 if a member's training loss became non-finite (its results.json says ``status: failed``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clq.analysis.collect import VSWEEP_FILE  # the run dir's marker: collect_runs lists its members, not it
from clq.config import ConfigError, ExperimentConfig, experiment_config
from clq.run import CONF_DIR, enable_compile_cache, end_failed_run, initial_params, load_stream, memory_report
from clq.tracking import write_json_atomic
from clq.train.evaluate import hit_rates
from clq.train.metrics import accuracy_record

__all__ = ["VSweepConfig", "vsweep_config", "check_vectorizable", "member_name", "run_vsweep", "main"]

MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class VSweepConfig:
    bits: tuple[int, ...]  # Q_LR of the K members' replay buffers, distinct, each in 1..16
    seeds: tuple[int, ...]  # the S learning-phase seeds, distinct, each in 0..2^31-1
    members_per_batch: int | None  # members vmapped together (lax.map over batches); None: all at once


def _int_list(value, field: str, lo: int, hi: int, what: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{field} must be a non-empty list of {what}, got {value!r}")
    if not value:
        raise ConfigError(f"{field} must be a non-empty list of {what}, got []")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{field}[{i}] must be an integer in {lo}..{hi} ({what}), got {v!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{field} must hold distinct values, got {list(value)}")
    return tuple(int(v) for v in value)


def vsweep_config(cfg: Mapping[str, Any]) -> VSweepConfig:
    """Validate the ``vsweep`` section of a composed config. Raises `ConfigError` naming the field."""
    v = cfg.get("vsweep")
    if not isinstance(v, Mapping):
        raise ConfigError(f"vsweep must be a mapping with keys bits and seeds, got {v!r}")
    keys = ("bits", "seeds", "members_per_batch")
    unknown = sorted(set(v) - set(keys))
    if unknown:
        raise ConfigError(f"vsweep.{unknown[0]} is not a key of vsweep (allowed: bits, seeds, members_per_batch)")
    missing = [k for k in keys if k not in v]
    if missing:  # the defaults are conf/vsweep.yaml's
        raise ConfigError(f"vsweep.{missing[0]} is missing: every key is set in conf/vsweep.yaml")
    bits = _int_list(v["bits"], "vsweep.bits", 1, 16,
                     "replay bit-widths Q_LR; null (FP32 latents) cannot be vectorized")
    seeds = _int_list(v["seeds"], "vsweep.seeds", 0, MAX_SEED, "non-negative seeds")
    mpb = v["members_per_batch"]
    if mpb is not None and (isinstance(mpb, bool) or not isinstance(mpb, int) or mpb < 1):
        raise ConfigError(f"vsweep.members_per_batch must be null (all members at once) or an integer >= 1, "
                          f"got {mpb!r}")
    return VSweepConfig(bits, seeds, mpb)


def check_vectorizable(exp: ExperimentConfig) -> None:
    """Refuse, before any compute, the parts of an experiment that `run_sweep` does not run."""
    if exp.joint_upper_bound:
        raise ConfigError("joint_upper_bound must be false for clq-vsweep (the joint bound does not depend on "
                          "replay.bits; run it once with clq-run joint_upper_bound=true)")
    if exp.replay.size < 1:
        raise ConfigError(f"replay.size must be >= 1 for clq-vsweep (a sweep over replay bit-widths needs a "
                          f"buffer), got {exp.replay.size}")
    if exp.export:
        raise ConfigError("export must be false for clq-vsweep (it writes no frozen-stage export; its members share "
                          "one frozen stage: export it with clq-run export=true at the same seed)")


def check_stream(stream, exp: ExperimentConfig) -> None:
    """Every learning event must share one split of new and replayed latents per mini-batch (`run_sweep`'s limit;
    iterations per epoch may differ); checked before event 0."""
    from clq.train.vectorized import shared_composition

    sizes = [len(e) for e in stream.experiences[1:]]
    if not sizes:
        raise ConfigError("the stream has no learning event after event 0; clq-vsweep needs at least one "
                          "(data.sessions / data.images_per_event)")
    try:
        shared_composition(sizes, exp.replay.size, exp.train.batch_size)
    except ValueError as e:
        raise ConfigError(f"clq-vsweep: {e} with replay.size={exp.replay.size} and train.batch_size="
                          f"{exp.train.batch_size}; run clq-run -m instead") from None


def member_name(bits: int, seed: int) -> str:
    """Folder of one member in the run dir."""
    return f"bits{bits}_seed{seed}"


def _log(msg: str) -> None:
    print(f"clq-vsweep: {msg}", flush=True)


def _member_config(resolved: dict, bits: int, seed: int) -> dict:
    cfg = copy.deepcopy({k: v for k, v in resolved.items() if k != "vsweep"})
    cfg["replay"] = {**cfg.get("replay", {}), "bits": bits}
    cfg["seed"] = seed
    return cfg


def _summary_rows(bits, acc_final: np.ndarray, memory: dict) -> list[dict]:
    rows = []
    for k, b in enumerate(bits):
        f = acc_final[k][np.isfinite(acc_final[k])]
        rows.append({"bits": b, "seeds": int(len(f)),
                     "final_accuracy_mean": float(f.mean()) if len(f) else math.nan,
                     "final_accuracy_std": float(f.std(ddof=1)) if len(f) > 1 else math.nan,  # as aggregate_seeds
                     "memory_lr_buffer": memory[b]["memory_bytes"]["lr_buffer"],
                     "memory_total": memory[b]["memory_bytes"]["total"]})
    return rows


def summary_table(rows: list[dict]) -> str:
    """Mean ± std (over seeds, ddof=1) of the final accuracy and the cost model's memory, per bit-width."""
    head = f"  {'Q_LR':>5}  {'seeds':>5}  {'final accuracy':>18}  {'LR buffer*':>14}  {'total memory*':>14}"
    lines = [head]
    for r in rows:
        std = "" if math.isnan(r["final_accuracy_std"]) else f" ± {100 * r['final_accuracy_std']:.2f}"
        acc = f"{100 * r['final_accuracy_mean']:.2f}{std} %"
        lines.append(f"  {'U' + str(r['bits']):>5}  {r['seeds']:>5}  {acc:>18}  {r['memory_lr_buffer']:>12,} B"
                     f"  {r['memory_total']:>12,} B")
    lines.append("  * cost model: bytes on the target device (latent replays bit-packed, one FP32 scale)")
    return "\n".join(lines)


def run_vsweep(exp: ExperimentConfig, vs: VSweepConfig, resolved: dict, run_dir: str) -> dict:
    """Run the sweep; write every member's results.json and vsweep.json in `run_dir`. Returns vsweep.json's dict.

    Everything that can be refused is checked before event 0: the memory report of every bit-width (with
    target.enforce_memory), the stream's event sizes.
    """
    from clq.train.vectorized import prepare_sweep, run_sweep

    t0 = time.perf_counter()
    specs = exp.model.specs()
    memory = {b: memory_report(replace(exp, replay=replace(exp.replay, bits=b)), specs) for b in vs.bits}
    _log(f"{len(vs.bits)} bit-widths {list(vs.bits)} x {len(vs.seeds)} seeds {list(vs.seeds)} = "
         f"{len(vs.bits) * len(vs.seeds)} members; base seed {exp.seed} (stream, event 0, frozen stage)")
    stream = load_stream(exp)
    if tuple(specs[0].in_shape) != tuple(stream.train_images.shape[1:]):
        raise ConfigError(f"model input {specs[0].in_shape} does not match the stream's images "
                          f"{stream.train_images.shape[1:]} (model.input_size vs data)")
    check_stream(stream, exp)
    t_load = time.perf_counter()
    _log(f"stream: {stream.summary()}")
    top = {"config": resolved, "run_dir": run_dir, "stream": stream.summary(), "lr_bits": list(vs.bits),
           "seeds": list(vs.seeds), "base_seed": exp.seed}
    path = os.path.join(run_dir, VSWEEP_FILE)
    write_json_atomic(path, {**top, "status": "running"})
    try:
        initial = initial_params(exp)
        _log(f"event 0: the whole network learns {len(stream.experiences[0])} images ({exp.train.first_epochs} "
             "epochs), then the frozen stage and the latents of the stream (once, shared by every member)")
        eval_chunk = min(exp.train.eval_batch_size, len(stream.test_labels))
        prepared = prepare_sweep(stream, specs, exp.latent_layer, exp.train, exp.quant, exp.seed, eval_chunk,
                                 initial_params=initial, log=_log if exp.progress else None)
        t_prep = time.perf_counter()
        _log(f"event 0 + frozen stage + latents: {t_prep - t_load:.1f} s")
        _log(f"compile + sweep: learning events 1..{stream.num_events - 1} of all "
             f"{len(vs.bits) * len(vs.seeds)} members as one jitted call (no progress until it returns)")
        out = run_sweep(stream, specs, exp.latent_layer, exp.train, exp.replay.size, list(vs.bits), list(vs.seeds),
                        exp.quant, exp.seed, exp.replay.policy, eval_chunk, prepared=prepared,
                        members_per_batch=vs.members_per_batch)
        t_sweep = time.perf_counter()
        _log(f"compile + sweep: {t_sweep - t_prep:.1f} s")
    except BaseException as e:
        write_json_atomic(path, {**top, "status": "failed", "error": f"{type(e).__name__}: {e}",
                                 "wall_time_s": round(time.perf_counter() - t0, 3)})
        raise

    frozen = prepared.frozen
    # The sweep's accuracy is hits / n_test in float32; hits is an exact count (float32 holds hits/n to far better
    # than 0.5/n for any test set below 2^23 images), so recover it and divide in float64 as `clq.train.evaluate`.
    n_test = len(stream.test_labels)
    acc = np.rint(out["accuracy"] * n_test) / n_test
    loss, hist = out["train_loss"], out["buffer_histogram"]
    # Per-class and per-session accuracy after every event, from the sweep's exact hit counts (as a single run).
    class_m, sess_m = hit_rates(out["class_hits"], stream.test_labels), hit_rates(out["session_hits"],
                                                                                 stream.test_sessions)
    n_members = len(vs.bits) * len(vs.seeds)
    total = time.perf_counter() - t0
    latent_shape = [int(d) for d in prepared.data.codes0.shape[1:]]
    failed = []
    for k, b in enumerate(vs.bits):
        lr_scale = float(np.float32(frozen.a_max / (2**b - 1)))
        for s, seed in enumerate(vs.seeds):
            name = member_name(b, seed)
            member_dir = os.path.join(run_dir, name)
            bad = np.flatnonzero(~np.isfinite(loss[k, s]))
            # As run_continual: a non-finite loss in learning event i ends the run after event i-1.
            done = acc[k, s] if not len(bad) else acc[k, s, : bad[0] + 1]
            curve = [float(a) for a in done]
            res = {
                "config": _member_config(resolved, b, seed), "run_dir": member_dir, "stream": stream.summary(),
                "status": "completed" if not len(bad) else "failed",
                **accuracy_record(stream, curve, class_m[k, s, : len(curve)], sess_m[k, s, : len(curve)]),
                "events": [{"event": i, "accuracy": a, "train_loss": None if i == 0 else float(loss[k, s, i - 1])}
                           for i, a in enumerate(curve)],
                "latent": {"layer": exp.latent_layer, "shape": latent_shape, "elements": int(np.prod(latent_shape)),
                           "a_max": float(frozen.a_max), "frozen_scale": float(frozen.scale), "lr_scale": lr_scale,
                           "lr_bits": b, "frozen_bits": frozen.bits},
                "buffer": {"filled": int(hist[k, s].sum()), "size": exp.replay.size,
                           "class_histogram": hist[k, s].tolist()},
                "memory_bytes": memory[b]["memory_bytes"], "cost": memory[b],
                # One call ran every member: each is charged an equal share of the sweep's wall time.
                "wall_time_s": round(total / n_members, 3),
                "vsweep": {"root": run_dir, "base_seed": exp.seed, "index": [k, s], "members": n_members,
                           "wall_time_s": round(total, 3)},
            }
            if len(bad):
                res["error"] = (f"NonFiniteError: non-finite loss in learning event {int(bad[0]) + 1}; lower "
                                f"train.lr ({exp.train.lr})")
                failed.append(f"{name}: {res['error']}")
            write_json_atomic(os.path.join(member_dir, "results.json"), res)

    rows = _summary_rows(vs.bits, acc[:, :, -1], memory)
    summary = {**top, "status": "completed" if not failed else "failed", "members": [member_name(b, s) for b in vs.bits for s in vs.seeds],
        "accuracy": acc, "final_accuracy": acc[:, :, -1], "train_loss": loss, "buffer_histogram": hist,
        "summary": rows, "failed_members": failed,
        "timing_s": {"load_stream_s": round(t_load - t0, 3), "event0_frozen_latents_s": round(t_prep - t_load, 3),
                     "compile_and_sweep_s": round(t_sweep - t_prep, 3), "total_s": round(total, 3)},
        "wall_time_s": round(total, 3)}
    write_json_atomic(path, summary)
    return summary


@hydra.main(config_path=CONF_DIR, config_name="vsweep", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    resolved = None
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        vs = vsweep_config(resolved)
        exp = experiment_config(resolved)
        check_vectorizable(exp)
        enable_compile_cache(exp.compile_cache_dir)
    except (OmegaConfBaseException, ConfigError) as e:
        return end_failed_run(2, f"clq-vsweep: config error: {e}", run_dir, resolved, f"ConfigError: {e}")
    try:
        summary = run_vsweep(exp, vs, resolved, run_dir)
    except (ConfigError, FileNotFoundError) as e:
        return end_failed_run(2, f"clq-vsweep: error: {e}", run_dir, resolved, f"{type(e).__name__}: {e}")
    except FloatingPointError as e:
        return end_failed_run(3, f"clq-vsweep: numerical error: {e}", run_dir, resolved, f"FloatingPointError: {e}")
    print(f"\nclq-vsweep finished: {run_dir}/{VSWEEP_FILE} and {len(vs.bits) * len(vs.seeds)} member folders "
          f"(python -m clq.analysis {run_dir})")
    print(summary_table(summary["summary"]))
    t = summary["timing_s"]
    print(f"  wall time {t['total_s']:.1f} s: event 0 + frozen stage + latents {t['event0_frozen_latents_s']:.1f} s, "
          f"compile + sweep {t['compile_and_sweep_s']:.1f} s")
    if summary["failed_members"]:
        for f in summary["failed_members"]:
            print(f"clq-vsweep: numerical error: {f}", file=sys.stderr)
        if hc.mode != RunMode.MULTIRUN:
            sys.exit(3)
        return None
    return float(np.mean(summary["final_accuracy"]))


def main() -> None:
    """Console-script entry point."""
    _app()


if __name__ == "__main__":
    main()
