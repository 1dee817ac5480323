"""The full CORe50 NICv2-391 protocol on a generated tree: time per learning event and memory over events.

    .venv/bin/python bench/core50_protocol.py                       # 391 events, width 0.25 / 32 px
    .venv/bin/python bench/core50_protocol.py --events 40           # a shorter sample
    .venv/bin/python bench/core50_protocol.py --paper-events 4      # + the paper's model on 4 events
    .venv/bin/python bench/core50_protocol.py --no-protocol --paper-events 391   # the paper's model alone (a GPU)

CORe50's pixels cannot be downloaded here, so the benchmark writes a tree with **every path of the official
NICv2-391 run lists** (the 119,894 training frames of the run and the 2,249 frames of the 1-in-20 test list;
synthetic pixels, `clq.data.core50.synthetic`) under ``.cache/core50_bench/`` (git-ignored; ~0.5 GB, written
once, resumed if interrupted) and runs the learning-event loop over it exactly as `clq-run` does: lazy PNG
decoding per event, frozen stage, compiled learning event, buffer update, evaluation on the test latents.

Two models:

* ``protocol``: MobileNet-V1 at `--width` / `--image-size` (default 0.25 / 32 px, l=19), all `--events`
  learning events (391 = the whole protocol): the time per event and the process memory after every event,
  to show that memory does not grow with the number of events;
* ``paper`` (`--paper-events K > 0`): the paper's model (width 1.0, 128 px, l=19, 1500 UINT-8 LRs, 4 epochs,
  mini-batch 21 + 107) on the first K events of the same protocol.

Event 0 is trained from scratch for `--first-epochs` epochs (the paper fine-tunes ImageNet weights; the
benchmark times the protocol, not the accuracy). Writes ``bench/results/core50_protocol.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LISTS = os.path.join(os.path.dirname(ROOT), "shared", "data", "core50-filelists.tar.gz")


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc (Linux)."""
    cur = peak = float("nan")
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return cur, peak


def build_tree(lists: str, cache: str, scenario: str, run: int, processes: int) -> dict:
    """Write synthetic PNGs for every path of the run's batch lists and of the 1-in-20 test list."""
    from clq.data.core50 import load_scenario, write_image_tree

    t0 = time.perf_counter()
    sc = load_scenario(lists, scenario, run)
    paths = [p for b in sc.batches for p in b.paths] + list(sc.test.paths)
    last = [0.0]

    def progress(done, total):
        if time.perf_counter() - last[0] > 30 or done == total:
            last[0] = time.perf_counter()
            print(f"  tree: {done}/{total} new PNGs", file=sys.stderr)

    write_image_tree(cache, paths, processes=processes, progress=progress)
    return {"images": len(set(paths)), "seconds": round(time.perf_counter() - t0, 1)}


