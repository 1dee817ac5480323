"""clq against the real Avalanche 0.6.0 AR1 on the same stream with the same ImageNet weights: accuracy and time.

    .venv/bin/python bench/bench_avalanche.py                 # 3 seeds x 4 systems; hours on the 2-core machine
    .venv/bin/python bench/bench_avalanche.py --quick         # 1 seed, a 16-event stream: a smoke run
    .venv/bin/python bench/bench_avalanche.py --seeds 0 --only avalanche --no-fixed-labels
    .venv/bin/python bench/bench_avalanche.py --clq u8="" l23="latent_layer=23"

Writes bench/results/avalanche.json (``--quick``: avalanche_quick.json, so a smoke run never overwrites the
full results) and prints a table. Per seed:

1. the Avalanche environment is made if missing (bench/peer/setup_avalanche.sh: torch 2.14.1, torchvision
   0.29.1, avalanche-lib 0.6.0 in bench/.venv-avalanche; Avalanche does not install beside clq's pins);
2. bench/peer/export.py writes the stream of ``clq-run +experiment=fashion_mnist_imagenet seed=S`` (plus the
   quick and ``--extra-overrides`` overrides, which both systems get) and the TF-slim ImageNet weights with
   clq's reference latents into bench/.work/avalanche/;
3. bench/peer/avalanche_ar1.py runs ``avalanche.training.AR1`` as it is (``avalanche-ar1``) and, unless
   ``--no-fixed-labels``, with each replay latent stored under its own label (``avalanche-ar1-own-labels``: AR1
   0.6.0 pairs the first epoch's shuffled latents with the experience's targets in dataset order); each run
   first checks that its converted network reproduces clq's FP32 latents;
4. every ``--clq NAME=OVERRIDES`` configuration runs as ``clq-run +experiment=fashion_mnist_imagenet seed=S
   tracking=none checkpoint_every=0 progress=false hydra.run.dir=...`` (no checkpoints: the peer writes none).

Every run is a fresh process, timed from start to end (imports, data loading and evaluation included) with
its peak resident memory from ``os.wait4``. PyTorch gets its best thread count (``--threads auto``): each
Avalanche run times a few event-0 and later-event steps with 1 and 2 threads and keeps the faster per phase;
on the shared 2-core machine two spinning OpenMP threads made later events' small operations ~10x slower than
one (bench_torch_reference.py does the same). ``--threads 2`` pins it (then a run is reproducible bit for bit).
The summary gives mean +- std (over seeds, ddof=0) of the final and
average accuracy per system, the gaps clq - Avalanche in points, and the speed-up (Avalanche wall time / clq
wall time) per seed and its mean. clq runs with its default persistent compilation cache (``compile_cache_dir``):
a configuration's first run compiles, later seeds mostly load.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import command_line, machine, write_result  # noqa: E402

AVALANCHE_VENV = os.path.join(ROOT, "bench", ".venv-avalanche")
AVALANCHE_PYTHON = os.path.join(AVALANCHE_VENV, "bin", "python")
WORK = os.path.join(ROOT, "bench", ".work", "avalanche")
EXPERIMENT = "fashion_mnist_imagenet"

#: The smoke stream: 2 sessions, event 0 = 5 classes x 200 images, 15 events of 100, 500 test images, and 1000
#: latent replays so that event 0 fills the buffer as in the full preset (3000 images, 1500 replays): AR1's
#: buffer keeps the size event 0 gave it, clq's fills empty slots later. Epochs stay at 4 everywhere: AR1 has one
#: ``train_epochs`` for every experience, so clq keeps the same.
QUICK_OVERRIDES = ["data.sessions=[clean,dim]", "data.initial_images_per_class=200", "data.images_per_event=100",
                   "data.test_size=500", "replay.size=1000"]
#: clq configurations run by default: FP32 frozen stage and latents (AR1's precision), and the preset (UINT-8).
DEFAULT_CLQ = {"fp32": ["quant=fp32", "replay.bits=null"], "u8": []}
AVALANCHE_SYSTEMS = {"avalanche-ar1": [], "avalanche-ar1-own-labels": ["--fix-replay-labels"]}


def ensure_avalanche_venv() -> None:
    """Create bench/.venv-avalanche if it is missing (idempotent; minutes the first time)."""
    subprocess.run(["bash", os.path.join(ROOT, "bench", "peer", "setup_avalanche.sh"), AVALANCHE_VENV], cwd=ROOT,
                   check=True)


def run_child(cmd: list[str], log_path: str, env: dict | None = None) -> dict:
    """Run `cmd` (output to `log_path`); its wall time and peak resident memory (``os.wait4``).

    Raises:
      RuntimeError (after echoing the end of the log) if the process fails.
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode:
        with open(log_path) as f:
            sys.stderr.write(f.read()[-4000:])
        raise RuntimeError(f"{shlex.join(cmd[:3])} ... failed with exit status {proc.returncode} (log: {log_path})")
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1)}  # KiB on Linux


