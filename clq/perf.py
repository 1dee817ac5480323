"""How close each phase of a run gets to this machine's limit: a FLOP account against the measured matmul peak.

`flop_account` counts the useful FP32 work of every phase of a run analytically from the layer specs
(``LayerSpec.macs``, 2 FLOP per MAC), the stream and the run's own record, and divides it by the phase's measured
seconds (results.json's ``timing_s``). `matmul_peak` measures the machine's FP32 matmul rate in the same process
(a jitted n x n `jnp.dot`), the reference every fraction is given against:

* ``event_0``: training the whole network on the first experience (forward, weight and input gradients for
  every sample of every epoch) plus the population-statistics pass (one forward of the experience);
* ``frozen_pass``: layers 0..l on every image that goes through them once (event 0's, every learning event's,
  the test set's);
* ``learning_events``: the adaptive stage's training (batch x iterations x epochs samples per event);
* ``evaluation``: the adaptive stage's forward over the test latents after every event.

The frozen stage's integer work is counted as FP32-equivalent FLOP (it is simulated with FP32 arithmetic here).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Callable, Sequence

__all__ = ["matmul_peak", "cpu_model", "usable_cores", "training_macs", "flop_account", "group_account",
           "account_or_warning"]


# One n x n product must run well past dispatch overhead: 1024 (2.1 GFLOP, ~10 ms on 2 CPU cores) on a CPU; an
# accelerator does that in well under a millisecond, so it gets 8192 (1.1 TFLOP). On the 2-core machines clq is
# measured on, 1024 is also the fastest size: its operands fit the caches better than 2048's (best of 10 against
# best of 5, three alternated rounds on a Zen 4 EPYC: 208-211 against 184-192 GFLOP/s; 4096: 171), and it costs a
# run ~0.15 s instead of ~0.7 s. The highest rate is the strictest reference for a phase's share of it.
PEAK_SIZES = {"cpu": (1024,)}
ACCELERATOR_PEAK_SIZES = (8192,)


def matmul_peak(sizes: Sequence[int] | None = None, repeats: int = 10) -> dict:
    """FP32 GFLOP/s of one jitted n x n `jnp.dot` (2 n^3 FLOP) at JAX's default precision on the default device,
    best of `repeats`, for each n; `gflops` is the max, `backend` the device kind it ran on.

    `sizes=None` picks the size for the backend (`PEAK_SIZES`). On a GPU the default precision lets XLA use
    TF32 tensor cores for FP32 products, as it does for the training that is measured against this. About 0.15 s
    on 2 CPU cores (compilation included); every call measures (a launch of many members keeps one,
    `clq.launcher`).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    backend = jax.default_backend()
    sizes = sizes if sizes is not None else PEAK_SIZES.get(backend, ACCELERATOR_PEAK_SIZES)
    out = {}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
        f = jax.jit(jnp.dot)
        jax.block_until_ready(f(a, b))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(a, b))
            times.append(time.perf_counter() - t0)
        out[str(n)] = {"gflops": 2 * n**3 / min(times) / 1e9, "gflops_median": 2 * n**3 / float(np.median(times)) / 1e9}
    return {"by_size": out, "gflops": max(v["gflops"] for v in out.values()), "backend": backend,
            "device": str(jax.devices()[0].device_kind)}


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, CPU family and model (Linux ``/proc/cpuinfo``), e.g. ``AMD EPYC (family 25, model 17)``.

    Cloud machines often report a bare "AMD EPYC": the family and model tell the generation (25 / 17 is Zen 4,
    26 is Zen 5), whose matmul peaks differ by about 2x, so results from two kinds are never compared. Falls back
    to `platform.processor()` where there is no such file."""
    fields = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def usable_cores() -> int:
    """The cores this process should use for its own threads: ``NPROC`` when it is set (the `clq_joblib` launcher
    gives each sweep member one, as it does XLA's thread pool), else the cores it may run on."""
    n = os.environ.get("NPROC", "")
    if n.isdigit() and int(n) > 0:
        return int(n)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def training_macs(specs) -> dict:
    """MACs of one training sample through `specs`: forward, weight gradients, input gradients (none for the first
    layer)."""
    fwd = sum(s.macs for s in specs)
    wgrad = sum(s.macs for s in specs if s.has_params)
    igrad = sum(s.macs for s in specs[1:])
    return {"forward": fwd, "weight_gradient": wgrad, "input_gradient": igrad, "total": fwd + wgrad + igrad}


def _phase(flop: float, seconds: float | None, peak_gflops: float) -> dict:
    rate = flop / seconds / 1e9 if seconds else None
    return {"gflop": round(flop / 1e9, 3), "seconds": None if seconds is None else round(seconds, 3),
            "gflop_s": None if rate is None else round(rate, 2),
            "fraction_of_peak": None if rate is None else round(rate / peak_gflops, 4)}


def flop_account(specs, latent_layer: int, stream, train, results: dict, peak: dict) -> dict:
    """results.json's ``speed``: FLOP, seconds, GFLOP/s and fraction of `peak` of each phase of a single run.

    Args:
      specs: the whole network's layer specs; latent_layer: l.
      stream: the `clq.data.stream.Stream` the run learned.
      train: its `clq.train.TrainConfig` (event-0 epochs and batch, learning-event batch).
      results: the run's learning record (``events`` rows with ``iterations``, ``timing_s``,
        ``resumed_from_event``, ``latent_cache``).
      peak: `matmul_peak`'s result, measured in the same process.
    """
    timing = results.get("timing_s", {})
    frozen, adaptive = specs[: latent_layer + 1], specs[latent_layer + 1 :]
    n0 = len(stream.experiences[0])
    bs = min(train.first_batch_size, n0)
    ev0_samples = (n0 // bs) * bs * train.first_epochs
    ev0 = 2 * (training_macs(specs)["total"] * ev0_samples + training_macs(specs)["forward"] * n0)
    # Only the work done in this process counts against its seconds: a run resumed after event r recomputes
    # the test latents and the experiences from r + 1 on, and learns and evaluates those events alone; a latent
    # cache passes only its misses through the frozen stage.
    resumed = results.get("resumed_from_event")
    start = 0 if resumed is None else resumed + 1
    events = results["events"]
    if "latent_cache" in results:
        images = results["latent_cache"]["misses"]
    else:
        images = sum(len(e) for e in stream.experiences[start:]) + len(stream.test_labels)
    frozen_pass = 2 * training_macs(frozen)["forward"] * images
    learn_samples = sum(r.get("iterations", 0) * train.batch_size for r in events[max(start, 1):])
    learn = 2 * training_macs(adaptive)["total"] * learn_samples
    evaluation = 2 * training_macs(adaptive)["forward"] * len(stream.test_labels) * (len(events) - start)
    g = peak["gflops"]
    phases = {
        # No rate when event 0 was not trained here (it came from a cache or a checkpoint).
        "event_0": _phase(ev0, None if results.get("event0_cached") is not False else timing.get("first_event_s"), g),
        "frozen_pass": _phase(frozen_pass, timing.get("frozen_pass_s"), g),
        "learning_events": _phase(learn, timing.get("train_s"), g),
        "evaluation": _phase(evaluation, timing.get("eval_s"), g),
    }
    return {"peak_gflop_s": round(g, 2), "peak_source": "FP32 n x n jnp.dot, measured in this process (clq.perf)",
            "device": peak.get("device"), "host_cpu": cpu_model(), "phases": phases}


def group_account(accounts: list[dict], seconds: float) -> dict:
    """The learning phase of a vectorized group (`clq.train.group`): its members' learning events and evaluations
    (from each member's `flop_account`) ran as one program in `seconds`; their summed FLOP against the peak."""
    flop = sum(a["phases"][k]["gflop"] for a in accounts for k in ("learning_events", "evaluation")) * 1e9
    return {"members": len(accounts), **_phase(flop, seconds, accounts[0]["peak_gflop_s"])}


def account_or_warning(make: Callable[[], dict]) -> tuple[dict | None, str | None]:
    """(``make()``, None), or (None, a warning naming the error) when the account cannot be made: a speed account
    is a report about a finished run, so its failure costs the report and never the run (`clq-run`, the
    vectorized launcher's members)."""
    try:
        return make(), None
    except Exception as e:  # noqa: BLE001 - any failure of the report is reported
        return None, f"speed account not made ({type(e).__name__}: {e})"
