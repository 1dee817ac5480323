"""Where event 0's whole-network SGD step spends its time: kernels by kind, thread use, and other variants of it.

    .venv/bin/python bench/profile_event0.py                  # default model: 0.5 / 32 px, batch 64 (~1 min)
    .venv/bin/python bench/profile_event0.py --width 1.0 --image-size 64 --batch 128 --out p.json
    .venv/bin/python bench/profile_event0.py --compile-options '{"xla_cpu_use_onednn": true}'   # + a switch

The step is event 0's (`clq.train.first_event`): `forward_bn` with batch statistics, softmax cross-entropy, SGD
with momentum and weight decay, inside a `lax.scan` over `--steps` mini-batches, as one jitted program. It is
timed, then traced once with `jax.profiler`. XLA's optimized HLO (dumped by this script) maps every kernel to
its kind:

* ``ynn reduce`` / ``ynn dot``: reductions and matmuls that XLA's CPU backend hands to YNNPACK;
* ``dot``: XLA's own matmuls; ``loop fusions``: elementwise work, slices and pads (depthwise taps,
  batch-norm arithmetic); ``native kernel``: clq's depthwise weight gradient (`clq.model.native`);
* ``threads busy``: kernel time summed over XLA's worker threads divided by the step's wall time (2.0 would
  be both cores busy all the time).

Variants, timed against the current step in the same process (the machine is shared: only same-process ratios
are meaningful):

* ``previous``: the same step with the depthwise weight gradient computed by XLA (K*K elementwise products, each
  summed by a reduction) instead of clq's native kernel (`clq.model.native`): the step before that kernel.
  Same function, other float32 summation order;
* ``older``: that step, also before clq wrote out the backward pass of its pointwise and im2col convs
  (`clq.model.forward._pixel_matmul`): autodiff of their 4-D einsums (`autodiff_linear_op`, kept below). Same
  values as ``previous``;
* ``fusion_emitters_off``: the current program compiled with ``xla_cpu_use_fusion_emitters=false``;
* any compiler switch given with ``--compile-options``;
* with ``--bounds``, two steps that compute another function, as bounds on what faster kernels could give:
  ``bound_bn_affine`` (batch norm in training mode replaced by its affine map ``y * gamma + beta``: no batch
  statistics, no normalization, forward or backward) and ``bound_depthwise_one_tap`` (every KxK depthwise conv
  replaced by one strided tap ``x[:, ::s, ::s] * w[K // 2, K // 2]``, forward and backward). A native kernel of
  either could at best bring the step to that bound's time.

``max_param_diff_vs_current`` is how far each variant's parameters are from the current step's after one epoch
program on these random images and labels. It is not a test of the kernel (tests/model/test_native.py compares
the gradients): on noise, SGD at lr 0.05 amplifies a rounding-level difference at step 1 to a different
trajectory within a few steps, while ``previous`` and ``older`` agree with each other exactly.
Writes ``bench/results/event0_profile.json``.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DUMP = tempfile.mkdtemp(prefix="clq-event0-hlo-")
atexit.register(shutil.rmtree, DUMP, True)  # XLA dumps every program of the process there
# Set before JAX starts: the optimized HLO names every kernel the profiler reports.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_dump_to={DUMP} --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$").strip()

import importlib  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bench.common import command_line, machine, write_result  # noqa: E402
from clq.model.specs import mobilenet_v1_specs  # noqa: E402
from clq.perf import matmul_peak, training_macs  # noqa: E402
from clq.train.event import cross_entropy  # noqa: E402

fw = importlib.import_module("clq.model.forward")
native = importlib.import_module("clq.model.native")  # the module (clq.model re-exports a function named forward)


def autodiff_linear_op(spec, w, x):
    """`fw.linear_op` with the 4-D einsums of pointwise convs and of the im2col conv differentiated by JAX (the
    steps before `fw._pixel_matmul`'s written-out backward pass)."""
    if spec.kind == "pw" and x.ndim == 4:
        return jnp.einsum("bhwc,cd->bhwd", x, w)
    if spec.kind == "conv":
        k, c = w.shape[0], x.shape[-1]
        return jnp.einsum("bhwk,kd->bhwd", fw.im2col(x, k, spec.stride), w.reshape(k * k * c, -1))
    return fw.linear_op(spec, w, x)


def forward(specs, params, x, variant: str):
    """`forward_bn(train=True)`'s output ('current' and 'previous', which differ only in how the depthwise weight
    gradient is computed: `epoch_program`), the same network with the pointwise and im2col convs' backward
    passes left to autodiff ('older'), or with batch norm as its affine map or depthwise convs as one tap (the
    two bounds)."""
    if variant in ("current", "previous"):
        return fw.forward_bn(specs, params, tuple({} for _ in specs), x, train=True)[0]
    for spec, p in zip(specs, params):
        x = fw._maybe_flat(x)
        if variant == "older":
            y = autodiff_linear_op(spec, p.get("w"), x)
        elif variant == "bound_depthwise_one_tap" and spec.kind == "dw" and x.ndim == 4:  # flat rows: 1x1 maps
            k = p["w"].shape[0]
            y = x[:, :: spec.stride, :: spec.stride] * p["w"][k // 2, k // 2, 0]
        else:
            y = fw.linear_op(spec, p.get("w"), x)
        y = fw._maybe_flat(y)
        if spec.batch_norm:
            y = y * p["gamma"] + p["beta"] if variant == "bound_bn_affine" else fw.batch_norm_train(
                y, p["gamma"], p["beta"])[0]
        elif "b" in p:
            y = y + p["b"]
        x = fw.activation(spec, y)
    return fw._restore(specs, x)


def epoch_program(specs, x_all, y_all, steps: int, batch: int, variant: str):
    optimizer = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))

    def loss_fn(p, x, y):
        logits = forward(specs, p, x.astype(jnp.float32) / 255.0, variant).reshape(x.shape[0], -1)
        return cross_entropy(logits, y)

    @jax.jit
    @native.use_native(variant not in ("previous", "older"))  # at trace time: native or XLA's K*K products
    def epoch(params, opt_state):
        def step(carry, idx):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, x_all[idx], y_all[idx])
            u, s = optimizer.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        (params, opt_state), loss = jax.lax.scan(step, (params, opt_state),
                                                 jnp.arange(steps * batch).reshape(steps, batch))
        return params, opt_state, loss

    return epoch, optimizer


