"""Throughput of the vectorized cost model: configurations per second over a sweep grid.

    .venv/bin/python bench/bench_cost.py                 # ~2 s; writes bench/results/cost.json

The grid is latent layer (0..27) x LR bits (FP32, 6, 7, 8, 16) x buffer size (12 values) x L1 size (128, 256,
512 kB) x target (VEGA, STM32L4) = 10,080 configurations of the paper's network and learning event, evaluated
by one `clq.cost.evaluate_grid` call (best of --repeats). Side by side in the same run, the same
configurations one at a time through `clq.cost.cost_report` (on a random subset, extrapolated per
configuration) give the speed-up of vectorization as a ratio, which is what carries over between machines.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from clq.cost import cost_report, evaluate_grid, load_target
from clq.model.specs import mobilenet_v1_specs
from clq.tracking import write_json_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AXES = dict(
    latent_layers=list(range(28)),
    lr_bits=[None, 6, 7, 8, 16],
    buffer_sizes=[0, 100, 200, 375, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000],
    l1_bytes=[128 * 1024, 256 * 1024, 512 * 1024],
)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="grid evaluations; the best one is reported")
    ap.add_argument("--loop-sample", type=int, default=100, help="configurations timed one at a time")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "cost.json"))
    args = ap.parse_args(argv)

    specs = mobilenet_v1_specs(width=1.0, input_size=128, num_classes=50)
    targets = [load_target("vega"), load_target("stm32l4")]
    grid = evaluate_grid(specs, targets, **AXES)  # warm-up (and the row list for the loop below)
    n = len(grid["target"])
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        evaluate_grid(specs, targets, **AXES)
        times.append(time.perf_counter() - t0)
    best = min(times)

    rng = np.random.default_rng(0)
    rows = rng.choice(n, size=min(args.loop_sample, n), replace=False)
    by_name = {t.name: t for t in targets}
    t0 = time.perf_counter()
    for i in rows:
        bits = None if np.isnan(grid["lr_bits"][i]) else int(grid["lr_bits"][i])
        cost_report(specs, int(grid["latent_layer"][i]), int(grid["buffer_size"][i]), bits, 300, 4, 128,
                    by_name[grid["target"][i]], l1_bytes=int(grid["l1_bytes"][i]))
    loop_per_config = (time.perf_counter() - t0) / len(rows)

    result = {
        "benchmark": "cost model grid throughput",
        "command": "python bench/bench_cost.py",
        "grid": {"configurations": n, **{k: [v if v is not None else "fp32" for v in vals] for k, vals in AXES.items()},
                 "targets": [t.name for t in targets]},
        "grid_seconds_best": best,
        "grid_seconds_all": times,
        "configurations_per_second": n / best,
        "single_report_seconds_per_configuration": loop_per_config,
        "speedup_vectorized_vs_single_reports": loop_per_config * n / best,
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine()},
    }
    write_json_atomic(args.out, result)
    print(f"{n:,} configurations in {best * 1e3:.1f} ms (best of {args.repeats}): "
          f"{n / best:,.0f} configurations/s; one cost_report at a time: {1 / loop_per_config:,.0f}/s "
          f"-> vectorized is {loop_per_config * n / best:,.0f}x faster. Wrote {os.path.relpath(args.out, ROOT)}")
    return result


if __name__ == "__main__":
    main()
