"""`clq-run` (also `python -m clq`): the Hydra entry point, and the only place that turns config into objects.

    clq-run                                  # the default experiment on the offline Fashion-MNIST stream
    clq-run latent_layer=23 replay.bits=6 replay.size=750 seed=1
    clq-run replay=reservoir quant=fp32 tracking=none
    clq-run -m replay.bits=8,7,6 seed=0,1,2   # Hydra multirun

Each run writes, in its run dir (``outputs/<date>/<time>`` or the multirun subdir): ``results.json`` (the
resolved config, accuracy after each event, final accuracy, accuracy matrices, forgetting, the cost model's
memory breakdown on the device and its report, the replay buffer's measured RAM in this process, timings),
``events.jsonl`` (one line per event, written as the run goes) and, by default, an offline wandb run under
``wandb/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import replace

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clq.config import ConfigError, ExperimentConfig, experiment_config, sweep_group
from clq.train.checkpoint import CheckpointError
from clq.tracking import make_tracker, write_json_atomic

__all__ = ["main", "run_experiment", "completed_results", "failed_results", "log_summary", "summary_table", "initial_params", "load_stream", "memory_report", "run_fingerprint", "enable_compile_cache",
           "end_failed_run", "CONF_DIR", "WATCHED_KEYS", "MEMORY_BYTES_SOURCE"]


def load_stream(exp: ExperimentConfig):
    """Load the configured dataset and arrange it into the NICv2-style stream."""
    from clq.data import build_nic_stream, load_arrays, load_fashion_mnist

    d = exp.data
    if d.name == "core50":
        from clq.data.core50 import load_core50_stream

        try:
            return load_core50_stream(d.path, d.scenario, d.run, exp.model.input_size, d.test_list, d.filelists,
                                      d.labels, strict=d.strict, max_events=d.max_events)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if d.name == "fashion_mnist":
        x, y, xt, yt = load_fashion_mnist(d.path)
    else:
        try:
            x, y, xt, yt = load_arrays(d.path)
        except ValueError as e:  # a file that is not an arrays .npz: the user's data.path, not a bug
            raise ConfigError(str(e)) from None
    try:
        return build_nic_stream(
            x, y, xt, yt, d.num_classes, d.sessions, d.initial_classes, d.initial_images_per_class,
            d.images_per_event, d.test_size, exp.model.input_size, exp.seed,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def memory_report(exp: ExperimentConfig, specs) -> dict:
    """The cost model's report for this configuration; with target.enforce_memory, refuse what does not fit."""
    from clq.cost import cost_report, load_target

    try:
        report = cost_report(
            specs, exp.latent_layer, exp.replay.size, exp.replay.bits, exp.data.images_per_event,
            exp.train.epochs, exp.train.batch_size, load_target(exp.target),
            None if exp.quant is None else exp.quant.bits,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if exp.enforce_memory and not report["fits"]:
        over = ", ".join(f"{tier} by {b:,} B" for tier, b in report["overflow"].items())
        raise ConfigError(
            f"the configuration does not fit target {exp.target!r} (target.enforce_memory=true; cost model, packed "
            f"replays): {over}; the replay buffer alone is {report['memory_bytes']['lr_buffer']:,} B on the device "
            f"(replay.size={exp.replay.size}, "
            f"replay.bits={exp.replay.bits}, latent_layer={exp.latent_layer})")
    return report


#: What results.json's ``memory_bytes`` is, written beside it: the buffer's RAM is another figure.
MEMORY_BYTES_SOURCE = ("cost model: bytes on the target device (latent replays bit-packed, paper.md §5 "
                       "arithmetic); the replay buffer's measured RAM in this process is buffer.ram_bytes")


def summary_table(results: dict) -> str:
    mem = results.get("memory_bytes", {})
    rows = [
        ("learning events", f"{len(results['accuracy_per_event'])}"),
        ("final accuracy", f"{100 * results['final_accuracy']:.2f} %"),
        ("average accuracy", f"{100 * results['average_accuracy']:.2f} %"),
        ("forgetting (per class)", f"{100 * results['forgetting']['per_class']:.2f} points"),
    ]
    if "joint_accuracy" in results:
        rows.append(("joint upper bound", f"{100 * results['joint_accuracy']:.2f} %"))
    lat = results["latent"]
    bits = "FP32" if lat["lr_bits"] is None else f"UINT-{lat['lr_bits']}"
    rows.append(("latent replays", f"{results['buffer']['size']} x {lat['elements']} elements ({bits}) at layer {lat['layer']}"))
    if "lr_buffer" in mem:
        what = "FP32 latents" if lat["lr_bits"] is None else "codes bit-packed + one FP32 scale"
        rows.append(("replay buffer on the device (cost model)",
                     f"{mem['lr_buffer']:,} B ({mem['lr_buffer'] / 1e6:.3f} MB): {what}"))
    ram = results["buffer"].get("ram_bytes")
    if ram:
        what = "FP32 latents" if lat["lr_bits"] is None else "packed uint32 words"
        rows.append(("replay buffer in RAM here (measured)",
                     f"{ram['total']:,} B ({ram['total'] / 1e6:.3f} MB): {ram['latents']:,} B {what} + "
                     f"{ram['labels'] + ram['bookkeeping']:,} B labels and bookkeeping"))
    if "total" in mem:
        rows.append(("total memory on the device (cost model)", f"{mem['total']:,} B"))
    cost = results.get("cost", {})
    if "latency_s" in cost:
        rows.append((f"latency / event on {cost.get('config', {}).get('target', 'target')} (cost model)",
                     f"{cost['latency_s']['total']:.3g} s, {cost['energy_j']['total']:.3g} J"))
    qc = results.get("quantization_check")
    if qc:  # what quantizing the frozen stage cost event 0's network (clq.train.frozen_stage.check_quantization)
        rows.append(("event 0's network on its training images", f"{100 * qc['quantized_accuracy']:.2f} % with the "
                     f"quantized frozen stage, {100 * qc['fp32_accuracy']:.2f} % in FP32"))
    reused = []
    if results.get("event0_cached"):
        reused.append("event 0")
    lc = results.get("latent_cache")
    if lc and lc["hits"]:
        reused.append(f"{lc['hits']:,} of {lc['hits'] + lc['misses']:,} latents")
    if reused:  # what the disk caches (event0_cache_dir, latent_cache_dir) saved this run from computing
        rows.append(("reused from the disk caches", ", ".join(reused)))
    speed = results.get("speed")
    if speed:
        parts = [f"{name.replace('_', ' ')} {100 * ph['fraction_of_peak']:.0f} %"
                 for name, ph in speed["phases"].items() if ph["fraction_of_peak"] is not None and ph["gflop"] > 0]
        together = speed.get("group_learning_and_evaluation")
        if together and together["fraction_of_peak"] is not None:
            parts.append(f"learning events + evaluation of the group's {together['members']} member(s) "
                         f"{100 * together['fraction_of_peak']:.0f} %")
        rows.append((f"share of the FP32 matmul peak ({speed['peak_gflop_s']:.0f} GFLOP/s here)", ", ".join(parts)))
    rows.append(("wall time", f"{results['wall_time_s']:.1f} s"))
    w = max(len(k) for k, _ in rows)
    return "\n".join([f"  {k:<{w}}  {v}" for k, v in rows] + [f"  warning: {m}" for m in results.get("warnings", [])])


#: Config keys that only say how a run is watched or what it writes besides its results: a checkpoint written
#: under other values of these is still this run's.
WATCHED_KEYS = ("resume", "progress", "tracking", "checkpoint_every", "latent_cache_dir", "compile_cache_dir",
                "export", "event0_cache_dir")


def run_fingerprint(resolved: dict) -> str:
    """SHA-256 of the resolved config without `WATCHED_KEYS`: what must match for a checkpoint to be resumed
    (or exported by ``clq-export``)."""
    return hashlib.sha256(json.dumps({k: v for k, v in resolved.items() if k not in WATCHED_KEYS},
                                     sort_keys=True, default=str).encode()).hexdigest()


def initial_params(exp: ExperimentConfig):
    """(params, bn_stats) in BN form that event 0 starts from: ImageNet weights with a fresh classifier when
    ``model.weights=imagenet``, else None (from scratch)."""
    if exp.model.weights != "imagenet":
        return None
    import jax

    from clq.model.imagenet import load_imagenet_mobilenet_v1

    _, params, stats = load_imagenet_mobilenet_v1(exp.model.weights_path, exp.model.input_size,
                                                  exp.model.num_classes, key=jax.random.PRNGKey(exp.seed))
    return params, stats


def completed_results(base: dict, learning: dict, memory: dict, t0: float) -> dict:
    """results.json of a completed run: `base` (config, run dir, stream, export), the learning record
    (`clq.train.record.History.record`), the cost model's report `memory` (`memory_report`), wall time since t0."""
    return {**base, "status": "completed", **learning, "memory_bytes": memory["memory_bytes"],
            "memory_bytes_source": MEMORY_BYTES_SOURCE, "cost": memory,
            "wall_time_s": round(time.perf_counter() - t0, 3)}


def failed_results(base: dict, error: BaseException | str, events: list, memory: dict, t0: float) -> dict:
    """results.json of a run that stopped: its error and the events it completed (rows)."""
    err = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {**base, "status": "failed", "error": err, "events": events,
            "accuracy_per_event": [r["accuracy"] for r in events], "memory_bytes": memory["memory_bytes"],
            "memory_bytes_source": MEMORY_BYTES_SOURCE, "wall_time_s": round(time.perf_counter() - t0, 3)}


def log_summary(tracker, results: dict, run_dir: str) -> None:
    """The tracker's end of a completed run: wandb's run summary, then its tables, plots and artifact
    (`Tracker.log_results`, from results.json in `run_dir`)."""
    cost = results["cost"]
    tracker.log_summary({k: results[k] for k in ("final_accuracy", "average_accuracy", "wall_time_s")}
                        | {"forgetting": results["forgetting"]["per_class"],
                           "forgetting_per_session": results["forgetting"]["per_session"],
                           "memory_lr_buffer": cost["memory_bytes"]["lr_buffer"],
                           "memory_total": cost["memory_bytes"]["total"],
                           "latency_s": cost["latency_s"]["total"], "energy_j": cost["energy_j"]["total"],
                           "target": cost["config"]["target"]}
                        # the cost model's whole breakdown, per learning event on the target (paper.md §5)
                        | {f"memory/{k}": v for k, v in cost["memory_bytes"].items()}
                        | {f"latency_s/{k}": v for k, v in cost["latency_s"].items()}
                        | {f"energy_j/{k}": v for k, v in cost["energy_j"].items()}
                        | ({"joint_accuracy": results["joint_accuracy"]} if "joint_accuracy" in results else {}))
    tracker.log_results(results, run_dir)


def run_experiment(exp: ExperimentConfig, resolved: dict, run_dir: str) -> dict:
    """Run one experiment; write results.json (also on failure, with the events completed so far).

    With ``exp.export`` the quantized frozen stage is written to ``<run_dir>/export/frozen_stage.{npz,json,h}``
    as soon as it is built (`clq.quant.export.write_export`), and results.json records its paths and SHA-256s
    under ``export``.
    """
    if exp.tracking.backend == "wandb":  # first: the wandb host imports wandb while this process imports JAX
        from clq.tracking.wandb_host import prestart

        prestart()
    from tqdm.auto import tqdm

    from clq.train.loop import run_continual

    t0 = time.perf_counter()
    specs = exp.model.specs()
    memory = memory_report(exp, specs)  # cheap, and a bad target fails before any compute
    stream = load_stream(exp)
    tracker = make_tracker(run_dir, exp.tracking.backend, resolved, exp.tracking.project, exp.tracking.mode,
                           exp.tracking.group)
    events: list[dict] = []
    bar = tqdm(total=stream.num_events, desc="learning events", unit="event", disable=not exp.progress,
               dynamic_ncols=True)

    def on_event(i, row, detail=None):
        events.append(row)
        tracker.log_event(i, row, detail)
        bar.set_postfix(acc=f"{row['accuracy']:.3f}", loss=f"{row['train_loss']:.3f}")
        bar.update(1)

    initial = initial_params(exp)
    base = {"config": resolved, "run_dir": run_dir, "stream": stream.summary()}
    fingerprint = run_fingerprint(resolved)

    def on_frozen(stage):
        from clq.quant.export import EXPORT_DIR, write_export

        # In `base`: a run that fails after event 0 still records the export it wrote.
        base["export"] = write_export(os.path.join(run_dir, EXPORT_DIR), specs[: exp.latent_layer + 1],
                                      stage.layers, exp.quant)

    ok = False
    try:
        results = run_continual(
            stream, specs, exp.latent_layer, exp.train, exp.replay, exp.quant, exp.seed, exp.joint_upper_bound,
            on_event=on_event, log=(lambda m: bar.write(m)) if exp.progress else (lambda m: None),
            checkpoint_dir=os.path.join(run_dir, "checkpoints") if exp.checkpoint_every else None,
            checkpoint_every=max(exp.checkpoint_every, 1), resume=exp.resume, fingerprint=fingerprint,
            initial_params=initial, latent_cache_dir=exp.latent_cache_dir, event0_cache_dir=exp.event0_cache_dir,
            on_frozen=on_frozen if exp.export else None,
        )
        bar.close()
        from clq.perf import account_or_warning, flop_account, matmul_peak

        # How close each phase came to this machine's FP32 matmul peak, measured now, in this process (~0.15 s).
        results["speed"], warning = account_or_warning(
            lambda: flop_account(specs, exp.latent_layer, stream, exp.train, results, matmul_peak()))
        if warning:
            results.setdefault("warnings", []).append(warning)
        results = completed_results(base, results, memory, t0)
        write_json_atomic(os.path.join(run_dir, "results.json"), results)
        log_summary(tracker, results, run_dir)
        ok = True
        return results
    except BaseException as e:
        bar.close()
        write_json_atomic(os.path.join(run_dir, "results.json"), failed_results(base, e, events, memory, t0))
        raise
    finally:
        tracker.finish(ok)


#: conf/ at the repository root (the package is installed editable); absolute so `python -m clq` finds it too.
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


#: Upper bound of the persistent compilation cache on disk; JAX evicts least-recently-used programs beyond it,
#: and a bounded cache also makes JAX guard every read and write with a file lock, so that the members of a
#: joblib/Ray sweep can share one cache directory.
COMPILE_CACHE_MAX_BYTES = 2 << 30


def enable_compile_cache(cache_dir: str | None) -> None:
    """Turn on JAX's persistent compilation cache in `cache_dir` (None: leave it off).

    Must run before the process compiles its first program: JAX decides once whether it has a cache. Every
    program is cached, however fast it compiled, because a default run compiles ~60 programs whose compile time
    (~15 s of a ~60 s run on 2 cores, bench/results/e2e.json) is mostly many small ones. A cached program is the
    same executable, so results do not change (the determinism tests run with it on).

    Raises:
      ConfigError naming ``compile_cache_dir`` when the folder cannot be created.
    """
    if cache_dir is None:
        return
    import jax

    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"compile_cache_dir={cache_dir!r} is not usable: {e}") from None
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)


