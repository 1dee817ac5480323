"""The GPU measurements in one command: the device's matmul peak, the ImageNet preset, the default experiment and
the paper-size CORe50-shaped protocol, each in its own process, within a time limit.

    .venv/bin/python bench/bench_gpu.py                          # writes bench/results/gpu.json
    .venv/bin/python bench/bench_gpu.py --limit 420 --paper-events 391 --out gpu.json

Needs JAX with a GPU plugin (`pip install -e '.[cuda]'`, docs/performance.md "On a GPU"); it refuses to run on a
CPU-only JAX unless `--allow-cpu` (how the script itself is tried on a CPU machine). Nothing is pinned to a
device: every step runs the same commands a user runs (`clq-run` as ``python -m clq.run``,
`bench/core50_protocol.py`) on JAX's default device. Steps, in this order:

* ``device``: the backend, the device, and the n x n FP32 `jnp.dot` rate at JAX's default precision (what the
  runs' ``speed`` accounts divide by; TF32 tensor cores on NVIDIA GPUs) and at ``highest`` (true FP32);
* ``imagenet_cold`` / ``imagenet_warm``: `clq-run +experiment=fashion_mnist_imagenet tracking=none`, first with
  an empty persistent compilation cache, then with the cache the first run filled;
* ``default_cold`` / ``default_warm``: the default experiment (`clq-run tracking=none`), likewise;
* ``core50_paper``: `bench/core50_protocol.py --no-protocol --paper-events K`: the paper's model (width 1.0,
  128 px, l = 19, 1500 UINT-8 latent replays) on the first K events of NICv2-391 over a generated tree;
* ``core50_small`` (only with time left): the same protocol's small model (width 0.25, 32 px) on all 391 events.

Measured on one NVIDIA H200 with these two commands (docs/performance.md "On a GPU" has the figures):

    python bench/bench_gpu.py --limit 440 --out bench/results/gpu.json
    python bench/bench_gpu.py --steps core50_paper,core50_small --limit 320 --out bench/results/gpu_core50.json

Each step gets what is left of `--limit` (less a margin) as its own time limit, and the result file is written
after every step, so a step that runs out of time leaves the others' figures (and the CORe50 steps leave the
events they measured: core50_protocol.py writes its rows every 10 events).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import NO_RESULT_CACHES  # noqa: E402

# The device step, run in a child so that this process never takes the GPU's memory (JAX preallocates most of it
# in the first process that touches the device).
DEVICE_PROBE = r"""
import json, platform, jax
from clq.perf import matmul_peak
d = jax.devices()[0]
out = {"backend": jax.default_backend(), "device": d.device_kind, "devices": len(jax.devices()),
       "jax": jax.__version__, "python": platform.python_version(),
       "peak_default_precision": matmul_peak()}
with jax.default_matmul_precision("highest"):
    out["peak_highest_precision"] = matmul_peak()
print(json.dumps(out))
"""

# What a clq-run step keeps from the run's results.json.
RUN_KEYS = ("final_accuracy", "average_accuracy", "wall_time_s", "timing_s", "speed", "event0_cached")


def _shown(cmd: list[str], work: str | None) -> list[str]:
    """`cmd` as recorded: the interpreter as ``python`` and the scratch folder as ``$WORK``, not this machine's paths."""
    return ["python" if c == sys.executable else (c.replace(work, "$WORK") if work else c) for c in cmd]


