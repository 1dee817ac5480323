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
    # One frozen stage, one check of its quantization, recorded for every member as a run records it.
    assert r0["quantization_check"] == r2["quantization_check"] == r4["quantization_check"]
    assert 0.0 <= r0["quantization_check"]["quantized_accuracy"] <= 1.0
    w = collect_wandb(str(sweep))
    assert len(w) == 3 and (w["status"] == "completed").all() and (w["group"] == str(sweep)).all()
    assert sorted(w["final_accuracy"]) == sorted(df.loc[[0, 2, 4], "final_accuracy"])
    # plan.json, after the launch: every group ran as one program; those of the corrupt copy failed, and say why
    ran = {tuple(g["members"]): g for g in json.loads((sweep / "plan.json").read_text())["groups"]}
    assert sorted(ran) == [(0, 2), (1, 3), (4,), (5,)] and all(g["ran"] == "group" for g in ran.values())
    assert "error" not in ran[(0, 2)] and "error" not in ran[(4,)]
    assert "SHA-256" in ran[(1, 3)]["error"] and "SHA-256" in ran[(5,)]["error"]


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


def test_a_sweep_gets_a_wandb_summary_run_with_its_pareto_fronts(vectorized):
    """The members log to wandb (offline): one more run joins their group with the Pareto plots against memory,
    latency and energy of the completed configurations (U8, U6, FP32 replays), the sweep table of all 6 members
    and sweep.csv; the collector still lists only the members."""
    from clq.analysis import read_wandb_offline, wandb_table

    _, sweep, _ = vectorized
    (summary,) = [d for d in sweep.glob("wandb/offline-run-*")]
    deadline = time.time() + 30
    while read_wandb_offline(str(summary))["exit_code"] is None and time.time() < deadline:
        time.sleep(0.1)
    w = read_wandb_offline(str(summary))
    assert w["group"] == str(sweep) and w["config"]["clq_sweep_summary"] and w["exit_code"] == 0
    s = w["summary"]
    for cost in ("memory_lr_buffer", "latency_s", "energy_j"):
        pts = wandb_table(str(summary), f"pareto/{cost}_table")
        assert len(pts) == 3 and pts["on_front"].any()
        assert s[f"pareto/{cost}_plot._type"] == "image-file" and s[f"front/{cost}"]
    assert len(wandb_table(str(summary), "sweep/members")) == 6
    assert any(a["type"] == "sweep" and a["files"] == ["sweep.csv"] for a in w["artifacts"])
    assert len(collect_wandb(str(sweep))) == 3  # the members that opened a run, not the summary run


# clq-run (as `python -m clq`) with two probes: every call of clq.train.group.run_group appends the replays it runs,
# their learning rates and the environment's CLQ_PROBE to $CLQ_PROBE_LOG (CLQ_PROBE once more when the process
# exits); with CLQ_PROBE_SPLIT_FP32=1 the launcher's run-time check of the mini-batch split fails for a group of FP32
# replays, as it fails for a stream whose learning events split their mini-batches differently (the tiny stream's
# events all have one size, so they never do).
PROBED_CLQ_RUN = """
import atexit, inspect, json, os, sys

import clq.train.group as group
import clq.train.vectorized as vectorized
from clq.run import main


def note(**row):
    with open(os.environ["CLQ_PROBE_LOG"], "a") as f:
        f.write(json.dumps(row) + "\\n")


run_group, shared_composition = group.run_group, vectorized.shared_composition


def probed_run_group(*args, **kwargs):
    bound = inspect.signature(run_group).bind(*args, **kwargs).arguments
    note(bits=bound["bits"], lrs=bound["lrs"], env=os.environ.get("CLQ_PROBE"))
    return run_group(*args, **kwargs)


def split_fp32(*args, **kwargs):
    caller = sys._getframe(1)
    if caller.f_globals["__name__"] == "clq.launcher" and caller.f_locals["g"].exp.replay.bits is None:
        raise ValueError("event sizes [11, 12] give (3, 13, 4), (3, 13, 4) and (4, 12, 3) (simulated)")
    return shared_composition(*args, **kwargs)


group.run_group = probed_run_group
if os.environ.get("CLQ_PROBE_SPLIT_FP32") == "1":
    vectorized.shared_composition = split_fp32
atexit.register(lambda: note(at_exit=os.environ.get("CLQ_PROBE")))
main()
"""


