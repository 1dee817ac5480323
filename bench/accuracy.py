"""Accuracy of the default experiment over seeds: FP32 vs UINT-8 latents, and the joint upper bound.

    .venv/bin/python bench/accuracy.py --seeds 0 1 2        # ~4 min per seed on the 2-core CPU machine

Runs the default configuration (conf/config.yaml) through `clq.run.run_experiment`-equivalent library
calls for five precisions, "frozen stage + latent replays" as in paper.md §4: FP32+FP32, FP32+U8, U8+U8 (the
default: per-layer weights after cross-layer equalization), the paper's U8 pipeline (no equalization) + U8, U8
with per-channel weights + U8, and the joint (i.i.d.) upper bound of the same model. Writes
bench/results/accuracy.json and prints a markdown table (mean +- std over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from clq.config import experiment_config
from clq.run import load_stream
from clq.tracking import write_json_atomic
from clq.train.loop import NonFiniteError, ReplayConfig, run_continual

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import default_config  # noqa: E402

VARIANTS = {  # name: (frozen stage: None = FP32, else quant overrides; lr_bits)
    "FP32 + FP32": (None, None),
    "FP32 + U8": (None, 8),
    "U8 + U8": ({}, 8),  # the default: per-layer weights, as the paper, after cross-layer equalization
    "U8 paper (no equalization) + U8": ({"equalize": False}, 8),  # the paper's pipeline exactly
    "U8 per-channel + U8": ({"weight_granularity": "per_channel", "equalize": False}, 8),
}


def _stats(runs: list) -> dict:
    """Mean and std of a variant's final accuracies over the runs that completed (None: the run diverged)."""
    done = [x for x in runs if x is not None]
    return {"mean": float(np.mean(done)) if done else float("nan"), "std": float(np.std(done)) if done else float("nan"),
            "runs": runs, "failed": len(runs) - len(done)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "accuracy.json"))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                    help="run only these; the others' figures are kept from --out if it exists")
    args = ap.parse_args(argv)
    cfg = default_config(args.overrides)
    base = experiment_config(cfg)
    rows = {k: [] for k in [*args.variants, *(["joint upper bound"] if "U8 + U8" in args.variants else [])]}
    t0 = time.time()
    for seed in args.seeds:
        exp = experiment_config({**cfg, "seed": seed})
        stream = load_stream(exp)
        for name in args.variants:
            frozen, bits = VARIANTS[name]
            quant = None if frozen is None else dataclasses.replace(exp.quant, **frozen)
            try:
                r = run_continual(stream, exp.model.specs(), exp.latent_layer, exp.train,
                                  ReplayConfig(exp.replay.size, bits, exp.replay.policy),
                                  quant, seed, joint_upper_bound=(name == "U8 + U8"))
            except NonFiniteError as e:  # a diverged run is a result of its variant: recorded, not averaged
                rows[name].append(None)
                print(f"seed {seed} {name}: failed: {e}", file=sys.stderr)
                continue
            rows[name].append(r["final_accuracy"])
            if "joint_accuracy" in r:
                rows["joint upper bound"].append(r["joint_accuracy"])
            print(f"seed {seed} {name}: final {r['final_accuracy']:.4f} ({time.time() - t0:.0f} s)", file=sys.stderr)
    summary = {k: _stats(v) for k, v in rows.items()}
    if set(args.variants) != set(VARIANTS):  # a partial re-run: keep the other rows (same seeds only)
        if os.path.exists(args.out):
            old = json.load(open(args.out))
            if old.get("seeds") != args.seeds:
                raise SystemExit(f"{args.out} holds seeds {old.get('seeds')}, not {args.seeds}: run every variant")
            summary = {**old["final_accuracy"], **summary}
        summary = {k: summary[k] for k in [*VARIANTS, "joint upper bound"] if k in summary}
    u8, fp, joint = summary["U8 + U8"]["mean"], summary["FP32 + FP32"]["mean"], summary["joint upper bound"]["mean"]
    out = {"config": {"latent_layer": base.latent_layer, "replay_size": base.replay.size, "policy": base.replay.policy,
                      "model": vars(base.model), "quant": vars(base.quant), "overrides": args.overrides},
           "seeds": args.seeds, "final_accuracy": summary,
           "u8_minus_fp32_points": 100 * (u8 - fp), "continual_over_joint": u8 / joint,
           "latent_u8_minus_fp32_points": 100 * (summary["FP32 + U8"]["mean"] - fp),
           **({"u8_per_channel_minus_fp32_points": 100 * (summary["U8 per-channel + U8"]["mean"] - fp)}
              if "U8 per-channel + U8" in summary else {}),
           "wall_time_s": time.time() - t0}
    write_json_atomic(args.out, out)
    print("| frozen + LR precision | final accuracy (mean ± std over seeds) |\n|---|---|")
    for k, v in summary.items():
        failed = f" ({v['failed']} of {len(v['runs'])} runs diverged)" if v.get("failed") else ""
        print(f"| {k} | {100 * v['mean']:.2f} ± {100 * v['std']:.2f} %{failed} |")
    print(f"\nU8+U8 minus FP32+FP32: {out['u8_minus_fp32_points']:+.2f} points; "
          f"U8+U8 / joint: {100 * out['continual_over_joint']:.1f} %")


if __name__ == "__main__":
    main()
