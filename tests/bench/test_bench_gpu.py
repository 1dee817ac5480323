"""bench/bench_gpu.py measures only on an accelerator, says so on a CPU, and keeps what it measured; the matmul peak
names the device it ran on and sizes its product for the backend."""

import json
import os
import subprocess
import sys

from clq.perf import PEAK_SIZES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench", "bench_gpu.py")
PROTOCOL = os.path.join(ROOT, "bench", "core50_protocol.py")


def _run(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def test_refuses_a_cpu_only_jax_and_keeps_the_device_step(tmp_path):
    out = tmp_path / "gpu.json"
    p = _run(BENCH, "--steps", "device,default", "--limit", "120", "--out", str(out))
    assert p.returncode != 0
    assert "no accelerator" in p.stderr and "--allow-cpu" in p.stderr
    assert "Traceback" not in p.stderr
    device = json.loads(out.read_text())["steps"]["device"]
    assert device["status"] == "ok" and device["backend"] == "cpu"
    # The device step measured the peak at both precisions, at the CPU's size, and ran nothing else.
    for key in ("peak_default_precision", "peak_highest_precision"):
        assert list(device[key]["by_size"]) == [str(n) for n in PEAK_SIZES["cpu"]] and device[key]["gflops"] > 0
    assert list(json.loads(out.read_text())["steps"]) == ["device"]
    assert (tmp_path / "gpu.log").read_text().count("===== device (ok") == 1


def test_unknown_step_is_refused_before_any_compute(tmp_path):
    out = tmp_path / "gpu.json"
    p = _run(BENCH, "--steps", "device,imagenets", "--out", str(out))
    assert p.returncode != 0
    assert "--steps: unknown ['imagenets']" in p.stderr and "core50_paper" in p.stderr
    assert not out.exists()


def test_core50_protocol_refuses_an_empty_run(tmp_path):
    p = _run(PROTOCOL, "--no-protocol", "--out", str(tmp_path / "c.json"))
    assert p.returncode != 0 and "--paper-events" in p.stderr and "Traceback" not in p.stderr


def test_matmul_peak_names_its_device_and_sizes_for_the_backend():
    from clq.perf import matmul_peak

    peak = matmul_peak((256,), 2)
    assert peak["backend"] == "cpu" and peak["device"] == "cpu"
    assert list(peak["by_size"]) == ["256"] and peak["gflops"] > 0
    assert list(matmul_peak(None, 1)["by_size"]) == [str(n) for n in PEAK_SIZES["cpu"]]  # sizes=None: the backend's
