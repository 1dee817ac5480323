"""A vectorized sweep, K bit-widths x S seeds as one compiled program, against one run and separate runs.

    .venv/bin/python bench/bench_vectorized.py          # ~20 min on the 2-core machine; writes bench/results/vectorized.json

On the default experiment (l = 19, N_LR = 1500, 76 events), in one process:

1. ``one run``: `run_continual` of the default configuration (Q_LR = 8, seed 0), no checkpoints, no tracking;
2. ``shared``: event 0, the frozen stage and every latent of the stream, once (`prepare_sweep`);
3. ``separate learning phases``: for each bit-width, the learning phase (events 1..75, buffer updates, test
   accuracy after every event) the way `run_continual` runs it, one jitted call per event and per buffer
   update (`separate_phase` below), seed 0; K x S separate runs cost K x S times this (seeds do not change
   the work);
4. ``sweep``: `clq.train.vectorized.make_sweep`, the K x S learning phases as one jitted call (vmap over
   the K x S members), timed on its first call (compilation included) and on a second call with
   other seeds (no recompilation).

Reported: sweep (+ shared) / one run, the target's ratio; sweep / one learning phase (the strict ratio); and
the speed-up over K x S separate runs. Configuration (Q_LR = 8, seed 0) of the sweep is checked against the
one run's accuracy after every event.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import (  # noqa: E402
    CompileClock, command_line, default_experiment, machine, truncate_stream, write_result,
)
from clq.model.specs import split_specs  # noqa: E402
from clq.quant import make_latent_codec  # noqa: E402
from clq.replay import make_replay_buffer  # noqa: E402
from clq.run import load_stream  # noqa: E402
from clq.train import (  # noqa: E402
    ReplayConfig, evaluate, jit_count_hits, make_hits, make_learning_event, make_optimizer, minibatch_composition,
    pad_eval_latents, run_continual,
)
from clq.train.vectorized import lr_scales, make_sweep, prepare_sweep  # noqa: E402


def separate_phase(stream, exp, params, frozen, data, bits: int, seed: int) -> dict:
    """One configuration's learning phase as `run_continual` runs it (the separate-run baseline)."""
    _, adaptive = split_specs(exp.model.specs(), exp.latent_layer)
    t0 = time.perf_counter()
    opt = make_optimizer(exp.train.lr, exp.train.momentum, exp.train.weight_decay)
    buffer = make_replay_buffer(exp.replay.size, data.codes0.shape[1:], make_latent_codec(bits, frozen.a_max),
                                exp.replay.policy, stream.num_classes)
    add = jax.jit(buffer.add, donate_argnums=0)
    comp = minibatch_composition(int(data.event_n[0]), exp.replay.size, exp.train.batch_size)
    event = make_learning_event(adaptive, opt, buffer, comp, exp.train.epochs)
    _, k_train, k_buf = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = jax.tree.map(jnp.array, params)
    opt_state = opt.init(params)
    chunk = min(exp.train.eval_batch_size, len(stream.test_labels))
    test = jax.device_put(pad_eval_latents(frozen.latents(stream.test_images), stream.test_labels, stream.test_sessions,
                                       chunk))  # once, as run_continual
    count = jit_count_hits(make_hits(adaptive, stream.num_classes, len(stream.session_names)), chunk)

    def accuracy(p):
        return evaluate(count, p, frozen.scale, test, stream.test_labels, stream.test_sessions)["accuracy"]

    def decode(c):
        return jnp.asarray(c, jnp.float32) * frozen.scale

    n0 = len(data.labels0)
    state = add(buffer.init(), decode(data.codes0), jnp.asarray(data.labels0), jnp.ones(n0, bool),
                jax.random.fold_in(k_buf, 0))
    acc = [accuracy(params)]
    for i in range(1, len(data.event_n) + 1):
        x, y, n = decode(data.event_codes[i - 1]), jnp.asarray(data.event_labels[i - 1]), int(data.event_n[i - 1])
        params, opt_state, m, _ = event(params, opt_state, x, y, jnp.int32(n), state, jax.random.fold_in(k_train, i))
        np.asarray(m.loss)  # run_continual reads the losses after every event (its non-finite guard)
        state = add(state, x, y, jnp.arange(x.shape[0]) < n, jax.random.fold_in(k_buf, i))
        acc.append(accuracy(params))
    return {"seconds": time.perf_counter() - t0, "accuracy": acc, "bits": bits, "seed": seed}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 7, 6])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of the default experiment")
    ap.add_argument("--events", type=int, default=None, help="first N events only (quick trials)")
    ap.add_argument("--members-per-batch", type=int, default=None,
                    help="members vmapped together, the rest in a lax.map over batches (default: all vmapped)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    clock = CompileClock()
    exp = default_experiment(args.overrides)
    stream = truncate_stream(load_stream(exp), args.events)
    specs = exp.model.specs()
    K, S = len(args.bits), len(args.seeds)
    base_seed = exp.seed

    t0 = time.perf_counter()
    one = run_continual(stream, specs, exp.latent_layer, exp.train, ReplayConfig(exp.replay.size, 8, exp.replay.policy),
                        exp.quant, base_seed)
    t_one = time.perf_counter() - t0
    print(f"one run: {t_one:.1f} s, final accuracy {one['final_accuracy']:.4f}", file=sys.stderr)

    t0 = time.perf_counter()
    prepared = prepare_sweep(stream, specs, exp.latent_layer, exp.train, exp.quant, base_seed)
    (params, _), frozen, data = prepared.adaptive, prepared.frozen, prepared.data
    t_shared = time.perf_counter() - t0
    print(f"shared (event 0, frozen stage, latents): {t_shared:.1f} s", file=sys.stderr)

    phases = [separate_phase(stream, exp, params, frozen, data, b, base_seed) for b in args.bits]
    t_phase = min(p["seconds"] for p in phases)
    print(f"separate learning phases: {[round(p['seconds'], 1) for p in phases]} s", file=sys.stderr)

    _, adaptive = split_specs(specs, exp.latent_layer)
    comp = minibatch_composition(int(data.event_n[0]), exp.replay.size, exp.train.batch_size)
    sweep = make_sweep(adaptive, make_optimizer(exp.train.lr, exp.train.momentum, exp.train.weight_decay),
                       exp.replay.size, data.codes0.shape[1:], stream.num_classes, comp, exp.train.epochs,
                       max(args.bits), exp.replay.policy, members_per_batch=args.members_per_batch)
    bits, scales = np.asarray(args.bits, np.int32), lr_scales(args.bits, frozen.a_max)
    t0 = time.perf_counter()
    res = sweep(params, bits, scales, np.asarray(args.seeds, np.int32), data)
    acc = np.asarray(res.accuracy)
    t_sweep_first = time.perf_counter() - t0
    print(f"sweep {K}x{S}, first call: {t_sweep_first:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    res2 = sweep(params, bits, scales, np.asarray(args.seeds, np.int32) + 100, data)
    np.asarray(res2.accuracy)
    t_sweep = time.perf_counter() - t0
    print(f"sweep {K}x{S}, second call (other seeds): {t_sweep:.1f} s; compiled programs: {sweep.program.run._cache_size()}",
          file=sys.stderr)

    k8 = args.bits.index(8) if 8 in args.bits else None
    s0 = args.seeds.index(base_seed) if base_seed in args.seeds else None
    check = None
    if k8 is not None and s0 is not None:
        diff = np.abs(acc[k8, s0] - np.asarray(one["accuracy_per_event"]))
        check = {"max_abs_accuracy_difference": float(diff.max()), "events_differing": int((diff > 1e-6).sum())}
    per_config_phase = t_sweep / (K * S)
    result = {
        "benchmark": f"vectorized sweep {K} bit-widths x {S} seeds vs one run and separate runs",
        "command": command_line("bench_vectorized.py", argv),
        "latent_layer": exp.latent_layer, "events": stream.num_events, "members_per_batch": args.members_per_batch,
        "lr_bits": args.bits, "seeds": args.seeds,
        "seconds": {"one_run": t_one, "shared_event0_frozen_latents": t_shared, "separate_phase_best": t_phase,
                    "separate_phases": [p["seconds"] for p in phases], "sweep_first_call": t_sweep_first,
                    "sweep": t_sweep},
        "ratios": {
            "sweep_with_shared_and_compile_over_one_run": (t_shared + t_sweep_first) / t_one,
            "sweep_with_shared_over_one_run": (t_shared + t_sweep) / t_one,
            "sweep_over_one_learning_phase": t_sweep / t_phase,
            "speedup_vs_KxS_separate_runs": K * S * t_one / (t_shared + t_sweep_first),
            "speedup_vs_KxS_separate_learning_phases": K * S * t_phase / t_sweep,
            "sweep_seconds_per_configuration_over_one_learning_phase": per_config_phase / t_phase,
        },
        "final_accuracy": {"mean_over_seeds": {str(b): float(acc[k, :, -1].mean()) for k, b in enumerate(args.bits)},
                           "std_over_seeds": {str(b): float(acc[k, :, -1].std()) for k, b in enumerate(args.bits)},
                           "all": acc[:, :, -1].tolist(), "one_run": one["final_accuracy"],
                           "separate_phases": {str(p["bits"]): p["accuracy"][-1] for p in phases}},
        "sweep_config_8bit_seed0_vs_one_run": check,
        "compile": clock.snapshot(), "machine": machine(),
    }
    path = write_result("vectorized", result, args.out)
    r = result["ratios"]
    print(f"| what | seconds |\n|---|---|\n| one run (default, Q_LR=8, seed 0) | {t_one:.1f} |\n"
          f"| shared: event 0 + frozen stage + latents | {t_shared:.1f} |\n"
          f"| one learning phase, separate (best of {K}) | {t_phase:.1f} |\n"
          f"| sweep {K}x{S}, first call (compiles) | {t_sweep_first:.1f} |\n| sweep {K}x{S}, compiled | {t_sweep:.1f} |")
    print(f"\n(shared + sweep) / one run: {r['sweep_with_shared_and_compile_over_one_run']:.2f} "
          f"(compiled: {r['sweep_with_shared_over_one_run']:.2f}); sweep / one learning phase: "
          f"{r['sweep_over_one_learning_phase']:.2f}; vs {K * S} separate runs: "
          f"{r['speedup_vs_KxS_separate_runs']:.2f}x faster; check {check}; wrote {os.path.relpath(path, ROOT)}")
    return result


if __name__ == "__main__":
    main()
