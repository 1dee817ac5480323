"""Shared helpers of the benchmarks: the default experiment's config, compile-time accounting, JSON output.

Every benchmark reports ratios against a baseline measured in the same invocation (the 2-core machine is
shared and its absolute speed drifts); repeated measurements report the best and the median.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import platform
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")

#: `clq-run` keeps event 0 and latents in on-disk caches by default (conf/config.yaml). A benchmark measures the
#: work unless it says otherwise: these variables turn both caches off in every benchmark and the processes it
#: starts (a benchmark of the caches sets its own folders, as bench_e2e.py does).
NO_RESULT_CACHES = {"CLQ_EVENT0_CACHE_DIR": "", "CLQ_LATENT_CACHE_DIR": ""}
for _var, _value in NO_RESULT_CACHES.items():
    os.environ.setdefault(_var, _value)


def command_line(script: str, argv=None) -> str:
    """The command a result records, as anyone can re-run it: ``python bench/<script> <arguments>``, quoted
    (`argv` None: this process's own arguments)."""
    import shlex
    import sys

    return shlex.join(["python", f"bench/{script}", *(sys.argv[1:] if argv is None else argv)])


def default_config(overrides=()) -> dict:
    """The resolved config of `clq-run` (conf/config.yaml plus Hydra-style overrides) as a plain dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def default_experiment(overrides=()):
    """The typed config of `clq-run` with conf/config.yaml defaults (plus Hydra-style overrides)."""
    from clq.config import experiment_config

    return experiment_config(default_config(overrides))


def truncate_stream(stream, events: int | None):
    """The first `events` learning events of `stream` (all when None): for quick trial runs only."""
    if events is None or events >= stream.num_events:
        return stream
    return dataclasses.replace(stream, experiences=stream.experiences[:events],
                               experience_classes=stream.experience_classes[:events],
                               experience_sessions=stream.experience_sessions[:events])


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling (XLA), from `jax.monitoring` events.

    The totals overlap the phase timers of `run_continual`: compilation happens inside the phase that first
    calls a function.
    """

    EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
              "/jax/core/compile/backend_compile_duration": "xla_compile_s"}

    def __init__(self):
        from jax import monitoring

        self.totals = collections.Counter()
        self.by_function = collections.Counter()
        self.cache_hits = 0

        def listen(event, duration, **kw):
            name = self.EVENTS.get(event)
            if name:
                self.totals[name] += duration
                if name == "xla_compile_s":
                    self.by_function[kw.get("fun_name", "?")] += duration

        def count(event, **kw):
            if event == "/jax/compilation_cache/cache_hits":
                self.cache_hits += 1

        monitoring.register_event_duration_secs_listener(listen)
        monitoring.register_event_listener(count)

    def snapshot(self) -> dict:
        out = {k: round(v, 3) for k, v in self.totals.items()}
        out["total_s"] = round(sum(self.totals.values()), 3)
        out["persistent_cache_hits"] = self.cache_hits
        out["top_functions_s"] = {k: round(v, 3) for k, v in self.by_function.most_common(6)}
        return out


def run_json_worker(cmd: list[str], name: str, env: dict | None = None, cwd: str = ROOT) -> dict:
    """Run a benchmark worker process; returns its last stdout line (JSON) plus ``process_s``, its wall time.

    Raises:
      RuntimeError (after echoing the end of the worker's stderr) if the worker fails.
    """
    import subprocess
    import sys

    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError(f"benchmark worker {name!r} failed with exit status {out.returncode} (its stderr above)")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def best_and_median(values) -> dict:
    return {"best": min(values), "median": statistics.median(values), "all": list(values)}


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def machine() -> dict:
    import jax
    import numpy as np

    from clq.perf import cpu_model

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "load_average_at_start": load}


def write_result(name: str, result: dict, out: str | None = None) -> str:
    """Atomically write bench/results/<name>.json (or `out`) with `clq.tracking.write_json_atomic`; returns the path."""
    from clq.tracking import write_json_atomic

    path = out or os.path.join(RESULTS, f"{name}.json")
    write_json_atomic(path, result)
    return path
