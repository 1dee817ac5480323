"""Run every performance benchmark, write bench/results/*.json and print the table of figures vs targets.

    .venv/bin/python bench/run_all.py                   # ~45 min on the 2-core machine
    .venv/bin/python bench/run_all.py --only adaptive cost
    .venv/bin/python bench/run_all.py --quick           # smoke run: few events and repeats, results in a temporary folder

Benchmarks (each also runs alone; see its docstring): `bench_cost` (cost-model grid throughput),
`bench_adaptive` (adaptive-stage FLOP/s vs the FP32 matmul peak), `bench_e2e` (default experiment, phase
split, first run, warm compilation cache and a rerun from clq-run's caches), `bench_torch_reference` (clq vs the PyTorch ar1 loop),
`bench_vectorized` (K bit-widths x S seeds as one program), `bench_replay_read` (a replay mini-batch read from
the bit-packed buffer vs from unpacked codes). Each ratio is measured against a baseline in the
same invocation; the machine is shared, so every benchmark repeats and reports best and median.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from bench.common import RESULTS, machine, write_result  # noqa: E402

ORDER = ("cost", "adaptive", "e2e", "torch_reference", "vectorized", "replay_read")


def _run(name: str, out_dir: str, quick: bool) -> dict:
    out = os.path.join(out_dir, f"{name}.json")
    if name == "cost":
        import bench_cost

        return bench_cost.main(["--out", out] + (["--repeats", "2"] if quick else []))
    if name == "adaptive":
        from bench import bench_adaptive

        return bench_adaptive.main(["--out", out] + (["--repeats", "1", "--layers", "23", "27"] if quick else []))
    if name == "e2e":
        from bench import bench_e2e

        quick_args = ["--repeats", "1", "--overrides", "data.sessions=[clean,dim]", "train.first_event.epochs=1"]
        return bench_e2e.main(["--out", out] + (quick_args if quick else []))
    if name == "torch_reference":
        from bench import bench_torch_reference

        return bench_torch_reference.main(["--out", out] + (["--repeats", "1", "--events", "4", "--accuracy-seeds", "1"] if quick
                                                           else []))
    if name == "vectorized":
        from bench import bench_vectorized

        return bench_vectorized.main(["--out", out] + (["--events", "4", "--seeds", "0", "1"] if quick else []))
    if name == "replay_read":
        from bench import bench_replay_read

        return bench_replay_read.main(["--out", out] + (["--bits", "7", "8", "--repeats", "10"] if quick else []))
    raise ValueError(name)


def table(res: dict) -> list[tuple[str, str, str]]:
    """(figure, target, measured) rows from the benchmark results present in `res`."""
    rows = []
    if "torch_reference" in res:
        t = res["torch_reference"]
        acc = t["final_accuracy"]
        rows.append(("end to end vs PyTorch ar1-pytorch loop (same stream, model, hyper-parameters)", ">= 5x faster",
                     f"{t['speedup_vs_pytorch_ar1_loop']:.2f}x (best {t['wall_s']['clq']['best']:.0f} s vs "
                     f"{t['wall_s']['torch']['best']:.0f} s; medians {t['speedup_medians']['torch']:.2f}x)"))
        rows.append(("... clq with a warm compilation cache (clq-run's default from a configuration's 2nd run)", ">= 5x faster",
                     f"{t['speedup_vs_pytorch_ar1_loop_warm_cache']:.2f}x (best {t['wall_s']['clq-warm']['best']:.0f} s)"))
        rows.append(("... learning phase only (after event 0)", "-",
                     f"{t['speedup_learning_phase_vs_pytorch_ar1_loop']:.2f}x"))
        rows.append(("... vs PyTorch with clq's latent cache", "-", f"{t['speedup_vs_pytorch_with_latent_cache']:.2f}x"))
        rows.append(("final accuracy clq (U8+U8) / clq FP32 / PyTorch FP32", "within 1 point",
                     f"{100 * acc['clq']:.2f} / {100 * acc['clq-fp32']:.2f} / {100 * acc['torch']:.2f} % "
                     f"(gap {t['accuracy_gap_points']['clq U8+U8 - PyTorch FP32']:+.2f} points)"))
        if "accuracy_over_seeds" in t:
            a = t["accuracy_over_seeds"]
            rows.append((f"final accuracy, mean over seeds {a['seeds']}: clq U8+U8 / PyTorch FP32", "within 1 point",
                         f"{100 * a['mean']['clq']:.2f} / {100 * a['mean']['torch']:.2f} % "
                         f"(gap {a['gap_points_of_means']:+.2f} points)"))
    if "adaptive" in res:
        a = res["adaptive"]
        for layer, r in a["layers"].items():
            rows.append((f"adaptive-stage training l={layer}, MobileNet-V1 1.0/128, batch {a['batch']}",
                         ">= 30 % of peak" if layer == "23" else "-",
                         f"{100 * r['fraction_of_peak']:.1f} % of {a['peak']['gflops']:.0f} GFLOP/s "
                         f"({r['achieved_gflops']:.0f} GFLOP/s, {r['samples_per_s']:.0f} samples/s)"))
        if "default_experiment" in a:
            d = a["default_experiment"]
            rows.append((f"adaptive-stage training of the default experiment (l={d['layer']}, {d['model']})", "-",
                         f"{100 * d['fraction_of_peak']:.1f} % of peak ({d['achieved_gflops']:.0f} GFLOP/s)"))
    if "vectorized" in res:
        v = res["vectorized"]
        r = v["ratios"]
        rows.append((f"{len(v['lr_bits'])} bit-widths x {len(v['seeds'])} seeds, one program, vs one run", "<= 3x",
                     f"{r['sweep_with_shared_and_compile_over_one_run']:.2f}x (compiled: "
                     f"{r['sweep_with_shared_over_one_run']:.2f}x; vs {len(v['lr_bits']) * len(v['seeds'])} separate "
                     f"runs {r['speedup_vs_KxS_separate_runs']:.2f}x faster)"))
    if "replay_read" in res:
        for shape, by_bits in res["replay_read"]["read"].items():
            ratios = {int(b): m["ratio_best"] for b, m in by_bits.items()}
            rows.append((f"replay mini-batch read, packed / unpacked codes, {shape}", "-",
                         ", ".join(f"Q={b}: {r:.2f}x" for b, r in sorted(ratios.items()))))
    if "cost" in res:
        rows.append(("cost-model grid throughput", ">= 100,000 configurations/s",
                     f"{res['cost']['configurations_per_second']:,.0f} /s"))
    if "e2e" in res:
        e = res["e2e"]
        rows.append(("default experiment end to end (no cache / warm compilation cache / rerun, every cache warm)", "-",
                     f"{e['wall_s']['no cache']['best']:.1f} s / {e['wall_s']['warm cache']['best']:.1f} s / "
                     f"{e['wall_s']['rerun']['best']:.1f} s"))
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=ORDER, default=list(ORDER))
    ap.add_argument("--quick", action="store_true", help="smoke run; results go to a temporary folder")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    out_dir = args.out_dir or (tempfile.mkdtemp(prefix="clq-bench-") if args.quick else RESULTS)
    res, seconds = {}, {}
    for name in ORDER:
        if name in args.only:
            t0 = time.perf_counter()
            print(f"== {name}", file=sys.stderr)
            res[name] = _run(name, out_dir, args.quick)
            seconds[name] = time.perf_counter() - t0
    rows = table(res)
    summary = {"command": "python bench/run_all.py" + (" --quick" if args.quick else ""), "seconds": seconds,
               "table": [{"figure": a, "target": b, "measured": c} for a, b, c in rows], "machine": machine()}
    write_result("summary", summary, os.path.join(out_dir, "summary.json"))
    print("\n| figure | target | measured |\n|---|---|---|")
    for a, b, c in rows:
        print(f"| {a} | {b} | {c} |")
    print(f"\nresults in {out_dir}")
    return summary


if __name__ == "__main__":
    main()
