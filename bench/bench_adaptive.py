"""Adaptive-stage training throughput and its fraction of this machine's FP32 matmul peak.

    .venv/bin/python bench/bench_adaptive.py            # ~3 min on the 2-core machine; writes bench/results/adaptive.json

For the paper's MobileNet-V1 1.0 / 128 px cut at l = 19, 23 and 27 (adaptive stages 20..28, 24..28, 28), one
clq learning event (`clq.train.make_learning_event`: 300 new latents + a buffer of 1500 UINT-8 replays,
mini-batches of 21 + 107 = 128, one epoch of 15 SGD steps in one `lax.scan`) is timed after compilation.
In the same process, the machine's peak is measured as a large FP32 `jnp.dot` (best of 1024², 2048², 4096²,
jitted), and the achieved rate of the event is

    useful FLOP/s = steps x batch x 2 x (forward MAC + weight-gradient MAC + input-gradient MAC) / time

with MACs from the layer specs (`LayerSpec.macs`; the first adaptive layer needs no input gradient). The same
adaptive stage and SGD step in PyTorch 2.13 (oneDNN, eager) is timed beside it when torch is installed.
Every timing is the best (and median) of --repeats after warm-up: the machine is shared.

For the default experiment's adaptive stage, the learning event and one evaluation (10,000 UINT-8 test latents,
chunks of 1,000) are also timed with its 2x2 depthwise layers computed pixel by pixel (what clq runs,
`clq.model.forward._depthwise_per_pixel`) and as the padded slices before (``PER_PIXEL_MAX_OUTPUTS = 0``),
alternating in the same process, with a check that both give the same parameters and counts.
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

from bench.common import best_and_median, default_experiment, machine, write_result  # noqa: E402
from clq.model import fold_batch_norm, init_params, mobilenet_v1_specs, split_specs  # noqa: E402
from clq.quant import make_latent_codec  # noqa: E402
from clq.replay import make_replay_buffer  # noqa: E402
from clq.train import make_learning_event, make_optimizer, minibatch_composition  # noqa: E402
from clq.perf import matmul_peak, training_macs  # noqa: E402


def reduction_layouts(repeats: int = 5, n: int = 2000) -> dict:
    """Microseconds of one bias-gradient-like reduction, sum over the batch of x * g, in two layouts of the same data.

    [B, 1, 1, C] over axis 0 is what autodiff emits for a layer at 1x1 resolution kept in NHWC; XLA's CPU backend
    hands it to a YNNPACK reduction that is far slower than the same sum over [B, C] rows, which is why
    `clq.model.forward` runs 1x1 layers and depthwise taps on rows. Timed as `n` reductions in one `lax.scan`.
    """
    out = {}
    for b, c in ((128, 512), (128, 256)):
        x = jax.random.normal(jax.random.PRNGKey(0), (b, 1, 1, c))
        g = jax.random.normal(jax.random.PRNGKey(1), (b, 1, 1, c))
        row = {}
        for name, f in (("[B,1,1,C] axis 0", lambda x, g: jnp.sum(x * g, axis=0).reshape(-1)),
                        ("[B,C] axis 0", lambda x, g: jnp.sum((x * g).reshape(b, c), axis=0))):
            def loop(x, g, f=f):
                # `x + acc * 0` makes each reduction depend on the carry, so XLA cannot hoist it out of the loop.
                return jax.lax.scan(lambda acc, _: (acc + f(x + acc * 0, g)[0], None), jnp.float32(0), None,
                                    length=n)[0]
            run = jax.jit(loop)
            jax.block_until_ready(run(x, g))
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(run(x, g))
                times.append((time.perf_counter() - t0) / n * 1e6)
            row[name] = best_and_median(times)
        row["ratio"] = row["[B,1,1,C] axis 0"]["best"] / row["[B,C] axis 0"]["best"]
        out[f"B={b}, C={c}"] = row
    return out


def clq_event(specs, layer: int, repeats: int, n_new=300, buffer_size=1500, batch=128, keep_params=False) -> dict:
    """Seconds per SGD step of one compiled learning event (1 epoch) of the adaptive stage above `layer`
    (`keep_params`: also the parameters after the first event, under "params")."""
    _, adaptive = split_specs(specs, layer)
    shape = adaptive[0].in_shape
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    params = fold_batch_norm(specs, params, stats)[layer + 1 :]
    opt = make_optimizer(1e-4, 0.9, 5e-4)
    buf = make_replay_buffer(buffer_size, shape, make_latent_codec(8, 6.0), "ar1", specs[-1].out_channels)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 6, (buffer_size, *shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, specs[-1].out_channels, buffer_size).astype(np.int32))
    state = jax.jit(buf.add)(buf.init(), x, y, jnp.ones(buffer_size, bool), jax.random.PRNGKey(0))
    comp = minibatch_composition(n_new, buffer_size, batch)
    event = make_learning_event(adaptive, opt, buf, comp, epochs=1)
    new_x, new_y = x[:n_new], y[:n_new]
    params = jax.tree.map(jnp.array, params)
    opt_state = opt.init(params)
    t0 = time.perf_counter()
    params, opt_state, m, _ = event(params, opt_state, new_x, new_y, jnp.int32(n_new), state, jax.random.PRNGKey(1))
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    after_first = jax.tree.map(np.asarray, params) if keep_params else None  # before the next call donates them
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        params, opt_state, m, _ = event(params, opt_state, new_x, new_y, jnp.int32(n_new), state, jax.random.PRNGKey(r))
        jax.block_until_ready((params, m))
        times.append((time.perf_counter() - t0) / comp.iterations_per_epoch)
    out = {"step_s": best_and_median(times), "first_call_s": first, "steps_per_call": comp.iterations_per_epoch,
           "composition": comp._asdict()}
    return out if after_first is None else {**out, "params": after_first}


def evaluation_call(specs, layer: int, repeats: int, test_size=10_000, chunk=1000) -> dict:
    """Seconds of one evaluation (`clq.train.evaluate`: the adaptive stage above `layer` on `test_size` UINT-8
    test latents in chunks of `chunk`, one compiled call), and its hit counts."""
    from clq.train.evaluate import jit_count_hits, make_hits, pad_eval_latents

    _, adaptive = split_specs(specs, layer)
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    params = fold_batch_norm(specs, params, stats)[layer + 1 :]
    rng = np.random.default_rng(0)
    k = specs[-1].out_channels
    test = jax.device_put(pad_eval_latents(rng.integers(0, 256, (test_size, *adaptive[0].in_shape), dtype=np.uint8),
                                           rng.integers(0, k, test_size).astype(np.int32), None, chunk))
    count = jit_count_hits(make_hits(adaptive, k, 1), chunk)
    hits = jax.block_until_ready(count(params, jnp.float32(0.03), test))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(count(params, jnp.float32(0.03), test))
        times.append(time.perf_counter() - t0)
    return {"call_s": best_and_median(times), "hits": np.asarray(hits[0])}


def small_grid_forms(specs, layer: int, repeats: int, rounds: int = 2, batch: int = 128) -> dict:
    """The default experiment's learning event and evaluation with its 2x2 depthwise layers computed pixel by pixel
    (`clq.model.forward._depthwise_per_pixel`, what clq runs) and as the padded slices before it
    (``PER_PIXEL_MAX_OUTPUTS = 0``), alternating `rounds` times in this process; and whether the two give the same
    parameters after an event and the same evaluation counts."""
    import importlib

    fw = importlib.import_module("clq.model.forward")  # the module (clq.model re-exports a function `forward`)
    on = fw.PER_PIXEL_MAX_OUTPUTS
    runs = {"pixel by pixel": [], "padded slices": []}
    try:
        for _ in range(rounds):
            for name, max_outputs in (("pixel by pixel", on), ("padded slices", 0)):
                fw.PER_PIXEL_MAX_OUTPUTS = max_outputs
                runs[name].append((clq_event(specs, layer, repeats, batch=batch, keep_params=True),
                                   evaluation_call(specs, layer, repeats)))
    finally:
        fw.PER_PIXEL_MAX_OUTPUTS = on
    out = {}
    for name, rs in runs.items():
        out[name] = {"step_s_best": min(r[0]["step_s"]["best"] for r in rs),
                     "evaluation_s_best": min(r[1]["call_s"]["best"] for r in rs)}
    new, old = runs["pixel by pixel"][0], runs["padded slices"][0]
    out["step_ratio_slices_over_pixel"] = out["padded slices"]["step_s_best"] / out["pixel by pixel"]["step_s_best"]
    out["evaluation_ratio_slices_over_pixel"] = (out["padded slices"]["evaluation_s_best"]
                                                 / out["pixel by pixel"]["evaluation_s_best"])
    out["same_parameters_and_counts"] = bool(
        all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new[0]["params"]), jax.tree.leaves(old[0]["params"])))
        and np.array_equal(new[1]["hits"], old[1]["hits"]))
    return out


def torch_step(specs, layer: int, repeats: int, batch=128, steps=5):
    """Seconds per SGD step of the same adaptive stage in PyTorch (eager, NCHW), or None without torch."""
    try:
        import torch
        import torch.nn.functional as F

        from bench.torch_ref.model import AdaptiveStage, params_from_clq
    except ImportError:
        return None
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    folded = fold_batch_norm(specs, params, stats)[layer + 1 :]
    model = AdaptiveStage(specs[layer + 1 :], params_from_clq(specs[layer + 1 :], folded))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    h, w, c = specs[layer].out_shape
    x = torch.rand(batch, c, h, w) * 6
    y = torch.randint(0, specs[-1].out_channels, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    # PyTorch's OpenMP threads spin at barriers: on the shared 2-core machine 2 threads can be 4x slower than 1
    # when other jobs run, so the reference gets the faster of 1 and 2 threads (its best case).
    by_threads = {}
    for threads in (1, os.cpu_count() or 1):
        torch.set_num_threads(threads)
        for _ in range(2):
            step()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            times.append((time.perf_counter() - t0) / steps)
        by_threads[threads] = best_and_median(times)
    threads = min(by_threads, key=lambda k: by_threads[k]["best"])
    return {"step_s": by_threads[threads], "threads": threads, "by_threads": by_threads, "torch": torch.__version__}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[19, 23, 27])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    specs = mobilenet_v1_specs(1.0, 128, 50)
    peak_before = matmul_peak((1024, 2048, 4096), 7)
    rows = {}
    for layer in args.layers:
        _, adaptive = split_specs(specs, layer)
        macs = training_macs(adaptive)
        ev = clq_event(specs, layer, args.repeats, batch=args.batch)
        tr = None if args.no_torch else torch_step(specs, layer, args.repeats, batch=args.batch)
        rows[layer] = {"macs_per_sample": macs, "clq": ev, "torch": tr}
        print(f"l={layer}: clq {ev['step_s']['best'] * 1e3:.1f} ms/step"
              + ("" if tr is None else f", PyTorch {tr['step_s']['best'] * 1e3:.1f} ms/step"), file=sys.stderr)
    # The default experiment's own adaptive stage (conf/config.yaml: MobileNet-V1 0.5 / 32 px at its latent layer).
    exp = default_experiment()
    d_specs, d_layer = exp.model.specs(), exp.latent_layer
    d_macs = training_macs(split_specs(d_specs, d_layer)[1])
    d_ev = clq_event(d_specs, d_layer, args.repeats, batch=exp.train.batch_size)
    print(f"default experiment l={d_layer}: clq {d_ev['step_s']['best'] * 1e3:.2f} ms/step", file=sys.stderr)
    forms = small_grid_forms(d_specs, d_layer, args.repeats, batch=exp.train.batch_size)
    layouts = reduction_layouts()
    peak_after = matmul_peak((1024, 2048, 4096), 7)
    # The peak is measured before and after the layers; the higher one is the machine's (least disturbed) peak.
    peak = max(peak_before["gflops"], peak_after["gflops"])

    def add_rates(r: dict, batch: int) -> dict:
        """samples/s, useful GFLOP/s and share of `peak` of a row's best clq step (and its PyTorch step)."""
        flop = batch * 2 * r["macs_per_sample"]["total"]
        best = r["clq"]["step_s"]["best"]
        r.update(samples_per_s=batch / best, achieved_gflops=flop / best / 1e9, fraction_of_peak=flop / best / 1e9 / peak)
        if r.get("torch") is not None:
            r["torch"]["achieved_gflops"] = flop / r["torch"]["step_s"]["best"] / 1e9
            r["torch_over_clq_step_time"] = r["torch"]["step_s"]["best"] / best
        return r

    for r in rows.values():
        add_rates(r, args.batch)
    default_row = add_rates({"model": f"MobileNet-V1 {exp.model.width} / {exp.model.input_size} px, "
                                      f"{exp.model.num_classes} classes", "layer": d_layer, "macs_per_sample": d_macs,
                             "clq": d_ev}, exp.train.batch_size)
    result = {"benchmark": "adaptive-stage training throughput vs FP32 matmul peak",
              "default_experiment": default_row, "default_experiment_small_depthwise_grids": forms,
              "reduction_layouts_us": layouts,
              "command": "python bench/bench_adaptive.py", "model": "MobileNet-V1 1.0 / 128 px, 50 classes",
              "batch": args.batch, "peak": {"before": peak_before, "after": peak_after, "gflops": peak},
              "layers": {str(k): v for k, v in rows.items()}, "machine": machine()}
    path = write_result("adaptive", result, args.out)
    print("| l | clq step (ms) | samples/s | GFLOP/s | of peak | PyTorch step (ms) |\n|---|---|---|---|---|---|")
    for layer, r in rows.items():
        t = r["torch"]
        torch_ms = "-" if t is None else f"{t['step_s']['best'] * 1e3:.1f}"
        print(f"| {layer} | {r['clq']['step_s']['best'] * 1e3:.1f} | {r['samples_per_s']:.0f} | "
              f"{r['achieved_gflops']:.1f} | {100 * r['fraction_of_peak']:.1f} % | {torch_ms} |")
    print(f"| default experiment, l={d_layer} ({default_row['model']}) | {d_ev['step_s']['best'] * 1e3:.2f} | "
          f"{default_row['samples_per_s']:.0f} | {default_row['achieved_gflops']:.1f} | "
          f"{100 * default_row['fraction_of_peak']:.1f} % | - |")
    print(f"default experiment, 2x2 depthwise layers as padded slices instead of pixel by pixel: learning step "
          f"{forms['step_ratio_slices_over_pixel']:.3f}x, evaluation {forms['evaluation_ratio_slices_over_pixel']:.3f}x "
          f"as long; same parameters and counts: {forms['same_parameters_and_counts']}")
    for k, r in layouts.items():
        print(f"reduction over the batch, {k}: [B,1,1,C] {r['[B,1,1,C] axis 0']['best']:.1f} us, "
              f"[B,C] {r['[B,C] axis 0']['best']:.1f} us ({r['ratio']:.1f}x)")
    print(f"peak FP32 matmul {peak:.1f} GFLOP/s; wrote {os.path.relpath(path, ROOT)}")
    return result


if __name__ == "__main__":
    main()
