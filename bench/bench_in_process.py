"""Several default experiments in one process: what a later run (a sweep member under Hydra's `basic` launcher, a
notebook's next run) pays for its programs, against the first.

    .venv/bin/python bench/bench_in_process.py                    # 3 seeds in one process, ~2.5 min on 2 cores
    .venv/bin/python bench/bench_in_process.py --against 7742dad  # also that commit's clq, run first (~5 min)

Each side is one fresh process that runs the default experiment (`clq.run.run_experiment`, as `clq-run` calls it;
no tracking, no checkpoints, the event-0 and latent caches off, so every run trains event 0) at seeds 2000, 2001,
2002 one after the other, with a warm persistent compilation cache (`~/.cache/clq/xla`, filled by the first run if
it is not). Reported per run: wall time, the seconds JAX spent tracing, lowering and compiling or loading programs
(`jax.monitoring`), and the final accuracy; the ratio of the later runs' program time to the first's is measured in
the same process. With ``--against REV`` that commit's clq runs the same worker from a git worktree first, then
this commit's: the later runs' wall times and accuracies side by side. Writes bench/results/in_process.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEEDS = (2000, 2001, 2002)


def worker(root: str) -> None:
    """The runs in this process, with clq imported from `root`; prints one JSON line."""
    sys.path.insert(0, root)
    from clq.run import enable_compile_cache

    enable_compile_cache(os.path.expanduser("~/.cache/clq/xla"))
    import jax

    seconds = {"s": 0.0}

    def listen(event, duration, **kw):  # tracing, lowering, compiling and loading from the cache
        if event.startswith("/jax/core/compile/") or event == "/jax/compilation_cache/cache_retrieval_time_sec":
            seconds["s"] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    sys.path.append(ROOT)  # bench.common; clq comes from `root`
    from bench.common import default_config
    from clq.config import experiment_config
    from clq.run import run_experiment

    runs = []
    for seed in SEEDS:
        resolved = default_config(["tracking=none", "progress=false", "checkpoint_every=0", f"seed={seed}",
                                   "event0_cache_dir=null", "latent_cache_dir=null"])
        seconds["s"] = 0.0
        with tempfile.TemporaryDirectory() as run_dir:
            t = time.perf_counter()
            r = run_experiment(experiment_config(resolved), resolved, run_dir)
            runs.append({"seed": seed, "wall_s": round(time.perf_counter() - t, 2),
                         "programs_s": round(seconds["s"], 2), "final_accuracy": r["final_accuracy"]})
    print(json.dumps(runs))


def run_side(root: str) -> list[dict]:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", root], capture_output=True,
                         text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError(f"worker for {root} failed ({out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", help="also this commit's clq (git revision), run before this one")
    ap.add_argument("--out", help="result file (default bench/results/in_process.json)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return {}
    sys.path.insert(0, ROOT)
    from bench.common import command_line, machine, write_result

    sides = {"this commit": ROOT}
    with tempfile.TemporaryDirectory() as parent:
        if args.against:
            path = os.path.join(parent, "against")
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, args.against], check=True,
                           capture_output=True)
            sides = {args.against: path, "this commit": ROOT}
        try:
            result = {name: run_side(root) for name, root in sides.items()}
        finally:
            if args.against:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], capture_output=True)
    for name, runs in result.items():
        first, later = runs[0], runs[1:]
        print(f"{name}: programs {' / '.join(str(r['programs_s']) for r in runs)} s, runs "
              f"{' / '.join(str(r['wall_s']) for r in runs)} s, accuracies "
              f"{' / '.join(str(r['final_accuracy']) for r in runs)}; later runs' programs "
              f"{sum(r['programs_s'] for r in later) / len(later) / max(first['programs_s'], 1e-9):.2f}x the first's")
    out = {"command": command_line("bench_in_process.py", argv), "machine": machine(), "seeds": list(SEEDS),
           "runs": result}
    if args.against:
        a, b = result[args.against][1:], result["this commit"][1:]
        out["later_runs_speedup"] = round(sum(r["wall_s"] for r in a) / sum(r["wall_s"] for r in b), 3)
        out["same_accuracies"] = [r["final_accuracy"] for r in result[args.against]] == \
            [r["final_accuracy"] for r in result["this commit"]]
        print(f"later runs: {out['later_runs_speedup']:.2f}x as fast as {args.against}; same accuracies: "
              f"{out['same_accuracies']}")
    print(write_result("in_process", out, args.out))
    return out


if __name__ == "__main__":
    main()
