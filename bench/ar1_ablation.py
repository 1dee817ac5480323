"""Where the points go: clq's AR1 choices one at a time on the preset's stream (docs/ar1_parity.md).

    .venv/bin/python bench/ar1_ablation.py [--seeds 0] [--only NAME ...]

Each row is ``clq-run +experiment=fashion_mnist_imagenet seed=S tracking=none <overrides>`` (run by
bench_avalanche.run_clq, timed and with its peak memory); the preset is AR1's event 0 (pretrained statistics below
l, batch renormalization above, constant learning rate, a bias-free zeroed classifier) with BN folded into the
adaptive stage and CWR*. Writes bench/results/ar1_ablation.json (after every run) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_avalanche import WORK, run_clq  # noqa: E402
from bench.common import machine, write_result  # noqa: E402

#: name -> overrides of the preset, and what the row changes.
ROWS = {
    "preset": ([], "the preset: AR1's event 0, BN folded above l, CWR* (ar1star), UINT-8 + UINT-8"),
    "fp32": (["quant=fp32", "replay.bits=null"], "FP32 frozen stage + FP32 replays"),
    "before": (["train.first_event.norm=batch", "train.first_event.schedule=cosine", "train.head.bias=true",
                "train.head.init=random"], "clq's event 0 before the AR1 options (batch statistics, cosine, "
                                          "classifier with bias, random init)"),
    "event0_batch_stats": (["train.first_event.norm=batch"], "event 0 with batch statistics at every layer"),
    "event0_cosine": (["train.first_event.schedule=cosine"], "cosine learning-rate decay in event 0"),
    "head_bias_random": (["train.head.bias=true", "train.head.init=random"], "classifier with bias, random init"),
    "qlr": (["train.strategy=qlr"], "no CWR* (plain QLR)"),
    "adaptive_bn": (["train.adaptive_norm=bn"], "BN in training mode above l in learning events"),
    "adaptive_brn_reset": (["train.adaptive_norm=brn", "train.reset_momentum=true"],
                           "AR1's batch renormalization above l and a fresh momentum per event"),
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="+", choices=sorted(ROWS), default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = {k: v for k, v in ROWS.items() if args.only is None or k in args.only}
    runs: dict[str, dict] = {}
    result = {"benchmark": "AR1 choices one at a time, clq-run +experiment=fashion_mnist_imagenet", "rows": {},
              "machine": machine()}
    for name, (overrides, what) in rows.items():
        for seed in args.seeds:
            r = run_clq(f"ablation-{name}", overrides, seed, [], os.path.join(WORK, "ablation", f"seed{seed}"))
            runs.setdefault(name, {})[seed] = r
            per = runs[name]
            result["rows"][name] = {
                "overrides": overrides, "what": what, "seeds": sorted(per),
                "after_event0": float(np.mean([r["accuracy_per_event"][0] for r in per.values()])),
                "final_accuracy": float(np.mean([r["final_accuracy"] for r in per.values()])),
                "average_accuracy": float(np.mean([r["average_accuracy"] for r in per.values()])),
                "wall_s": float(np.mean([r["wall_s"] for r in per.values()])),
                "runs": {str(s): r for s, r in per.items()}}
            path = write_result("ar1_ablation", result, args.out)
            print(f"{name} seed {seed}: final {100 * r['final_accuracy']:.2f} %", file=sys.stderr)
    print("| row | overrides | after event 0 (%) | final (%) | average (%) |\n|---|---|---|---|---|")
    for name, row in result["rows"].items():
        print(f"| {name} | {' '.join(row['overrides']) or '-'} | {100 * row['after_event0']:.2f} | "
              f"{100 * row['final_accuracy']:.2f} | {100 * row['average_accuracy']:.2f} |")
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return result


if __name__ == "__main__":
    main()
