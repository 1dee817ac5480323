"""End-to-end time of the default experiment, its split by phase, and what clq's caches save, side by side with
an earlier commit.

    .venv/bin/python bench/bench_e2e.py                      # ~5 min on the 2-core machine; writes bench/results/e2e.json
    .venv/bin/python bench/bench_e2e.py --against HEAD~3     # also that commit's default run, interleaved (~7 min)

Each run is the default experiment (`clq-run` with conf/config.yaml: MobileNet-V1 0.5 / 32 px, Fashion-MNIST
NICv2-style stream, 76 events, l = 19, checkpoints after every event, offline wandb) through
`clq.run.run_experiment`, the function `clq-run` calls, in a fresh Python process, so that every run pays
what a user's run pays (imports, compilation). The split comes from `results['timing_s']`; compile time from
`jax.monitoring` (it overlaps the phases: a function compiles inside the phase that first calls it).

Variants, interleaved over --repeats rounds so that machine noise hits all alike:

* ``no cache``: every cache empty (a first run on a fresh machine): every program compiled in the run, event 0
  and the latents computed and written to empty caches of their own, as `clq-run` does by default;
* ``warm cache``: JAX's persistent compilation cache (`clq.run.enable_compile_cache`, on by default in
  `clq-run`) filled by an earlier run, the event-0 and latent caches empty (and written): the first run of a
  configuration;
* ``rerun``: every cache clq-run keeps by default filled by an earlier run of the same command: compiled
  programs, event 0 (`event0_cache_dir`) and the frozen stage's latents (`latent_cache_dir`). What a second run
  of a configuration pays, and a sweep member whose event 0 (or frozen stage) another run has computed;
* ``REV, warm cache`` (with ``--against REV``): that commit's own default run and bench worker, checked out in a
  temporary git worktree, with its own warm compilation cache: the speed before, measured in the same rounds;
* ``warm cache, programs off`` (with ``--programs-off``): a warm first run with ``CLQ_PROGRAMS=0``, whose
  largest programs are traced and lowered in the run instead of loaded traced (`clq.programs`): what that cache
  saves, side by side in the same code;
* ``new seed`` and ``REV, new seed`` (with ``--new-seeds``): a first run at a seed no earlier run used (seed
  1000 + round, the same for both commits), warm compilation cache, caches of results empty: what each member of
  a sweep over seeds pays. The ``warm cache`` variant repeats the seed that filled the compilation cache, so a
  program that holds a seed's values as constants (event 0's images, S_LR) hits there and misses here.

Reported: the best and median wall time of each variant, their ratios, and each variant's phase split and FLOP
account (share of the FP32 matmul peak measured in the worker).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import best_and_median, command_line, machine, run_json_worker, write_result  # noqa: E402

#: The variant of ``--programs-off``.
PROGRAMS_OFF = "warm cache, programs off"
#: Seeds of the ``new seed`` variants: NEW_SEED + round, far from the seeds anyone runs by hand.
NEW_SEED = 1000

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
    # Without --result-caches they stay off: bench.common's environment (an earlier commit's worker: its defaults).
    caches = ([f"event0_cache_dir={args.result_caches}/event0", f"latent_cache_dir={args.result_caches}/latents"]
              if args.result_caches else [])
    resolved = default_config(["tracking.mode=offline", "progress=false", *caches, *args.overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        r = run_experiment(experiment_config(resolved), resolved, run_dir)
    print(json.dumps({"wall_s": time.perf_counter() - t_start, "run_wall_s": r["wall_time_s"],
                      "timing_s": r["timing_s"], "speed": r.get("speed"), "compile": clock.snapshot(),
                      "final_accuracy": r["final_accuracy"]}))


def run_worker(name: str, cache_dir: str | None, overrides, result_caches: str | None = None,
               root: str = ROOT, env: dict | None = None) -> dict:
    """One worker process of the variant `name`; `root` is the checkout whose bench worker (and clq) runs, `env`
    more environment variables."""
    cmd = [sys.executable, os.path.join(root, "bench", "bench_e2e.py"), "--worker"]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    if result_caches:
        cmd += ["--result-caches", result_caches]
    if overrides:
        cmd += ["--overrides", *overrides]
    # An earlier commit's worker reads its own conf/ (and keeps no caches of results: this environment).
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return run_json_worker(cmd, name, env=env, cwd=root)


def worktree(rev: str, parent: str) -> str:
    """A detached git worktree of `rev` under `parent` (removed by the caller's `git worktree remove`)."""
    path = os.path.join(parent, "against")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, rev], check=True, capture_output=True)
    return path


