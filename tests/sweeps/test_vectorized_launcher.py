"""`hydra/launcher=clq_vectorized`: members grouped into compiled programs write what the basic launcher's write,
with the same numbers; bad members fail alone; a killed group resumes bit-identical."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from clq.analysis import collect_runs, collect_wandb
from clq.data.fashion_mnist import FILES

from sweeputil import SWEEPS, run_sweep

pytestmark = pytest.mark.slow

NUMBERS = ("accuracy_per_event", "final_accuracy", "accuracy_matrix", "forgetting", "final_accuracy_per_class")


def _results(d):
    return json.loads((d / "results.json").read_text())


@pytest.fixture(scope="module")
def vectorized(tmp_path_factory):
    """The tiny sweep over replay.bits {8, 6, FP32} x {the dataset, a corrupt copy}, vectorized: 6 members."""
    from clq.data.fashion_mnist import DEFAULT_PATH

    if not all(os.path.exists(os.path.join(DEFAULT_PATH, f)) for f in FILES):
        pytest.skip("dataset-fashion-mnist not installed (scripts/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("vec")
    bad = tmp / "corrupt-fmnist"
    bad.mkdir()
    for f in FILES:
        (bad / f).write_bytes(b"not an IDX file")
    sweep = tmp / "sweep"
    p = run_sweep("tiny", ["hydra/launcher=clq_vectorized", f"hydra.sweep.dir={sweep}", "replay.bits=8,6,null",
                           f"data.path={DEFAULT_PATH},{bad}"], cwd=tmp)
    return tmp, sweep, p


def test_members_are_grouped_and_bad_ones_fail_alone(vectorized):
    tmp, sweep, p = vectorized
    assert p.returncode == 1, p.stderr[-3000:]  # the corrupt members failed; the sweep says so at the end
    out = p.stdout
    assert "6 members: 6 in 4 compiled group(s), 0 alone" in out, out[-3000:]
    df = collect_runs(str(sweep))
    assert list(df["job"]) == list(range(6))
    assert list(df["status"]) == ["completed", "failed"] * 3, df[["status", "error"]]
    assert df.loc[[1, 3, 5], "error"].str.contains("SHA-256").all()
    assert list(df["lr_precision"]) == ["U8", "U8", "U6", "U6", "FP32", "FP32"]
    for j in (0, 2, 4):
        d = sweep / str(j)
        r = _results(d)
        # clq-run's files: results.json, events.jsonl as the chunks ran, .hydra/, an offline wandb run
        assert len((d / "events.jsonl").read_text().splitlines()) == len(r["accuracy_per_event"]) == 16
        launcher = yaml.safe_load((d / ".hydra" / "hydra.yaml").read_text())["hydra"]["launcher"]["_target_"]
        assert launcher.endswith("VectorizedLauncher")
        assert r["group"]["launcher"] == "clq_vectorized"
    # U8 and U6 ran as one program; the FP32 replays as another, sharing the first group's event 0 and latents.
    r0, r2, r4 = (_results(sweep / str(j)) for j in (0, 2, 4))
    assert r0["group"]["members"] == r2["group"]["members"] == [0, 2]
    assert r4["group"]["members"] == [4] and r4["group"]["event0_shared"]
    assert r0["first_event_history"] == r4["first_event_history"]
    w = collect_wandb(str(sweep))
    assert len(w) == 3 and (w["status"] == "completed").all() and (w["group"] == str(sweep)).all()
    assert sorted(w["final_accuracy"]) == sorted(df.loc[[0, 2, 4], "final_accuracy"])


def test_numbers_and_files_equal_the_basic_launchers(vectorized):
    tmp, sweep, _ = vectorized
    basic = tmp / "basic"
    p = run_sweep("tiny", [f"hydra.sweep.dir={basic}", "replay.bits=8,6,null", "tracking=none"], cwd=tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    for vj, bj in ((0, 0), (2, 1), (4, 2)):
        v, b = _results(sweep / str(vj)), _results(basic / str(bj))
        assert set(v) - set(b) == {"group"} and set(b) <= set(v)
        for k in NUMBERS:  # at this size the vmapped matmuls sum in the single run's order
            assert v[k] == b[k], (vj, k)
        for ev, eb in zip(v["events"], b["events"]):
            assert set(ev) == set(eb)
            assert ev["train_loss"] == pytest.approx(eb["train_loss"], rel=1e-5, abs=1e-6)
        assert v["latent"] == b["latent"] and v["cost"] == b["cost"]
        # U6 is packed at the group's 8 bits in the program; its RAM is still what its own buffer holds alone
        assert v["buffer"] == b["buffer"], vj


def _launch(sweep_dir, extra=()):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen(
        [sys.executable, "-m", "clq", "-m", "--config-dir", SWEEPS, "--config-name", "tiny",
         "hydra/launcher=clq_vectorized", "hydra.launcher.events_per_chunk=1", f"hydra.sweep.dir={sweep_dir}",
         "replay.bits=8,6", "tracking=none", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_group_resumes_bit_identical(vectorized):
    tmp, sweep, _ = vectorized
    killed = tmp / "killed"
    p = _launch(killed)
    events = killed / "0" / "events.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if events.exists() and len(events.read_text().splitlines()) >= 6:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "0" / "results.json").exists(), "the group finished before the kill: nothing to resume"
    p = _launch(killed)  # the same command in the same sweep dir resumes the group from its last chunk
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    for j, ref in ((0, 0), (1, 2)):  # U8, U6 of the uninterrupted sweep
        r, want = _results(killed / str(j)), _results(sweep / str(ref))
        assert 4 <= r["resumed_from_event"] < 15
        for k in NUMBERS:
            assert r[k] == want[k], (j, k)
        assert len((killed / str(j) / "events.jsonl").read_text().splitlines()) == 16
    assert "event 0 shared;" in out  # from the sweep's event-0 cache: not trained again


def test_a_diverging_member_fails_alone_and_a_bad_value_before_compute(tmp_path, have_fmnist):
    """lr=1e6 diverges (exit 3 semantics, its events so far kept); a bad replay.bits is a config error."""
    sweep = tmp_path / "s"
    p = run_sweep("tiny", ["hydra/launcher=clq_vectorized", f"hydra.sweep.dir={sweep}", "replay.bits=8,99",
                           "train.lr=0.01,1e6", "tracking=none"], cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-3000:]
    df = collect_runs(str(sweep))
    # Hydra's order: replay.bits x train.lr
    assert list(df["status"]) == ["completed", "failed", "failed", "failed"], df[["status", "error"]]
    assert df.loc[[2, 3], "error"].str.contains("replay.bits must be an integer in 1..16").all()
    assert df.loc[1, "error"].startswith("NonFiniteError: non-finite loss or parameters in learning event")
    r = _results(sweep / "1")
    assert r["status"] == "failed" and 0 < len(r["events"]) < 16  # the events before the bad one are kept
    assert "config error" in p.stderr and "Traceback" not in p.stderr


def test_plan_only_groups_fp32_spellings_together_and_runs_nothing(tmp_path):
    """`replay.bits=fp32` and `null` are both FP32 replays: one group, apart from the codes; the plan counts the
    event-0 trainings and frozen stages, and nothing runs."""
    sweep = tmp_path / "s"
    p = run_sweep("tiny", ["hydra/launcher=clq_vectorized", "hydra.launcher.plan_only=true", f"hydra.sweep.dir={sweep}",
                           "replay.bits=fp32,8,null,6", "latent_layer=23,27"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    plan = json.loads((sweep / "plan.json").read_text())
    assert plan["members"] == 8 and plan["compiled_group_programs"] == 4
    assert plan["event0_trainings"] == 1 and plan["frozen_stages"] == 2
    assert sorted(len(g["members"]) for g in plan["groups"]) == [2, 2, 2, 2]
    assert all(("FP32" in g["what"]) != ("U8" in g["what"]) for g in plan["groups"])
    assert not list(sweep.glob("*/results.json"))


def test_a_sweep_gets_a_wandb_summary_run_with_its_pareto_fronts(tmp_path, have_fmnist):
    """4 tiny members logging to wandb (offline): one more run joins their group with the Pareto plots against
    memory, latency and energy, the sweep table and sweep.csv; the collector still lists only the members."""
    from clq.analysis import read_wandb_offline, wandb_table

    sweep = tmp_path / "s"
    p = run_sweep("tiny", ["hydra/launcher=clq_vectorized", f"hydra.sweep.dir={sweep}", "replay.bits=8,6",
                           "replay.size=40,20"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    (summary,) = [d for d in sweep.glob("wandb/offline-run-*")]
    deadline = time.time() + 30
    while read_wandb_offline(str(summary))["exit_code"] is None and time.time() < deadline:
        time.sleep(0.1)
    w = read_wandb_offline(str(summary))
    assert w["group"] == str(sweep) and w["config"]["clq_sweep_summary"] and w["exit_code"] == 0
    s = w["summary"]
    for cost in ("memory_lr_buffer", "latency_s", "energy_j"):
        pts = wandb_table(str(summary), f"pareto/{cost}_table")
        assert len(pts) == 4 and pts["on_front"].any()
        assert s[f"pareto/{cost}_plot._type"] == "image-file" and s[f"front/{cost}"]
    assert len(wandb_table(str(summary), "sweep/members")) == 4
    assert any(a["type"] == "sweep" and a["files"] == ["sweep.csv"] for a in w["artifacts"])
    assert len(collect_wandb(str(sweep))) == 4  # the members, not the summary run
