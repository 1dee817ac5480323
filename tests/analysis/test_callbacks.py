"""SweepSummary: failures recorded in the member's dir, the sweep table written, a non-zero exit on failure."""

import json
import os

import pandas as pd
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from clq.analysis import FAILURE_FILE, collect_runs
from clq.analysis.callbacks import SweepSummary


def _cfg(sweep_dir, run_dir=None):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "runtime": {"output_dir": str(run_dir)}}})


def test_on_job_end_records_the_exception(tmp_path):
    run_dir = tmp_path / "sweep" / "3"
    run_dir.mkdir(parents=True)
    try:
        raise ValueError("corrupt IDX file")
    except ValueError as e:
        exc = e
    ret = JobReturn(overrides=["seed=1"], status=JobStatus.FAILED, _return_value=exc)
    SweepSummary().on_job_end(_cfg(tmp_path / "sweep", run_dir), ret)
    rec = json.load(open(run_dir / FAILURE_FILE))
    assert rec["error"] == "ValueError: corrupt IDX file" and "Traceback" in rec["traceback"]
    assert rec["overrides"] == ["seed=1"]
    # a completed job writes nothing
    ok_dir = tmp_path / "sweep" / "4"
    ok_dir.mkdir()
    SweepSummary().on_job_end(_cfg(tmp_path / "sweep", ok_dir), JobReturn(status=JobStatus.COMPLETED))
    assert not (ok_dir / FAILURE_FILE).exists()


def test_on_multirun_end_writes_csv_and_exits_nonzero_on_failure(fake_sweep):
    with pytest.raises(SystemExit) as e:
        SweepSummary().on_multirun_end(_cfg(fake_sweep))
    assert e.value.code == 1
    csv = pd.read_csv(os.path.join(fake_sweep, "sweep.csv"))
    assert list(csv["status"]) == list(collect_runs(fake_sweep)["status"])
    SweepSummary(fail_on_member_error=False).on_multirun_end(_cfg(fake_sweep))  # no exit


def test_on_multirun_end_all_completed_returns(fake_sweep):
    import shutil

    for j in ("4", "5", "6"):
        shutil.rmtree(os.path.join(fake_sweep, j))
    SweepSummary().on_multirun_end(_cfg(fake_sweep))
    assert len(pd.read_csv(os.path.join(fake_sweep, "sweep.csv"))) == 4


def test_on_multirun_start_links_latest(tmp_path):
    for name in ("2026-01-01_00-00-00", "2026-01-02_00-00-00"):
        SweepSummary().on_multirun_start(_cfg(tmp_path / "grid" / name))
        assert os.readlink(tmp_path / "grid" / "latest") == name
    assert os.path.isdir(tmp_path / "grid" / "latest")
