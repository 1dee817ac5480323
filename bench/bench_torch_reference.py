"""clq against a PyTorch reference of the same continual-learning run: time ratio and final accuracy.

    .venv/bin/python bench/bench_torch_reference.py     # ~12 min on the 2-core machine; writes bench/results/torch_reference.json
    .venv/bin/python bench/bench_torch_reference.py --add-accuracy-seeds 5 6 7   # ~2 min a seed: more seeds in the
                                                        # accuracy comparison of that file, its timings kept

The reference is `bench/torch_ref`, a faithful PyTorch port of the ar1-pytorch latent-replay loop on clq's
stream, model and hyper-parameters (avalanche-lib 0.6.0 does not install beside clq's pins here: it needs
torchvision, see docs/performance.md). Every run is a fresh Python process on the default stream (76 events,
MobileNet-V1 0.5 / 32 px, l = 19, seed 0) and is timed from start to end of the process, imports included:

* ``clq``: `clq.train.run_continual` with the default configuration (UINT-8 frozen stage + UINT-8 latents),
  no checkpoints and no tracking (the reference has neither);
* ``clq, warm compile cache``: the same run with JAX's persistent compilation cache (on by default in
  `clq-run`, `compile_cache_dir`) filled by an earlier run of the same configuration (not timed), as every
  run after a configuration's first one, every seed and every sweep member with shapes seen before;
* ``clq FP32``: the same with an FP32 frozen stage and FP32 latents, the reference's precision (accuracy
  only; run once);
* ``PyTorch ar1 loop``: the reference as ar1-pytorch runs it (frozen stage in every training iteration,
  whole-network test evaluation after every event);
* ``PyTorch + latent cache``: the same loop with clq's pipeline (each image crosses the frozen stage once,
  test latents cached) - what compilation buys once the pipeline is the same.

PyTorch gets its best thread count: OpenMP threads spin at barriers, and on this shared 2-core machine 2
threads can be several times slower than 1 when other jobs run; each reference process first times a few
event-0 steps with 1 and with 2 threads and keeps the faster. Runs are interleaved over --repeats rounds;
the best and median are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import (best_and_median, command_line, default_experiment, machine,  # noqa: E402
                          run_json_worker, truncate_stream, write_result)


def _choose_threads(specs) -> tuple[int, dict]:
    """The faster of 1 and all cores for PyTorch, from a few event-0 training steps (batch 64)."""
    import torch
    import torch.nn.functional as F

    from bench.torch_ref.model import MobileNetBN

    net = MobileNetBN(specs)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    h, w, c = specs[0].in_shape
    x, y = torch.rand(64, c, h, w), torch.randint(0, specs[-1].out_channels, (64,))
    times = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        best = float("inf")
        for i in range(8):
            t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
            if i >= 2:
                best = min(best, time.perf_counter() - t0)
        times[threads] = best
    return min(times, key=times.get), times


def worker(args) -> None:
    t_start = time.perf_counter()
    if args.kind == "clq-warm":
        from clq.run import enable_compile_cache

        enable_compile_cache(args.cache_dir)
    from clq.run import load_stream

    overrides = list(args.overrides)
    if args.kind == "clq-fp32":
        overrides += ["quant=fp32", "replay.bits=null"]
    exp = default_experiment(overrides)
    stream = truncate_stream(load_stream(exp), args.events)
    specs = exp.model.specs()
    out = {}
    if args.kind.startswith("clq"):
        from clq.train.loop import run_continual

        r = run_continual(stream, specs, exp.latent_layer, exp.train, exp.replay, exp.quant, exp.seed)
    else:
        from bench.torch_ref import ReferenceConfig, run_reference

        threads, calib = _choose_threads(specs)
        out["thread_calibration_step_s"] = calib
        cfg = ReferenceConfig(exp.latent_layer, exp.replay.size, exp.train, cache_latents=args.kind == "torch-cached",
                              threads=threads)
        r = run_reference(stream, specs, cfg, exp.seed)
    out.update({"wall_s": time.perf_counter() - t_start, "timing_s": r["timing_s"],
                "final_accuracy": r["final_accuracy"], "accuracy_per_event": r["accuracy_per_event"]})
    print(json.dumps(out))


def run_worker(kind: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind]
    if args.events:
        cmd += ["--events", str(args.events)]
    if args.overrides:
        cmd += ["--overrides", *args.overrides]
    if kind == "clq-warm":
        cmd += ["--cache-dir", args.cache_dir]
    return run_json_worker(cmd, kind)


NAMES = {"clq": "clq", "clq-warm": "clq, warm compile cache", "torch": "PyTorch ar1 loop", "torch-cached": "PyTorch + latent cache"}


def _accuracy_summary(by_seed: dict) -> dict:
    """The accuracy comparison over seeds: {"clq": {seed: acc}, "torch": {seed: acc}} -> results' record."""
    return {
        "seeds": sorted(by_seed["clq"]), "clq U8+U8": by_seed["clq"], "PyTorch FP32": by_seed["torch"],
        "mean": {k: float(np.mean(list(v.values()))) for k, v in by_seed.items()},
        "std": {k: float(np.std(list(v.values()))) for k, v in by_seed.items()},
        "gap_points_of_means": 100 * float(np.mean(list(by_seed["clq"].values()))
                                           - np.mean(list(by_seed["torch"].values()))),
    }


