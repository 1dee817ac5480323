"""Real sweeps of the tiny config: through joblib (with crashing members) and through a local Ray cluster;
their collection, the HTML report and the trade-off notebook executed on the result."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest
import yaml

from clq.analysis import aggregate_seeds, collect_runs, collect_wandb, notebook_text, pareto_front, run_notebook
from clq.data.fashion_mnist import FILES

from sweeputil import run_sweep

pytestmark = pytest.mark.slow


def _launcher_target(run_dir):
    return yaml.safe_load(open(os.path.join(run_dir, ".hydra", "hydra.yaml")))["hydra"]["launcher"]["_target_"]


def test_joblib_sweep_survives_crashes_and_is_collected_reported_and_notebooked(tmp_path, have_fmnist):
    # Members 1 and 3 read a corrupt copy of the dataset (checksum mismatch -> ValueError before any compute);
    # members 0 and 2 are the tiny sweep's U8 and U6 runs. Hydra's order: replay.bits x data.path.
    bad = tmp_path / "corrupt-fmnist"
    bad.mkdir()
    for f in FILES:
        (bad / f).write_bytes(b"not an IDX file")
    sweep = tmp_path / "sweep"
    p = run_sweep("tiny", ["hydra/launcher=clq_joblib", f"hydra.sweep.dir={sweep}", f"data.path={have_fmnist},{bad}"],
                  cwd=tmp_path)
    # The sweep ran every member, then reports the failures with a non-zero exit status.
    assert p.returncode == 1, p.stderr[-3000:]

    df = collect_runs(str(sweep))
    assert list(df["job"]) == [0, 1, 2, 3]
    assert list(df["status"]) == ["completed", "failed", "completed", "failed"], df[["status", "error"]]
    assert df.loc[[1, 3], "error"].str.contains("SHA-256").all()
    assert df.loc[[0, 2], "error"].isna().all()
    assert list(df["lr_precision"]) == ["U8", "U8", "U6", "U6"] and (df["buffer_size"] == 40).all()
    done = df[df["status"] == "completed"]
    assert (done["n_events"] == 1 + 10 * 2 - 5).all() and done["final_accuracy"].between(0, 1).all()
    assert done.loc[0, "memory_lr_buffer"] > done.loc[2, "memory_lr_buffer"]  # 8-bit vs 6-bit codes
    assert all("JoblibLauncher" in _launcher_target(d) for d in df["run_dir"])

    # wandb: one offline run per member that got as far as tracking, all in the sweep's group
    group = str(sweep)
    assert (done["group"] == group).all(), done["group"]
    w = collect_wandb(str(sweep))
    assert len(w) == 2 and (w["status"] == "completed").all() and (w["group"] == group).all()
    assert sorted(w["final_accuracy"]) == sorted(done["final_accuracy"])

    agg = aggregate_seeds(df)
    assert list(agg["n_seeds"]) == [1, 1] and list(agg["n_failed"]) == [1, 1]
    assert pareto_front(agg, "memory_lr_buffer").any()

    # the report command
    env = {**os.environ, "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-m", "clq.analysis", str(sweep)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    html = open(sweep / "report.html").read()
    assert "SHA-256" in html and html.count("data:image/png") == 5
    assert len(pd.read_csv(sweep / "sweep.csv")) == 4

    # the trade-off notebook, executed on this sweep
    nb = run_notebook("tradeoffs.ipynb", {"CLQ_SWEEP": str(sweep)}, timeout=300)
    out = notebook_text(nb)
    assert f"sweep {sweep}: 4 members, 2 completed, 2 failed or missing" in out
    assert "member 1: failed: ValueError" in out and "SHA-256" in out
    assert "Pareto front (replay memory): l=23 U8 + U6 N=40" in out  # the 6-bit buffer is the cheapest
    assert "Pareto front (latency_s):" in out and "paper.md §4 (accuracy %):" in out and "agrees:" in out
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}))
    assert images == 5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A local Ray head on 127.0.0.1 with 2 CPUs, started for this test and stopped after it."""
    pytest.importorskip("ray")
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    port = _free_port()
    # Short temp dir: Ray's unix sockets live under it and socket paths are limited to ~107 characters.
    temp = tempfile.mkdtemp(prefix="clqray", dir="/tmp")
    log = open(os.path.join(temp, "head.log"), "w")
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
           f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in open(log.name).read():
            assert proc.poll() is None, open(log.name).read()[-3000:]
            assert time.monotonic() < deadline, "Ray head did not start in 120 s"
            time.sleep(0.5)
        yield address
    finally:
        # `ray start --block` stops the processes it started when it gets SIGTERM; the process group
        # (start_new_session) holds only what this fixture started, so SIGKILL it if anything lingers.
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_sweep_on_a_local_cluster(tmp_path, have_fmnist, ray_head):
    sweep = tmp_path / "sweep"
    p = run_sweep("tiny", ["hydra/launcher=clq_ray", f"hydra.launcher.ray.init.address={ray_head}",
                           f"hydra.sweep.dir={sweep}", "tracking=none"], cwd=tmp_path)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    df = collect_runs(str(sweep))
    assert list(df["status"]) == ["completed", "completed"] and list(df["lr_precision"]) == ["U8", "U6"]
    assert all("RayLauncher" in _launcher_target(d) for d in df["run_dir"])
    # the members ran as Ray tasks (the launcher names them; results.json is written by the worker)
    assert all(yaml.safe_load(open(os.path.join(d, ".hydra", "hydra.yaml")))["hydra"]["job"]["id"] ==
               f"job_id_for_{j}" for d, j in zip(df["run_dir"], df["job"]))
    # no failure -> SweepSummary wrote the sweep's table
    csv = pd.read_csv(sweep / "sweep.csv")
    assert list(csv["status"]) == ["completed", "completed"]
    assert os.path.islink(tmp_path / "latest") and os.path.samefile(tmp_path / "latest", sweep)