def export(seed: int, overrides: list[str], work: str) -> dict:
    """Stream and weights files of one seed (bench/peer/export.py)."""
    from bench.peer.export import export_stream, export_weights, reference_images

    stream_path, weights_path = os.path.join(work, "stream.npz"), os.path.join(work, "weights.npz")
    s = export_stream(overrides, seed, stream_path)
    with np.load(stream_path) as z:
        images = reference_images(z["train_images"])
    export_weights(weights_path, s["input_size"], s["num_classes"], images, s["latent_layer"])
    return {**s, "stream": stream_path, "weights": weights_path}


def run_avalanche(name: str, flags: list[str], files: dict, work: str, threads: str) -> dict:
    out = os.path.join(work, f"{name}.json")
    cmd = [AVALANCHE_PYTHON, os.path.join(ROOT, "bench", "peer", "avalanche_ar1.py"), "--stream", files["stream"],
           "--weights", files["weights"], "--out", out, "--threads", str(threads), *flags]
    proc = run_child(cmd, os.path.join(work, f"{name}.log"))
    with open(out) as f:
        r = json.load(f)
    return {"system": name, **proc, "accuracy_per_event": r["accuracy_per_event"],
            "final_accuracy": r["final_accuracy"], "average_accuracy": r["average_accuracy"],
            "phases_s": r["wall_time_s"], "latent_check": r["latent_check"],
            "replay_wrong_label_fraction_after_event0": r["replay_labels"]["wrong_fraction_after_event0"],
            "replay_wrong_label_fraction_final": r["replay_labels"]["per_event"][-1]["wrong_fraction"],
            "versions": r["versions"], "events": r["events"]}


def run_clq(name: str, config: list[str], seed: int, overrides: list[str], work: str) -> dict:
    run_dir = os.path.join(work, f"clq-{name}")
    shutil.rmtree(run_dir, ignore_errors=True)  # resume=true would continue an older run's checkpoints
    cmd = [sys.executable, "-m", "clq", f"+experiment={EXPERIMENT}", f"seed={seed}", "tracking=none",
           "checkpoint_every=0", "progress=false", f"hydra.run.dir={run_dir}", *overrides, *config]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    proc = run_child(cmd, os.path.join(work, f"clq-{name}.log"), env)
    with open(os.path.join(run_dir, "results.json")) as f:
        r = json.load(f)
    return {"system": f"clq-{name}", "overrides": config, **proc, "accuracy_per_event": r["accuracy_per_event"],
            "final_accuracy": r["final_accuracy"], "average_accuracy": r["average_accuracy"],
            "phases_s": r.get("timing_s", {}), "run_wall_time_s": r["wall_time_s"],
            "final_accuracy_per_session": r.get("final_accuracy_per_session")}


def _stats(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std()), "per_seed": [float(x) for x in v]}


def summarize(runs: dict[str, dict[int, dict]], seeds: list[int]) -> dict:
    """Mean +- std per system; clq - Avalanche gaps (points) and Avalanche / clq wall-time ratios per seed."""
    systems = {name: {"final_accuracy": _stats([by_seed[s]["final_accuracy"] for s in seeds]),
                      "average_accuracy": _stats([by_seed[s]["average_accuracy"] for s in seeds]),
                      "wall_s": _stats([by_seed[s]["wall_s"] for s in seeds]),
                      "peak_rss_mb": _stats([by_seed[s]["peak_rss_mb"] for s in seeds])}
               for name, by_seed in runs.items()}
    pairs = {}
    for a in (n for n in runs if n.startswith("avalanche")):
        for c in (n for n in runs if n.startswith("clq")):
            speed = [runs[a][s]["wall_s"] / runs[c][s]["wall_s"] for s in seeds]
            pairs[f"{c} vs {a}"] = {
                "final_gap_points": 100 * (systems[c]["final_accuracy"]["mean"] - systems[a]["final_accuracy"]["mean"]),
                "average_gap_points": 100 * (systems[c]["average_accuracy"]["mean"]
                                             - systems[a]["average_accuracy"]["mean"]),
                "final_gap_points_per_seed": [100 * (runs[c][s]["final_accuracy"] - runs[a][s]["final_accuracy"])
                                              for s in seeds],
                "speedup_per_seed": speed, "speedup_mean": float(np.mean(speed))}
    return {"systems": systems, "clq_vs_avalanche": pairs}


def print_table(summary: dict) -> None:
    print("| system | final accuracy (%) | average accuracy (%) | wall (s) | peak RSS (MB) |\n|---|---|---|---|---|")
    for name, s in summary["systems"].items():
        f, a = s["final_accuracy"], s["average_accuracy"]
        print(f"| {name} | {100 * f['mean']:.2f} +- {100 * f['std']:.2f} | {100 * a['mean']:.2f} +- "
              f"{100 * a['std']:.2f} | {s['wall_s']['mean']:.1f} | {s['peak_rss_mb']['mean']:.0f} |")
    for pair, p in summary["clq_vs_avalanche"].items():
        print(f"{pair}: final {p['final_gap_points']:+.2f} points, average {p['average_gap_points']:+.2f} points, "
              f"speed-up {p['speedup_mean']:.2f}x (per seed {', '.join(f'{x:.2f}' for x in p['speedup_per_seed'])})")