def end_failed_run(code: int, message: str, run_dir: str, resolved: dict | None, error: str) -> None:
    """End a failed run: a single run exits with `code`; a multirun member records the failure and returns.

    sys.exit inside a sweep member ends the whole sweep (Hydra's basic launcher loop, a joblib/loky worker and
    a Ray task alike), so a member writes ``results.json`` with ``status: failed`` and its error (unless
    `run_experiment` already wrote one, with the events completed so far) and returns None: the other members
    run, ``clq.analysis.collect_runs`` lists this one with its error, and the sweep's
    ``clq.analysis.callbacks.SweepSummary`` exits non-zero once every member has run.
    """
    print(message, file=sys.stderr)
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        sys.exit(code)
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        write_json_atomic(path, {"config": resolved, "run_dir": run_dir, "status": "failed", "error": error,
                                 "exit_code": code})


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    # JAX logs its accelerator probing at INFO through Hydra's root logger; it is noise on a CPU machine.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    resolved = None
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        exp = experiment_config(resolved)
        enable_compile_cache(exp.compile_cache_dir)
    except (OmegaConfBaseException, ConfigError) as e:
        return end_failed_run(2, f"clq-run: config error: {e}", run_dir, resolved, f"ConfigError: {e}")
    if multirun:  # ad-hoc `clq-run -m` sweeps are grouped too (`sweep_group`)
        exp = replace(exp, tracking=replace(exp.tracking, group=sweep_group(exp.tracking.group, hc.sweep.dir)))
    try:
        results = run_experiment(exp, resolved, run_dir)
    except (ConfigError, FileNotFoundError, CheckpointError) as e:
        return end_failed_run(2, f"clq-run: error: {e}", run_dir, resolved, f"{type(e).__name__}: {e}")
    except FloatingPointError as e:
        return end_failed_run(3, f"clq-run: numerical error: {e} (events so far are in {run_dir}/results.json)",
                              run_dir, resolved, f"FloatingPointError: {e}")
    except Exception as e:
        if not multirun:
            raise  # a single run keeps Python's traceback and exit status
        traceback.print_exc()
        return end_failed_run(1, f"clq-run: error: {type(e).__name__}: {e}", run_dir, resolved,
                              f"{type(e).__name__}: {e}")
    print(f"\nclq-run finished: {run_dir}/results.json")
    print(summary_table(results))
    return results["final_accuracy"]


def main() -> None:
    """Console-script entry point."""
    _app()


if __name__ == "__main__":
    main()