def _print_accuracy(a: dict) -> None:
    print(f"final accuracy over seeds {a['seeds']}: clq U8+U8 {100 * a['mean']['clq']:.2f} +- {100 * a['std']['clq']:.2f}, "
          f"PyTorch {100 * a['mean']['torch']:.2f} +- {100 * a['std']['torch']:.2f} % (gap {a['gap_points_of_means']:+.2f} points)")


def add_accuracy_seeds(args) -> dict:
    """--add-accuracy-seeds: run clq (warm compilation cache) and PyTorch (latent cache) at further seeds and add
    them to the accuracy comparison of an existing result, keeping its timings."""
    path = args.out or os.path.join(ROOT, "bench", "results", "torch_reference.json")
    result = json.load(open(path))
    old = result["accuracy_over_seeds"]
    by_seed = {"clq": {int(k): v for k, v in old["clq U8+U8"].items()},
               "torch": {int(k): v for k, v in old["PyTorch FP32"].items()}}
    cache = tempfile.TemporaryDirectory(prefix="clq-bench-xla-")
    args.cache_dir = cache.name
    base_overrides = list(args.overrides)
    for seed in args.add_accuracy_seeds:
        args.overrides = base_overrides + [f"seed={seed}"]
        by_seed["clq"][seed] = run_worker("clq-warm", args)["final_accuracy"]
        by_seed["torch"][seed] = run_worker("torch-cached", args)["final_accuracy"]
        print(f"seed {seed}: clq {by_seed['clq'][seed]:.4f}, PyTorch {by_seed['torch'][seed]:.4f}", file=sys.stderr)
    cache.cleanup()
    result["accuracy_over_seeds"] = _accuracy_summary(by_seed)
    result["accuracy_seeds_added_by"] = command_line("bench_torch_reference.py")
    write_result("torch_reference", result, path)
    _print_accuracy(result["accuracy_over_seeds"])
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--events", type=int, default=None, help="first N events only (quick trials)")
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--worker", default=None, choices=["clq", "clq-warm", "clq-fp32", "torch", "torch-cached"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--accuracy-seeds", type=int, nargs="*", default=[1, 2],
                    help="further seeds for the accuracy comparison (clq U8+U8 and PyTorch, mean over seeds); "
                         "PyTorch runs with the latent cache there (same numbers as without, faster)")
    ap.add_argument("--add-accuracy-seeds", type=int, nargs="+", default=None, metavar="SEED",
                    help="only run these seeds' accuracy comparison and add them to an existing result (--out or "
                         "bench/results/torch_reference.json); no timing")
    args = ap.parse_args(argv)
    if args.worker:
        args.kind = args.worker
        return worker(args)
    if args.add_accuracy_seeds:
        return add_accuracy_seeds(args)
    info = machine()
    runs = {k: [] for k in NAMES}
    cache = tempfile.TemporaryDirectory(prefix="clq-bench-xla-")
    args.cache_dir = cache.name
    fill = run_worker("clq-warm", args)  # fills the compilation cache; not timed
    print(f"cache-filling clq run: {fill['process_s']:.1f} s", file=sys.stderr)
    for r in range(args.repeats):
        for kind in NAMES:
            res = run_worker(kind, args)
            runs[kind].append(res)
            print(f"round {r}: {NAMES[kind]}: {res['process_s']:.1f} s, final accuracy {res['final_accuracy']:.4f}",
                  file=sys.stderr)
    # One seed's final accuracy moves by ~2 points with float32 summation order (75 events of SGD amplify it), so
    # "equal accuracy" is judged on the mean over seeds; the extra seeds' wall times are not used.
    base_seed = default_experiment(args.overrides).seed
    by_seed = {"clq": {base_seed: runs["clq"][0]["final_accuracy"]},
               "torch": {base_seed: runs["torch"][0]["final_accuracy"]}}
    base_overrides = list(args.overrides)
    for seed in [s for s in args.accuracy_seeds if s != base_seed]:
        args.overrides = base_overrides + [f"seed={seed}"]
        by_seed["clq"][seed] = run_worker("clq-warm", args)["final_accuracy"]
        by_seed["torch"][seed] = run_worker("torch-cached", args)["final_accuracy"]
        print(f"seed {seed}: clq {by_seed['clq'][seed]:.4f}, PyTorch {by_seed['torch'][seed]:.4f}", file=sys.stderr)
    args.overrides = base_overrides
    cache.cleanup()
    fp32 = run_worker("clq-fp32", args)
    print(f"clq FP32 + FP32: {fp32['process_s']:.1f} s, final accuracy {fp32['final_accuracy']:.4f}", file=sys.stderr)
    wall = {k: best_and_median([x["process_s"] for x in v]) for k, v in runs.items()}
    split = {k: min(v, key=lambda x: x["process_s"])["timing_s"] for k, v in runs.items()}  # of each kind's best run
    acc = {k: v[0]["final_accuracy"] for k, v in runs.items()}
    result = {
        "benchmark": "clq vs PyTorch reference (ar1-pytorch latent-replay loop), same stream/model/hyper-parameters",
        "command": command_line("bench_torch_reference.py", argv),
        "stream_events": args.events or "all",
        "wall_s": wall,
        "speedup_vs_pytorch_ar1_loop": wall["torch"]["best"] / wall["clq"]["best"],
        "speedup_vs_pytorch_ar1_loop_warm_cache": wall["torch"]["best"] / wall["clq-warm"]["best"],
        # Everything after event 0 (the learning phase a sweep repeats; event 0 is the same whole-network
        # training in both), from the phase timers of the best run of each.
        "learning_phase_s": {k: sum(t for n, t in s.items() if n != "first_event_s") for k, s in split.items()},
        "speedup_vs_pytorch_with_latent_cache": wall["torch-cached"]["best"] / wall["clq"]["best"],
        "speedup_medians": {"torch": wall["torch"]["median"] / wall["clq"]["median"],
                            "torch_over_clq_warm": wall["torch"]["median"] / wall["clq-warm"]["median"],
                            "torch-cached": wall["torch-cached"]["median"] / wall["clq"]["median"]},
        "final_accuracy": {**acc, "clq-fp32": fp32["final_accuracy"]},
        "accuracy_gap_points": {"clq U8+U8 - PyTorch FP32": 100 * (acc["clq"] - acc["torch"]),
                                "clq FP32 - PyTorch FP32": 100 * (fp32["final_accuracy"] - acc["torch"])},
        "accuracy_over_seeds": _accuracy_summary(by_seed),
        "split_s": split,
        "torch_threads": [x.get("thread_calibration_step_s") for x in runs["torch"] + runs["torch-cached"]],
        "runs": runs, "clq_fp32_run": fp32, "machine": info,
    }
    lp = result["learning_phase_s"]
    result["speedup_learning_phase_vs_pytorch_ar1_loop"] = lp["torch"] / lp["clq"]
    path = write_result("torch_reference", result, args.out)
    print("| run | wall (s), best / median | after event 0 (s) | final accuracy | time / clq's (cold, warm) |\n"
          "|---|---|---|---|---|")
    for k, name in NAMES.items():
        print(f"| {name} | {wall[k]['best']:.1f} / {wall[k]['median']:.1f} | {lp[k]:.1f} | {100 * acc[k]:.2f} % | "
              f"{wall[k]['best'] / wall['clq']['best']:.2f}x, {wall[k]['best'] / wall['clq-warm']['best']:.2f}x |")
    print(f"| clq FP32 + FP32 | {fp32['process_s']:.1f} | {100 * fp32['final_accuracy']:.2f} % | - |")
    _print_accuracy(result["accuracy_over_seeds"])
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return result


if __name__ == "__main__":
    main()
