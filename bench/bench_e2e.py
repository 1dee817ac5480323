"""End-to-end time of the default experiment, its split by phase, and what the persistent compilation cache saves.

    .venv/bin/python bench/bench_e2e.py                 # ~6 min on the 2-core machine; writes bench/results/e2e.json

Each run is the default experiment (`clq-run` with conf/config.yaml: MobileNet-V1 0.5 / 32 px, Fashion-MNIST
NICv2-style stream, 76 events, l = 19, checkpoints after every event, offline wandb) through
`clq.run.run_experiment`, the function `clq-run` calls, in a fresh Python process, so that every run pays
what a user's run pays (imports, compilation). The split comes from `results['timing_s']`; compile time from
`jax.monitoring` (it overlaps the phases: a function compiles inside the phase that first calls it).

Variants, interleaved over --repeats rounds so that machine noise hits both alike:

* ``no cache``: `clq-run compile_cache_dir=null`, every program compiled in the run (a user's first run);
* ``warm cache``: the same run with JAX's persistent compilation cache (`clq.run.enable_compile_cache`, on by
  default in `clq-run`) filled by an earlier run: the second and later runs of any configuration load their
  compiled programs instead of compiling them.

Reported: the best and median wall time of each variant and their ratio, and the phase split of the best
no-cache run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import best_and_median, machine, run_json_worker, write_result  # noqa: E402

PHASES = {  # reported name: keys of results['timing_s'] summed into it
    "event 0 (whole-network training)": ("first_event_s",),
    "frozen stage (calibration + one pass per image)": ("frozen_calibration_s", "frozen_pass_s"),
    "adaptive training (learning events)": ("train_s",),
    "evaluation": ("eval_s",),
    "buffer updates": ("buffer_s",),
    "checkpoints": ("checkpoint_s",),
}


def worker(args) -> None:
    """One default experiment in this process; prints one JSON line."""
    t_start = time.perf_counter()
    if args.cache_dir:
        from clq.run import enable_compile_cache

        enable_compile_cache(args.cache_dir)
    from bench.common import CompileClock, default_config
    from clq.config import experiment_config
    from clq.run import run_experiment

    clock = CompileClock()
    resolved = default_config(["tracking.mode=offline", "progress=false", *args.overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        r = run_experiment(experiment_config(resolved), resolved, run_dir)
    print(json.dumps({"wall_s": time.perf_counter() - t_start, "run_wall_s": r["wall_time_s"],
                      "timing_s": r["timing_s"], "speed": r.get("speed"), "compile": clock.snapshot(),
                      "final_accuracy": r["final_accuracy"]}))


def run_worker(cache_dir: str | None, overrides) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker"]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    if overrides:
        cmd += ["--overrides", *overrides]
    return run_json_worker(cmd, "warm cache" if cache_dir else "no cache",
                           env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})


def split(run: dict) -> dict:
    """A worker run's seconds per reported phase, its compile time and its process wall time."""
    return {**{name: round(sum(run["timing_s"].get(k, 0.0) for k in keys), 3) for name, keys in PHASES.items()},
            "compile (inside the phases above)": run["compile"]["total_s"], "total (process)": round(run["process_s"], 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="rounds of (no cache, warm cache)")
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of the default experiment")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    info = machine()
    with tempfile.TemporaryDirectory(prefix="clq-jax-cache-") as cache:
        fill = run_worker(cache, args.overrides)  # fills the cache (a cold-cache run)
        print(f"cache-filling run: {fill['process_s']:.1f} s", file=sys.stderr)
        runs = {"no cache": [], "warm cache": []}
        for r in range(args.repeats):
            for variant in runs:
                res = run_worker(cache if variant == "warm cache" else None, args.overrides)
                runs[variant].append(res)
                print(f"round {r}: {variant}: {res['process_s']:.1f} s (compile {res['compile']['total_s']:.1f} s, "
                      f"final accuracy {res['final_accuracy']:.4f})", file=sys.stderr)
    walls = {v: best_and_median([x["process_s"] for x in rs]) for v, rs in runs.items()}
    best = min(runs["no cache"], key=lambda x: x["process_s"])
    best_warm = min(runs["warm cache"], key=lambda x: x["process_s"])
    result = {
        "benchmark": "end-to-end default experiment (clq-run defaults), phase split, persistent compilation cache",
        "command": "python bench/bench_e2e.py" + (f" --overrides {' '.join(args.overrides)}" if args.overrides else ""),
        "wall_s": walls,
        "warm_cache_over_no_cache": walls["warm cache"]["best"] / walls["no cache"]["best"],
        "split_of_best_no_cache_run_s": split(best),
        "split_of_best_warm_cache_run_s": split(best_warm),
        "compile_of_best_no_cache_run": best["compile"],
        # FLOP, seconds, GFLOP/s and share of the FP32 matmul peak (measured in the worker) of each phase.
        "speed_of_best_no_cache_run": best.get("speed"),
        "speed_of_best_warm_cache_run": best_warm.get("speed"),
        "final_accuracy": best["final_accuracy"],
        "cache_filling_run": fill,
        "runs": runs,
        "machine": info,
    }
    path = write_result("e2e", result, args.out)
    print("| phase | no cache (s) | warm cache (s) |\n|---|---|---|")
    for k, v in result["split_of_best_no_cache_run_s"].items():
        print(f"| {k} | {v:.1f} | {result['split_of_best_warm_cache_run_s'][k]:.1f} |")
    print(f"warm/no cache: {result['warm_cache_over_no_cache']:.2f}; wrote {os.path.relpath(path, ROOT)}")
    return result


if __name__ == "__main__":
    main()
