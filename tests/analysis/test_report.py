"""The HTML trade-off report and its command line."""

import os

import pandas as pd

from clq.analysis import render_report
from clq.analysis.__main__ import main, newest_sweep


def test_render_report(fake_sweep):
    path = render_report(fake_sweep)
    assert path == os.path.join(fake_sweep, "report.html")
    text = open(path).read()
    assert text.count("<img src=\"data:image/png;base64,") == 5  # memory, latency, energy, per event, breakdown
    assert "FloatingPointError: NaN loss" in text and "ValueError: bad data" in text  # failures listed
    assert "Pareto front" in text and "vega MRAM" in text and "Compared with the paper" in text
    csv = pd.read_csv(os.path.join(fake_sweep, "sweep.csv"))
    assert len(csv) == 7 and (csv["status"] == "completed").sum() == 4


def test_cli(fake_sweep, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "r.html")
    assert main([fake_sweep, "--out", out]) == 0
    assert os.path.isfile(out) and "report: " + out in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2 and "no sweep members" in capsys.readouterr().err
    # default: the newest sweep (a folder with Hydra's multirun.yaml) under ./multirun
    monkeypatch.chdir(tmp_path)
    os.makedirs("multirun")
    assert newest_sweep() is None
    os.symlink(fake_sweep, "multirun/s")
    assert os.path.samefile(newest_sweep(), fake_sweep)
