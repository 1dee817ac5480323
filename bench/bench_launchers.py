"""A whole sweep through two launchers, side by side: `clq_vectorized` against `clq_joblib`.

    .venv/bin/python bench/bench_launchers.py                      # offline_grid, 24 members: ~20 min on 2 cores
    .venv/bin/python bench/bench_launchers.py --sweep tiny         # smoke run (~1 min)
    .venv/bin/python bench/bench_launchers.py --checks-only        # only the clq-run checks, added to the result
    .venv/bin/python bench/bench_launchers.py --default-caches --out bench/results/launchers_default_caches.json

Each launcher runs the same sweep file (`sweeps/<name>.yaml`, seed 0) as a user would (`python -m clq -m ...`,
one process tree each, one after the other on the same machine), with an empty persistent compilation cache of
its own, so both pay their compilations as a first sweep does, and with no event-0 cache on disk beyond the
one the vectorized launcher keeps in its own sweep folder. Reported: each launcher's wall time and CPU time of
the whole command, the ratio (the target: vectorized <= 1/3 of joblib), and every member's final accuracy under
both, and checks: five vectorized members against the same configuration run alone by `clq-run` (same XLA
thread settings), and the default run (member 3) with the default threads against clq_joblib's (one thread per
worker: another summation order, hence another event 0 that every joblib member shares).

``--default-caches``: both launchers as a user runs them by default, with `clq-run`'s on-disk caches of event 0 and
latents (each launcher an empty pair of its own, as on a machine's first sweep): joblib's members then share
event 0 and latents through the disk instead of computing them each. No clq-run checks in this mode.
Writes bench/results/launchers.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import command_line, machine, write_result  # noqa: E402

LAUNCHERS = ("clq_vectorized", "clq_joblib")

#: Members of offline_grid re-run alone with `clq-run` (default XLA threads, as the vectorized launcher), to check
#: the vectorized members' numbers at this scale: l=19 FP32 N=1500 (a group of one), l=19 U7 and U6 N=1500 and
#: l=23 / l=27 U8 N=1500 (groups of three).
CHECKS = [["latent_layer=19", "precision=fp32", "replay.size=1500"],
          ["latent_layer=19", "precision=u8_u7", "replay.size=1500"],
          ["latent_layer=19", "precision=u8_u6", "replay.size=1500"],
          ["latent_layer=23", "precision=u8_u8", "replay.size=1500"],
          ["latent_layer=27", "precision=u8_u8", "replay.size=1500"]]
#: sweeps/precision/*.yaml -> (quant, replay bits) as results.json records them.
PRECISIONS = {"fp32": (None, None), "u8_u8": ("int8", 8), "u8_u7": ("int8", 7), "u8_u6": ("int8", 6)}


def _member(members: dict, overrides: list[str]) -> int:
    """The member of a sweep's results with these overrides (looked up by its recorded configuration)."""
    ov = dict(o.split("=", 1) for o in overrides)
    quant, bits = PRECISIONS[ov["precision"]]
    (k,) = [k for k, m in members.items() if m["latent_layer"] == int(ov["latent_layer"])
            and m["replay_size"] == int(ov["replay.size"]) and m["quant"] == quant and m["replay_bits"] == bits]
    return k


#: clq_joblib's worker environment (conf/hydra/launcher/clq_joblib.yaml): one XLA thread, no multi-threaded Eigen.
JOBLIB_ENV = {"NPROC": "1", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}