def run_step(name: str, cmd: list[str], timeout: float, log, work: str | None = None) -> tuple[dict, str]:
    """Run `cmd` under `timeout` seconds; its output goes to `log`. Returns (result: status, seconds and the
    output's tail on failure; the whole output)."""
    print(f"[{name}] {' '.join(cmd)}  (limit {timeout:.0f} s)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    # Every step measures the work: event 0 and latents never come from clq-run's default on-disk caches.
    env = {**NO_RESULT_CACHES, **os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        status, out = ("ok" if p.returncode == 0 else f"exit {p.returncode}"), p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        status = "timeout"
        out = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
    seconds = round(time.perf_counter() - t0, 1)
    log.write(f"\n===== {name} ({status}, {seconds} s): {' '.join(cmd)}\n{out}\n")
    log.flush()
    print(f"[{name}] {status} in {seconds} s", file=sys.stderr, flush=True)
    return {"status": status, "process_s": seconds, "command": _shown(cmd, work),
            **({} if status == "ok" else {"tail": out[-3000:]})}, out


def clq_run(name: str, overrides: list[str], cache: str, work: str, timeout: float, log) -> dict:
    """One `clq-run` (``python -m clq.run``) with `overrides`, its compilation cache in `cache`."""
    run_dir = os.path.join(work, name)
    cmd = [sys.executable, "-m", "clq.run", *overrides, f"compile_cache_dir={cache}", f"hydra.run.dir={run_dir}"]
    res, _ = run_step(name, cmd, timeout, log, work)
    path = os.path.join(run_dir, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
        res.update({k: results[k] for k in RUN_KEYS if k in results})
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=float, default=1200, help="seconds for all steps together")
    ap.add_argument("--paper-events", type=int, default=391, help="events of the paper-size CORe50 protocol")
    ap.add_argument("--data-path", default=None, help="Fashion-MNIST folder (data.path; default: the config's)")
    ap.add_argument("--lists", default=None, help="CORe50 file lists (core50_protocol.py --lists)")
    ap.add_argument("--tree", default=os.path.join(ROOT, ".cache", "core50_bench"), help="generated CORe50 tree")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu.json"))
    ap.add_argument("--log", default=None, help="every step's output (default: next to --out, .log)")
    ap.add_argument("--steps", default="device,imagenet,default,core50_paper,core50_small")
    ap.add_argument("--allow-cpu", action="store_true", help="run on a CPU-only JAX (to try the script)")
    args = ap.parse_args(argv)
    from clq.tracking import write_json_atomic

    steps = args.steps.split(",")
    known = {"device", "imagenet", "default", "core50_paper", "core50_small"}
    if not set(steps) <= known:
        sys.exit(f"--steps: unknown {sorted(set(steps) - known)}; allowed: {sorted(known)}")
    t_start = time.perf_counter()
    margin = 5.0

    def left() -> float:
        return args.limit - (time.perf_counter() - t_start) - margin

    scratch = tempfile.TemporaryDirectory(prefix="clq-gpu-bench-")  # removed at exit, also after sys.exit
    work = scratch.name
    cache = os.path.join(work, "xla-cache")
    log_path = args.log or os.path.splitext(args.out)[0] + ".log"
    data = [f"data.path={args.data_path}"] if args.data_path else []
    out = {"limit_s": args.limit, "steps": {}}
    nvsmi = shutil.which("nvidia-smi")
    if nvsmi:
        q = subprocess.run([nvsmi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True)
        out["nvidia_smi"] = q.stdout.strip()

    def save():
        out["total_s"] = round(time.perf_counter() - t_start, 1)
        write_json_atomic(args.out, out)

    with open(log_path, "w") as log:
        if "device" in steps:
            res, text = run_step("device", [sys.executable, "-c", DEVICE_PROBE], min(120, left()), log)
            res["command"] = ["python", "-c", "bench_gpu.DEVICE_PROBE"]
            if res["status"] == "ok":
                res.update(json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1]))
                if res["backend"] == "cpu" and not args.allow_cpu:
                    out["steps"]["device"] = res
                    save()
                    sys.exit("JAX found no accelerator (backend cpu): install the cuda extra, or --allow-cpu")
            out["steps"]["device"] = res
            save()
        for kind, overrides in (("imagenet", ["+experiment=fashion_mnist_imagenet", "tracking=none", *data]),
                                ("default", ["tracking=none", *data])):
            if kind not in steps:
                continue
            for temp in ("cold", "warm"):
                name = f"{kind}_{temp}"
                if left() < 30:
                    out["steps"][name] = {"status": "skipped: no time left"}
                    continue
                out["steps"][name] = clq_run(name, overrides, cache, work, left(), log)
                save()
        core50 = [sys.executable, os.path.join("bench", "core50_protocol.py"), "--cache", args.tree,
                  "--processes", str(os.cpu_count() or 2)] + (["--lists", args.lists] if args.lists else [])
        for name, extra in (("core50_paper", ["--no-protocol", "--paper-events", str(args.paper_events)]),
                            ("core50_small", [])):
            if name not in steps:
                continue
            if left() < 60:
                out["steps"][name] = {"status": "skipped: no time left"}
                continue
            path = os.path.join(work, f"{name}.json")
            res, _ = run_step(name, [*core50, *extra, "--out", path], left(), log, work)
            if os.path.exists(path):
                with open(path) as f:
                    r = json.load(f)
                res.update({k: r[k] for k in ("tree", "paper", "protocol") if k in r})
            out["steps"][name] = res
            save()
    save()
    scratch.cleanup()
    print(json.dumps({k: v.get("status") for k, v in out["steps"].items()}))
    print(f"wrote {args.out} and {log_path}")


if __name__ == "__main__":
    main()