def _run_probed(tmp_path, args, **env):
    """The tiny sweep, vectorized, through PROBED_CLQ_RUN: (the process, the probes' rows)."""
    script, log = tmp_path / "probed_clq_run.py", tmp_path / "probes.jsonl"
    script.write_text(PROBED_CLQ_RUN)
    log.unlink(missing_ok=True)  # the probes of this launch only
    p = run_sweep("tiny", ["hydra/launcher=clq_vectorized", "tracking=none", *args], tmp_path, prog=(str(script),),
                  env={"CLQ_PROBE_LOG": str(log), **env})
    return p, [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_plan_json_says_which_group_fell_back_to_member_by_member_runs(tmp_path, have_fmnist):
    """A group that the run-time mini-batch check sends member by member to clq-run's task: plan.json, written
    before any compute, says after the launch that this group ran alone and why, and that the other ran as one."""
    sweep = tmp_path / "s"
    p, probes = _run_probed(tmp_path, [f"hydra.sweep.dir={sweep}", "replay.bits=8,null"], CLQ_PROBE_SPLIT_FP32="1")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "group 2: runs member by member: events of different mini-batch splits" in p.stdout, p.stdout[-3000:]
    plan = json.loads((sweep / "plan.json").read_text())
    assert [{k: v for k, v in g.items() if k != "what"} for g in plan["groups"]] == [
        {"members": [0], "ran": "group"},
        {"members": [1], "ran": "alone", "why": "events of different mini-batch splits"}]
    assert plan["alone"] == {}  # the plan's own part stays what was planned
    assert probes == [{"bits": [8], "lrs": [0.01], "env": None}, {"at_exit": None}]  # FP32 never ran as a group
    r0, r1 = _results(sweep / "0"), _results(sweep / "1")
    assert r0["group"]["members"] == [0]
    assert r1["status"] == "completed" and "group" not in r1  # clq-run's own run
    assert len(r1["accuracy_per_event"]) == 16


def test_plan_json_says_groups_fell_back_when_the_compile_cache_is_unusable(tmp_path):
    """An unusable compile_cache_dir (found when the launch starts, after the plan) sends every member to clq-run's
    task, which reports the config error: plan.json says every group ran alone, with the error as the reason."""
    (tmp_path / "a-file").write_text("")
    sweep = tmp_path / "s"
    p = run_sweep("tiny", ["hydra/launcher=clq_vectorized", f"hydra.sweep.dir={sweep}", "replay.bits=8,null",
                           f"compile_cache_dir={tmp_path / 'a-file' / 'cache'}", "tracking=none"], cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-3000:]
    plan = json.loads((sweep / "plan.json").read_text())
    assert [g["members"] for g in plan["groups"]] == [[0], [1]]
    for g in plan["groups"]:
        assert g["ran"] == "alone" and g["why"].startswith("config error: compile_cache_dir="), g
    df = collect_runs(str(sweep))
    assert list(df["status"]) == ["failed", "failed"] and df["error"].str.contains("compile_cache_dir").all()


def test_a_groups_env_set_is_set_while_it_computes_and_differing_ones_split_groups(tmp_path, vectorized):
    """hydra.job.env_set, which Hydra's launchers set around a job: a group computes with its members' values in
    the environment, with the same numbers; members whose env_set differs (here per job) are groups of their own;
    the environment is as before afterwards."""
    _, plain, _ = vectorized
    same, per_job = tmp_path / "same", tmp_path / "per-job"
    p, probes = _run_probed(tmp_path, [f"hydra.sweep.dir={same}", "replay.bits=8,6", "+hydra.job.env_set.CLQ_PROBE=s"],
                            CLQ_PROBE="outer")
    assert p.returncode == 0, p.stderr[-3000:]
    assert probes == [{"bits": [8, 6], "lrs": [0.01, 0.01], "env": "s"}, {"at_exit": "outer"}]
    (g,) = json.loads((same / "plan.json").read_text())["groups"]
    assert g["members"] == [0, 1] and g["ran"] == "group" and g["what"].endswith("env_set CLQ_PROBE=s")
    for j, ref in ((0, 0), (1, 2)):  # U8, U6: the vectorized sweep's U8, U6
        r, want = _results(same / str(j)), _results(plain / str(ref))
        for k in NUMBERS:
            assert r[k] == want[k], (j, k)
    p, probes = _run_probed(tmp_path, [f"hydra.sweep.dir={per_job}", "replay.bits=8,6",
                                       "+hydra.job.env_set.CLQ_PROBE=job${hydra.job.num}"])
    assert p.returncode == 0, p.stderr[-3000:]
    plan = json.loads((per_job / "plan.json").read_text())
    assert [(g["members"], g["ran"]) for g in plan["groups"]] == [([0], "group"), ([1], "group")]
    assert probes == [{"bits": [8], "lrs": [0.01], "env": "job0"}, {"bits": [6], "lrs": [0.01], "env": "job1"},
                      {"at_exit": None}]
    assert _results(per_job / "1")["final_accuracy"] == _results(plain / "2")["final_accuracy"]


def test_env_set_enters_the_group_key():
    from clq.launcher import group_key

    resolved = {"seed": 0, "replay": {"bits": 8, "size": 40}, "train": {"lr": 0.01}}
    assert group_key(resolved, False, {}) == group_key(resolved, False)  # no env_set: the key it always had
    assert group_key(resolved, False, {"X": "1"}) != group_key(resolved, False, {"X": "2"})