def _single(name: str, overrides: list[str], work: str, env_extra: dict) -> float:
    run_dir = os.path.join(work, "single-" + "-".join(o.replace("=", "") for o in overrides)
                           + ("-joblib-env" if env_extra else ""))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env_extra}
    p = subprocess.run([sys.executable, "-m", "clq", "--config-dir", os.path.join(ROOT, "sweeps"), "--config-name",
                        name, *overrides, "tracking=none", "checkpoint_every=0", f"hydra.run.dir={run_dir}"],
                       cwd=work, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(p.stderr[-4000:])
        raise RuntimeError(f"clq-run {' '.join(overrides)} failed")
    return json.load(open(os.path.join(run_dir, "results.json")))["final_accuracy"]


def checks(result: dict, work: str) -> dict:
    """Vectorized members against clq-run alone, and the default run under clq_joblib's thread settings."""
    v = result["clq_vectorized"]["members"]
    out = {"members": {}}
    for ov in CHECKS:
        k = _member(v, ov)
        alone = _single("offline_grid", ov, work, {})
        out["members"][k] = {"overrides": ov, "clq_run": alone, "clq_vectorized": v[k]["final_accuracy"],
                             "clq_joblib": result["clq_joblib"]["members"][k]["final_accuracy"]}
        print(f"  member {k} {' '.join(ov)}: clq-run {alone:.4f}, vectorized {v[k]['final_accuracy']:.4f}, "
              f"joblib {out['members'][k]['clq_joblib']:.4f}", flush=True)
    ov = ["latent_layer=19", "precision=u8_u8", "replay.size=1500"]
    out["member_3_default_threads"] = _single("offline_grid", ov, work, {})
    out["member_3_joblib_threads"] = _single("offline_grid", ov, work, JOBLIB_ENV)
    print(f"  member 3 (the default run): {out['member_3_default_threads']:.4f} with the default threads, "
          f"{out['member_3_joblib_threads']:.4f} with clq_joblib's", flush=True)
    return out


def _sweep(name: str, launcher: str, work: str, default_caches: bool = False) -> dict:
    sweep_dir = os.path.join(work, launcher)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "CLQ_COMPILE_CACHE_DIR": os.path.join(work, f"xla-{launcher}")}
    if default_caches:  # clq-run's defaults, in empty folders of this launcher's own
        env |= {"CLQ_EVENT0_CACHE_DIR": os.path.join(work, f"event0-{launcher}"),
                "CLQ_LATENT_CACHE_DIR": os.path.join(work, f"latents-{launcher}")}
    cmd = [sys.executable, "-m", "clq", "-m", "--config-dir", os.path.join(ROOT, "sweeps"), "--config-name", name,
           f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        sys.stderr.write(p.stderr[-4000:])
        raise RuntimeError(f"{launcher} sweep failed with exit status {p.returncode}")
    members = {}
    for d in sorted(os.listdir(sweep_dir)):
        path = os.path.join(sweep_dir, d, "results.json")
        if d.isdigit() and os.path.exists(path):
            r = json.load(open(path))
            c = r["config"]
            members[int(d)] = {"latent_layer": c["latent_layer"], "replay_bits": c["replay"]["bits"],
                               "replay_size": c["replay"]["size"],
                               "quant": None if c["quant"].get("frozen_bits") is None else f"int{c['quant']['frozen_bits']}",
                               "status": r["status"], "final_accuracy": r.get("final_accuracy")}
    return {"wall_s": round(wall, 2), "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime
                                                     - before.ru_stime, 2), "members": members}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default="offline_grid", help="sweep file in sweeps/ (default: offline_grid)")
    ap.add_argument("--out", default=None, help="result JSON (default: bench/results/launchers.json)")
    ap.add_argument("--default-caches", action="store_true",
                    help="run both launchers with clq-run's default on-disk caches of event 0 and latents (no checks)")
    ap.add_argument("--checks-only", action="store_true",
                    help="add the clq-run checks (offline_grid) to an existing result (--out) without re-running sweeps")
    args = ap.parse_args(argv)
    if args.checks_only:
        path = args.out or os.path.join(ROOT, "bench", "results", "launchers.json")
        result = json.load(open(path))
        if result.get("sweep") != "offline_grid" or result.get("default_caches"):
            ap.error(f"--checks-only needs an offline_grid result without --default-caches; {path} holds "
                     f"{result.get('sweep')!r}{' with default caches' if result.get('default_caches') else ''}")
        result["clq_vectorized"]["members"] = {int(k): m for k, m in result["clq_vectorized"]["members"].items()}
        result["clq_joblib"]["members"] = {int(k): m for k, m in result["clq_joblib"]["members"].items()}
        with tempfile.TemporaryDirectory(prefix="clq-bench-launchers-") as work:
            result["checks"] = checks(result, work)
        write_result("launchers", result, args.out)
        return result
    result = {"sweep": args.sweep, "default_caches": args.default_caches, "machine": machine(),
              "command": command_line("bench_launchers.py", argv)}
    with tempfile.TemporaryDirectory(prefix="clq-bench-launchers-") as work:
        for launcher in LAUNCHERS:
            print(f"bench_launchers: {args.sweep} with {launcher} ...", flush=True)
            result[launcher] = _sweep(args.sweep, launcher, work, args.default_caches)
            print(f"  {result[launcher]['wall_s']:.1f} s wall, {result[launcher]['cpu_s']:.1f} s CPU", flush=True)
        if args.sweep == "offline_grid" and not args.default_caches:
            result["checks"] = checks(result, work)
    v, j = result["clq_vectorized"], result["clq_joblib"]
    diffs = [abs(v["members"][k]["final_accuracy"] - j["members"][k]["final_accuracy"])
             for k in v["members"] if k in j["members"]]
    result["vectorized_over_joblib_wall"] = round(v["wall_s"] / j["wall_s"], 3)
    result["speedup_wall"] = round(j["wall_s"] / v["wall_s"], 2)
    result["target"] = "clq_vectorized wall time <= 1/3 of clq_joblib's"
    result["target_met"] = v["wall_s"] * 3 <= j["wall_s"]
    result["final_accuracy_abs_diff"] = {"max": round(max(diffs), 4), "mean": round(sum(diffs) / len(diffs), 4),
                                         "members_equal": sum(d == 0 for d in diffs), "members": len(diffs)}
    path = write_result("launchers", result, args.out)
    print(f"bench_launchers: vectorized {v['wall_s']:.1f} s vs joblib {j['wall_s']:.1f} s = {result['speedup_wall']}x "
          f"(target >= 3x: {'met' if result['target_met'] else 'NOT met'}); final accuracies differ by at most "
          f"{100 * result['final_accuracy_abs_diff']['max']:.2f} points; {path}")
    return result


if __name__ == "__main__":
    main()