def kernel_kinds(hlo_text: str) -> dict:
    """Optimized-HLO kernel name -> kind (ynn reduce / ynn dot / dot / loop fusion / copy ...)."""
    kinds = {}
    for m in re.finditer(r"%(\S+) = \S+ (fusion|dot|copy|concatenate|custom-call)\((.*)", hlo_text):
        name, op, rest = m.groups()
        if "__ynn_fusion" in rest:
            kinds[name] = "ynn dot" if "dot_general" in rest else "ynn reduce" if "reduce" in rest else "ynn other"
        elif op == "fusion":
            kinds[name] = "loop fusion"
        elif op == "custom-call":
            kinds[name] = "native kernel" if "clq_" in rest else "custom-call"
        else:
            kinds[name] = op
    return kinds


def profile(epoch, args, steps: int) -> dict:
    trace = tempfile.mkdtemp(prefix="clq-event0-trace-")
    jax.profiler.start_trace(trace)
    t0 = time.perf_counter()
    jax.block_until_ready(epoch(*args))
    wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    from jax.profiler import ProfileData

    pd = ProfileData.from_file(glob.glob(os.path.join(trace, "**", "*.xplane.pb"), recursive=True)[0])
    shutil.rmtree(trace, ignore_errors=True)
    # The first epoch program compiled is the current step (main compiles it before the previous step).
    hlo = open(sorted(glob.glob(os.path.join(DUMP, "*jit_epoch*after_optimizations.txt")))[0]).read()
    kinds = kernel_kinds(hlo)
    by_kind = collections.defaultdict(lambda: [0, 0.0])
    busy = 0.0
    for plane in pd.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):
                continue
            for ev in line.events:
                if ev.name.startswith(("ThunkExecutor", "SlinkyThreadPool", "end:")):
                    continue
                kind = kinds.get(ev.name)
                if kind is None:  # profiler events inside a kernel, not kernels of the program
                    continue
                by_kind[kind][0] += 1
                by_kind[kind][1] += ev.duration_ns / 1e6
                busy += ev.duration_ns / 1e6
    step_ms = 1000 * wall / steps
    return {"step_ms_traced": round(step_ms, 2),
            "kernels_per_step": round(sum(c for c, _ in by_kind.values()) / steps, 1),
            "threads_busy": round(busy / steps / step_ms, 2),
            "by_kind_ms_per_step": {k: {"kernels": round(c / steps, 1), "ms": round(ms / steps, 3)}
                                    for k, (c, ms) in sorted(by_kind.items(), key=lambda kv: -kv[1][1])}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40, help="mini-batches per timed program")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per variant")
    ap.add_argument("--compile-options", type=json.loads, action="append", default=[],
                    help='more compiler switches to time, e.g. \'{"xla_cpu_use_onednn": true}\' (repeatable)')
    ap.add_argument("--bounds", action="store_true",
                    help="also time the two bounds (batch norm as an affine map, depthwise convs as one tap)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    specs = tuple(mobilenet_v1_specs(args.width, args.image_size, 10))
    params, _ = fw.init_params(specs, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    n = args.steps * args.batch
    x_all = jnp.asarray(rng.integers(0, 256, (n, args.image_size, args.image_size, 3), dtype=np.uint8))
    y_all = jnp.asarray(rng.integers(0, 10, n, dtype=np.int32))
    step_flop = 2 * training_macs(specs)["total"] * args.batch
    peak = matmul_peak()["gflops"]

    programs, trained = {}, {}
    bounds = ("bound_bn_affine", "bound_depthwise_one_tap") if args.bounds else ()
    for variant in ("current", "previous", "older", *bounds):
        epoch, optimizer = epoch_program(specs, x_all, y_all, args.steps, args.batch, variant)
        state = (params, optimizer.init(params))
        out = jax.block_until_ready(epoch(*state))[0]
        if variant not in bounds:  # the bounds compute another function: no parameter comparison
            trained[variant] = out
        programs[variant] = (epoch, state)
    # How far each variant's parameters after one epoch program are from the current step's (0: the same values).
    reference = jax.tree.leaves(trained["current"])
    differs = {v: max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p), reference))
               for v, p in trained.items()}
    # The current step compiled with XLA's older loop emitters, and with any other compiler switches asked for
    # (same program, other code generation).
    epoch, state = programs["current"]
    switches = {"fusion_emitters_off": {"xla_cpu_use_fusion_emitters": False}}
    for opt in args.compile_options:
        switches[json.dumps(opt, sort_keys=True)] = opt
    for name, opt in switches.items():
        compiled = epoch.lower(*state).compile(opt)
        jax.block_until_ready(compiled(*state))
        programs[name] = (compiled, state)
    times = {v: [] for v in programs}
    for _ in range(args.rounds):
        for v, (epoch, state) in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(epoch(*state))
            times[v].append(1000 * (time.perf_counter() - t0) / args.steps)
    result = {"benchmark": "event 0's whole-network SGD step: kernels by kind, thread use, the previous step and compiler switches",
              "command": command_line("profile_event0.py", argv),
              "model": {"width": args.width, "image_size": args.image_size, "batch": args.batch},
              "peak_gflop_s": round(peak, 1), "step_gflop": round(step_flop / 1e9, 3), "variants": {}}
    for v, ts in times.items():
        best = min(ts)
        result["variants"][v] = {"ms_per_step_best": round(best, 2), "ms_per_step_median": round(float(np.median(ts)), 2),
                                 "fraction_of_peak": round(step_flop / (best / 1000) / 1e9 / peak, 4),
                                 "over_current": round(best / min(times["current"]), 3)}
        if v in differs:
            result["variants"][v]["max_param_diff_vs_current"] = differs[v]
    result["profile_current"] = profile(*programs["current"], args.steps)
    result["machine"] = machine()
    path = write_result("event0_profile", result, args.out)
    cur, prof = result["variants"]["current"], result["profile_current"]
    print(f"step {cur['ms_per_step_best']} ms ({100 * cur['fraction_of_peak']:.1f} % of {peak:.0f} GFLOP/s); "
          f"{prof['kernels_per_step']} kernels/step, threads busy {prof['threads_busy']}; time over the current step: "
          + ", ".join(f"{v} x{r['over_current']}" for v, r in result["variants"].items() if v != "current"))
    for k, v in prof["by_kind_ms_per_step"].items():
        print(f"  {k:12s} {v['ms']:7.3f} ms/step  {v['kernels']:6.1f} kernels")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