def run_protocol(name: str, cache: str, lists: str, scenario: str, run: int, width: float, image_size: int,
                 latent_layer: int, events: int | None, first_epochs: int, replay_size: int, epochs: int,
                 partial=None) -> dict:
    """Run the learning-event loop over the generated tree; per-event wall time and memory.

    `partial(rows)`, if given, gets the per-event rows so far every 10 events, so that a run stopped from outside
    (a time limit) still leaves its measured events behind."""
    from clq.data.core50 import load_core50_stream
    from clq.model.specs import mobilenet_v1_specs
    from clq.quant.frozen import QuantConfig
    from clq.train.loop import ReplayConfig, TrainConfig, run_continual

    t_load = time.perf_counter()
    stream = load_core50_stream(cache, scenario, run, image_size, filelists=lists, max_events=events)
    t_load = time.perf_counter() - t_load
    specs = mobilenet_v1_specs(width, image_size, stream.num_classes)
    # paper.md §3: SGD momentum 0.9, wd 5e-4, lr 1e-3 for event 0 and 5e-5 after; 4 epochs; mini-batch 128.
    train = TrainConfig(epochs=epochs, batch_size=128, lr=5e-5, momentum=0.9, weight_decay=5e-4,
                        first_epochs=first_epochs, first_lr=1e-3, first_batch_size=64, eval_batch_size=500)
    stamps, rows = [], []
    t0 = time.perf_counter()

    def on_event(i, row):
        now = time.perf_counter()
        cur, peak = _rss_mb()
        stamps.append(now)
        rows.append({"event": i, "seconds": round(now - (stamps[-2] if len(stamps) > 1 else t0), 3),
                     "rss_mb": round(cur, 1), "peak_rss_mb": round(peak, 1), "accuracy": round(row["accuracy"], 4)})
        if partial is not None and i % 10 == 0:
            partial(rows)
        if i % 25 == 0 or i == stream.num_events - 1:
            print(f"  {name}: event {i}/{stream.num_events - 1}  {rows[-1]['seconds']:.2f} s  "
                  f"rss {cur:.0f} MB (peak {peak:.0f})  acc {row['accuracy']:.3f}", file=sys.stderr)

    res = run_continual(stream, specs, latent_layer, train, ReplayConfig(replay_size, 8, "ar1"), QuantConfig(),
                        seed=0, on_event=on_event)
    later = [r["seconds"] for r in rows[1:]]
    rss_later = [r["rss_mb"] for r in rows[1:]]
    # Memory growth: RSS at the last event minus RSS at the first learning event after event 0's warm-up.
    warm = min(len(rss_later) - 1, 4)
    return {
        "model": {"width": width, "image_size": image_size, "latent_layer": latent_layer, "replay_size": replay_size,
                  "lr_bits": 8, "epochs": epochs, "first_epochs": first_epochs},
        "stream": stream.summary(),
        "events": stream.num_events,
        "stream_load_s": round(t_load, 2),
        "event0_s": rows[0]["seconds"],
        "per_event_s": {"mean": round(float(np.mean(later)), 3), "median": round(float(np.median(later)), 3),
                        "p95": round(float(np.percentile(later, 95)), 3), "max": round(float(np.max(later)), 3)}
        if later else None,
        "total_s": round(time.perf_counter() - t0, 1),
        "rss_mb": {"after_event0": rows[0]["rss_mb"],
                   "after_event_5": rss_later[warm] if later else None,
                   "last": rss_later[-1] if later else None,
                   "growth_after_warmup": round(rss_later[-1] - rss_later[warm], 1) if later else None,
                   "peak": rows[-1]["peak_rss_mb"]},
        "final_accuracy": res["final_accuracy"],
        "timing_s": res["timing_s"],
        "per_event": rows,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lists", default=DEFAULT_LISTS, help="official file lists (folder or archive)")
    ap.add_argument("--cache", default=os.path.join(ROOT, ".cache", "core50_bench"), help="generated tree")
    ap.add_argument("--scenario", default="nicv2_391")
    ap.add_argument("--run", type=int, default=0)
    ap.add_argument("--events", type=int, default=None, help="learning events incl. event 0 (default: all)")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--latent-layer", type=int, default=19)
    ap.add_argument("--first-epochs", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--replay-size", type=int, default=1500)
    ap.add_argument("--paper-events", type=int, default=0, help="also run the paper's model on this many events")
    ap.add_argument("--no-protocol", action="store_true", help="skip the small model (with --paper-events)")
    ap.add_argument("--processes", type=int, default=2, help="processes writing the tree")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "core50_protocol.json"))
    args = ap.parse_args(argv)
    if args.no_protocol and args.paper_events <= 0:
        sys.exit("--no-protocol leaves nothing to run without --paper-events K > 0")
    if not os.path.exists(args.lists):
        sys.exit(f"official file lists not found at {args.lists} (--lists)")
    # No device is pinned: JAX runs this on its default device (a GPU where its plugin finds one).
    sys.path.insert(0, ROOT)
    from bench.common import machine
    from clq.tracking import write_json_atomic

    out = {"scenario": args.scenario, "run": args.run}

    def partial(name):
        def write(rows):
            write_json_atomic(args.out, {**out, name: {"partial": True, "per_event": rows}})
        return write

    print("writing the generated tree (once)...", file=sys.stderr)
    out["tree"] = build_tree(args.lists, args.cache, args.scenario, args.run, args.processes)
    # After the tree: its writer processes are forked, and JAX must not be running in a process that forks.
    out["machine"] = machine()
    if not args.no_protocol:
        out["protocol"] = run_protocol("protocol", args.cache, args.lists, args.scenario, args.run, args.width,
                                       args.image_size, args.latent_layer, args.events, args.first_epochs,
                                       args.replay_size, args.epochs, partial("protocol"))
        write_json_atomic(args.out, out)
    if args.paper_events > 0:
        out["paper"] = run_protocol("paper", args.cache, args.lists, args.scenario, args.run, 1.0, 128, 19,
                                    args.paper_events, args.first_epochs, args.replay_size, args.epochs,
                                    partial("paper"))
    write_json_atomic(args.out, out)
    for k in ("protocol", "paper"):
        if k in out:
            r = out[k]
            print(f"{k}: {r['events']} events, {r['per_event_s']} s/event after event 0 ({r['event0_s']} s), "
                  f"rss {r['rss_mb']}, total {r['total_s']} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
