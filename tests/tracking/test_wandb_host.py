"""The wandb host (`clq.tracking.wandb_host`): wandb runs in a child process; the computing process never imports
it, errors reach the tracker, and a run whose process dies keeps what it logged."""

import glob
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from clq.analysis import read_wandb_offline
from clq.tracking import make_tracker
from clq.tracking.wandb_host import NICE

pytest.importorskip("wandb")


def _offline_run(root, exit_code=None, timeout=60.0) -> dict:
    """The one offline run under `root`, once wandb's files hold its exit record."""
    deadline = time.monotonic() + timeout
    while True:
        paths = glob.glob(os.path.join(str(root), "wandb", "offline-run-*"))
        if paths:
            w = read_wandb_offline(paths[0])
            if w["exit_code"] is not None or time.monotonic() > deadline:
                return w
        assert time.monotonic() < deadline, f"no offline wandb run under {root}"
        time.sleep(0.2)


def _python(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "WANDB_SILENT": "true"})


def test_the_computing_process_never_imports_wandb_and_its_runs_share_one_host_at_low_priority(tmp_path):
    done = _python("""
        import json, os, sys
        from clq.tracking import make_tracker
        from clq.tracking.wandb_host import host
        a = make_tracker(os.path.join(sys.argv[1], "a"), "wandb", {"seed": 0}, mode="offline")
        b = make_tracker(os.path.join(sys.argv[1], "b"), "wandb", {"seed": 1}, mode="offline")
        for i in range(3):
            a.log_event(i, {"accuracy": 0.1 * i, "train_loss": 1.0})
            b.log_event(i, {"accuracy": 0.2 * i, "train_loss": 2.0})
        a.finish(True)
        b.finish(True)
        print(json.dumps({"imported": sorted(m for m in ("wandb", "matplotlib") if m in sys.modules),
                          "host_nice": os.getpriority(os.PRIO_PROCESS, host()._proc.pid), "own_nice": os.nice(0)}))
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["imported"] == []
    assert out["host_nice"] == min(19, out["own_nice"] + NICE)  # the host's niceness is added to the parent's
    for name, step in (("a", 0.1), ("b", 0.2)):
        w = _offline_run(tmp_path / name)
        assert w["exit_code"] == 0 and w["config"]["seed"] == (name == "b")
        assert [h["accuracy"] for h in w["history"]] == pytest.approx([0.0, step, 2 * step])


def test_a_process_killed_mid_run_leaves_its_wandb_run_finished_as_failed_with_what_it_logged(tmp_path):
    done = _python("""
        import os, signal, sys
        from clq.tracking import make_tracker
        t = make_tracker(sys.argv[1], "wandb", {"seed": 0}, mode="offline")
        for i in range(3):
            t.log_event(i, {"accuracy": 0.25 * i, "train_loss": 1.0})
        os.kill(os.getpid(), signal.SIGKILL)
    """, tmp_path)
    assert done.returncode == -9
    w = _offline_run(tmp_path)
    assert w["exit_code"] == 1
    assert [h["accuracy"] for h in w["history"]] == [0.0, 0.25, 0.5]


def test_an_error_of_the_wandb_run_is_raised_by_its_tracker_and_other_runs_go_on(tmp_path):
    bad = make_tracker(str(tmp_path / "bad"), "wandb", {"seed": 0}, mode="no-such-mode")
    with pytest.raises(RuntimeError, match="(?s)wandb: .*no-such-mode"):
        bad.finish(True)
    with pytest.raises(RuntimeError, match="(?s)wandb: .*no-such-mode"):
        bad.log_event(1, {"accuracy": 0.5})  # after the error, every call raises it
    failed = make_tracker(str(tmp_path / "failed"), "wandb", {"seed": 0}, mode="no-such-mode")
    failed.finish(False)  # a failed run reports its own error, not wandb's
    good = make_tracker(str(tmp_path / "good"), "wandb", {"seed": 0}, mode="offline")
    good.log_event(0, {"accuracy": 0.5, "train_loss": float("nan")})
    good.finish(True)
    w = _offline_run(tmp_path / "good")
    assert w["exit_code"] == 0 and [h["accuracy"] for h in w["history"]] == [0.5]
    assert (tmp_path / "good" / "events.jsonl").read_text().strip() == '{"accuracy": 0.5, "train_loss": null}'