def split(run: dict) -> dict:
    """A worker run's seconds per reported phase, its compile time and its process wall time."""
    return {**{name: round(sum(run["timing_s"].get(k, 0.0) for k in keys), 3) for name, keys in PHASES.items()},
            "compile (inside the phases above)": run["compile"]["total_s"], "total (process)": round(run["process_s"], 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the variants")
    ap.add_argument("--against", default=None, metavar="REV",
                    help="also time this git revision's default run (its own checkout and bench worker)")
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of the default experiment")
    ap.add_argument("--new-seeds", action="store_true",
                    help="also first runs at seeds no earlier run used (a sweep member over seeds), for both commits")
    ap.add_argument("--programs-off", action="store_true",
                    help="also warm first runs with CLQ_PROGRAMS=0 (programs traced in the run, not loaded traced)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result-caches", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    info = machine()
    with tempfile.TemporaryDirectory(prefix="clq-e2e-") as work:
        jax_cache, results_cache = os.path.join(work, "xla"), os.path.join(work, "results")
        fresh = (os.path.join(work, f"empty-{i}") for i in itertools.count())

        def first_run(name: str, compile_cache: str | None, overrides=None, env: dict | None = None) -> dict:
            """A run whose caches of results start empty and are written, as a first run's are."""
            folder = next(fresh)
            try:
                return run_worker(name, compile_cache, args.overrides if overrides is None else overrides, folder,
                                  env=env)
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        rev = against_name = against_root = None
        if args.against:
            rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", args.against], check=True,
                                 capture_output=True, text=True).stdout.strip()
            against_name, against_root = f"{rev}, warm cache", worktree(rev, work)
        against_cache = os.path.join(work, "xla-against")

        def against_run(name=None, overrides=None) -> dict:
            return run_worker(name or against_name, against_cache, args.overrides if overrides is None else overrides,
                              root=against_root)

        def new_seed(r: int) -> list[str]:
            return [*args.overrides, f"seed={NEW_SEED + r}"]

        try:
            # Fill the caches: this code's compiled programs, event 0 and latents; the other commit's programs.
            fill = run_worker("cache-filling run", jax_cache, args.overrides, results_cache)
            print(f"cache-filling run: {fill['process_s']:.1f} s", file=sys.stderr)
            variants = {"no cache": lambda r: first_run("no cache", None),
                        "warm cache": lambda r: first_run("warm cache", jax_cache),
                        "rerun": lambda r: run_worker("rerun", jax_cache, args.overrides, results_cache)}
            if args.programs_off:
                off = {"CLQ_PROGRAMS": "0"}
                first_run("cache-filling run, programs off", jax_cache, env=off)  # the jitted programs compiled
                variants[PROGRAMS_OFF] = lambda r: first_run(PROGRAMS_OFF, jax_cache, env=off)
            if args.new_seeds:
                variants["new seed"] = lambda r: first_run("new seed", jax_cache, new_seed(r))
            if rev:
                against_run()  # fills its compilation cache
                variants[against_name] = lambda r: against_run()
                if args.new_seeds:
                    variants[f"{rev}, new seed"] = lambda r: against_run(f"{rev}, new seed", new_seed(r))
            runs = {v: [] for v in variants}
            for r in range(args.repeats):
                for variant, go in variants.items():
                    res = go(r)
                    runs[variant].append(res)
                    print(f"round {r}: {variant}: {res['process_s']:.1f} s (compile {res['compile']['total_s']:.1f} s, "
                          f"final accuracy {res['final_accuracy']:.4f})", file=sys.stderr)
        finally:
            if rev:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", against_root], capture_output=True)
    walls = {v: best_and_median([x["process_s"] for x in rs]) for v, rs in runs.items()}
    best = {v: min(rs, key=lambda x: x["process_s"]) for v, rs in runs.items()}
    result = {
        "benchmark": "end-to-end default experiment (clq-run defaults), phase split, clq's caches"
                     + (f", side by side with {rev}" if rev else ""),
        "command": command_line("bench_e2e.py", argv),
        "wall_s": walls,
        "warm_cache_over_no_cache": walls["warm cache"]["best"] / walls["no cache"]["best"],
        "rerun_over_warm_cache": walls["rerun"]["best"] / walls["warm cache"]["best"],
        # Per variant: seconds of each phase, FLOP account of the best run, final accuracy.
        "split_s": {v: split(b) for v, b in best.items()},
        "speed": {v: b.get("speed") for v, b in best.items()},
        "final_accuracy": {v: b["final_accuracy"] for v, b in best.items()},
        "compile_of_best_no_cache_run": best["no cache"]["compile"],
        "cache_filling_run": fill,
        "runs": runs,
        "machine": info,
    }
    if args.programs_off:
        result["programs"] = {f"off_over_on{suffix}": round(walls[PROGRAMS_OFF][stat] / walls["warm cache"][stat], 3)
                              for stat, suffix in (("best", ""), ("median", "_median"))}
    if rev:
        # Each variant against the other commit's run of the same kind: its warm run, or its run at the new seed.
        pairs = {"warm cache": against_name, "rerun": against_name}
        if args.new_seeds:
            pairs["new seed"] = f"{rev}, new seed"
        result["against"] = {"revision": rev}
        for v, theirs in pairs.items():
            for stat, suffix in (("best", ""), ("median", "_median")):
                result["against"][f"{v}_speedup{suffix}"] = round(walls[theirs][stat] / walls[v][stat], 3)
    path = write_result("e2e", result, args.out)
    names = list(runs)
    print("| phase | " + " | ".join(f"{v} (s)" for v in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for k in result["split_s"]["no cache"]:
        print(f"| {k} | " + " | ".join(f"{result['split_s'][v].get(k, 0.0):.1f}" for v in names) + " |")
    print(f"warm/no cache: {result['warm_cache_over_no_cache']:.2f}; rerun/warm: {result['rerun_over_warm_cache']:.2f}")
    if args.programs_off:
        print(f"programs loaded traced: a warm first run {result['programs']['off_over_on']:.3f}x faster than with "
              f"CLQ_PROGRAMS=0 (best), {result['programs']['off_over_on_median']:.3f}x (median)")
    if rev:
        a = result["against"]
        print(f"against {a['revision']}: first run of a configuration {a['warm cache_speedup']:.2f}x, "
              f"rerun {a['rerun_speedup']:.2f}x faster (best); {a['warm cache_speedup_median']:.2f}x, "
              f"{a['rerun_speedup_median']:.2f}x (median)")
        if args.new_seeds:
            print(f"against {a['revision']}: a new seed's first run {a['new seed_speedup']:.2f}x (best), "
                  f"{a['new seed_speedup_median']:.2f}x (median)")
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return result


if __name__ == "__main__":
    main()