def _parse_clq(items) -> dict[str, list[str]]:
    out = {}
    for item in items:
        name, sep, overrides = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--clq takes NAME=OVERRIDES (space-separated Hydra overrides), got {item!r}")
        out[name] = shlex.split(overrides)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help=f"one seed, the smoke stream ({' '.join(QUICK_OVERRIDES)})")
    ap.add_argument("--only", choices=["avalanche", "clq"], default=None)
    ap.add_argument("--no-fixed-labels", action="store_true", help="skip the AR1 run with each latent's own label")
    ap.add_argument("--clq", nargs="+", default=None, metavar="NAME=OVERRIDES",
                    help='clq configurations, e.g. fp32="quant=fp32 replay.bits=null" u8="" (default: these two); '
                         "overrides are separated by spaces")
    ap.add_argument("--extra-overrides", nargs="+", default=[],
                    help="Hydra overrides for the stream and every clq run (both systems see the same stream)")
    ap.add_argument("--threads", default="auto",
                    help="torch threads of the Avalanche runs: a number, or 'auto' (default: the faster of 1 and 2, "
                         "timed per phase by bench/peer/avalanche_ar1.py choose_threads)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    overrides = (QUICK_OVERRIDES if args.quick else []) + list(args.extra_overrides)
    clq_configs = _parse_clq(args.clq) if args.clq is not None else DEFAULT_CLQ
    avalanche = {} if args.only == "clq" else {k: v for k, v in AVALANCHE_SYSTEMS.items()
                                               if not (args.no_fixed_labels and v)}
    if args.only == "avalanche":
        clq_configs = {}
    info = machine()
    if avalanche:
        ensure_avalanche_venv()

    runs: dict[str, dict[int, dict]] = {}
    streams = {}
    name = "avalanche_quick" if args.quick else "avalanche"
    command = command_line("bench_avalanche.py", argv)

    def save(done_seeds) -> str:
        """Write what has run so far (after every run: a crash or an interrupt loses at most the running one)."""
        complete = {n: r for n, r in runs.items() if all(s in r for s in done_seeds)}
        result = {
            "benchmark": "clq vs Avalanche 0.6.0 AR1 (real library), same stream, same ImageNet MobileNet-V1 weights",
            "command": command, "experiment": EXPERIMENT, "quick": args.quick, "seeds": done_seeds,
            "complete": done_seeds == seeds, "stream_overrides": overrides, "streams": streams,
            "clq_configs": clq_configs, "summary": summarize(complete, done_seeds) if done_seeds else {},
            "runs": {n: {str(s): r for s, r in by_seed.items()} for n, by_seed in runs.items()}, "machine": info,
        }
        return write_result(name, result, args.out)

    for i, seed in enumerate(seeds):
        work = os.path.join(WORK, "quick" if args.quick else "full", f"seed{seed}")
        files = export(seed, overrides, work)
        streams[seed] = {k: files[k] for k in ("events", "train_images", "test_images", "latent_layer", "input_size")}
        print(f"seed {seed}: {files['events']} events, {files['train_images']} training / {files['test_images']} "
              f"test images, l={files['latent_layer']}, {files['input_size']} px", file=sys.stderr)
        for system, flags in avalanche.items():
            r = run_avalanche(system, flags, files, work, args.threads)
            runs.setdefault(system, {})[seed] = r
            save(seeds[:i])
            print(f"seed {seed}: {system}: final {100 * r['final_accuracy']:.2f} %, average "
                  f"{100 * r['average_accuracy']:.2f} %, {r['wall_s']:.0f} s, {r['peak_rss_mb']:.0f} MB, latent check "
                  f"{r['latent_check']['latent']['max_abs_error']:.2g}, wrong replay labels after event 0 "
                  f"{r['replay_wrong_label_fraction_after_event0']:.3f}", file=sys.stderr)
        for config_name, config in clq_configs.items():
            r = run_clq(config_name, config, seed, overrides, work)
            runs.setdefault(r["system"], {})[seed] = r
            save(seeds[:i])
            print(f"seed {seed}: {r['system']}: final {100 * r['final_accuracy']:.2f} %, average "
                  f"{100 * r['average_accuracy']:.2f} %, {r['wall_s']:.0f} s, {r['peak_rss_mb']:.0f} MB",
                  file=sys.stderr)
        path = save(seeds[: i + 1])

    with open(path) as f:
        result = json.load(f)
    summary = result["summary"]
    print_table(summary)
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return result


if __name__ == "__main__":
    main()
