"""Collecting a sweep folder: one row per member, failures listed with their errors, CSV round trip."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from clq.analysis import collect_runs, find_members, paper_names, params_from_config, write_csv


def test_collect_lists_every_member_with_status_and_error(fake_sweep):
    df = collect_runs(fake_sweep)
    assert list(df["job"]) == [0, 1, 2, 3, 4, 5, 6]
    assert list(df["status"]) == ["completed"] * 4 + ["failed", "failed", "missing"]
    assert df.loc[4, "error"] == "FloatingPointError: NaN loss"  # from results.json
    assert df.loc[5, "error"] == "ValueError: bad data"  # from job_failure.json
    assert "no results.json" in df.loc[6, "error"]
    assert df.loc[:3, "error"].isna().all()
    # parameters come from the resolved config, or from .hydra/config.yaml when results.json is absent
    assert list(df["lr_precision"]) == ["U8", "U8", "FP32", "FP32", "U6", "U6", "U7"]
    assert math.isnan(df.loc[2, "lr_bits"]) and df.loc[0, "lr_bits"] == 8.0
    assert list(df["precision"][:3]) == ["U8 + U8", "U8 + U8", "U8 + FP32"]
    assert (df["latent_layer"] == 23).all() and list(df["seed"]) == [0, 1, 0, 1, 0, 1, 0]
    assert df.loc[5, "overrides"] == "latent_layer=23 replay.bits=6 replay.size=40 seed=1"
    assert df.loc[1, "final_accuracy"] == 0.6 and df.loc[1, "accuracy_per_event"] == [0.2, 0.4, 0.6]
    assert math.isnan(df.loc[4, "final_accuracy"]) and df.loc[4, "n_events"] == 1
    assert df.loc[0, "group"] == "fake" and df.loc[0, "target"] == "vega"


def test_collect_reads_memory_and_cost(fake_sweep):
    df = collect_runs(fake_sweep)
    res = json.load(open(os.path.join(fake_sweep, "0", "results.json")))
    assert df.loc[0, "memory_lr_buffer"] == res["memory_bytes"]["lr_buffer"]
    assert df.loc[0, "memory_total"] == res["memory_bytes"]["total"]
    assert df.loc[0, "latency_s"] == res["cost"]["latency_s"]["total"]
    assert df.loc[0, "energy_j"] == res["cost"]["energy_j"]["total"]
    # FP32 latents take 4x the bytes of UINT-8 ones (plus the UINT-8 buffer's one FP32 scale)
    assert df.loc[2, "memory_lr_buffer"] > 3.9 * df.loc[0, "memory_lr_buffer"]
    assert bool(df.loc[0, "fits"]) is True


def test_find_members_skips_wandb_and_checkpoints(fake_sweep):
    os.makedirs(os.path.join(fake_sweep, "0", "wandb", "run", ".hydra"))
    open(os.path.join(fake_sweep, "0", "wandb", "run", ".hydra", "overrides.yaml"), "w").close()
    os.makedirs(os.path.join(fake_sweep, "0", "checkpoints"))
    open(os.path.join(fake_sweep, "0", "checkpoints", "results.json"), "w").close()
    assert [os.path.basename(p) for p in find_members(fake_sweep)] == [str(i) for i in range(7)]


def test_collect_empty_folder_has_columns(tmp_path):
    df = collect_runs(str(tmp_path))
    assert df.empty and {"status", "error", "final_accuracy", "latent_layer"} <= set(df.columns)


@pytest.mark.parametrize("config, names, columns", [
    ({"latent_layer": 23, "replay": {"bits": 6, "size": 40}, "quant": {"frozen_bits": 8}},
     (23, 6, 40, 8), (23, 6.0, 40, 8.0, "U8 + U6")),
    ({"latent_layer": 27, "replay": {"bits": None, "size": 3}, "quant": {"frozen_bits": 8}},  # FP32 replays
     (27, None, 3, 8), (27, math.nan, 3, 8.0, "U8 + FP32")),
    ({"latent_layer": 27, "replay": {"bits": "fp32", "size": 3}, "quant": {"frozen_bits": 7}},
     (27, None, 3, 7), (27, math.nan, 3, 7.0, "U7 + FP32")),
    ({"latent_layer": 19, "replay": {"bits": None, "size": 5}, "quant": None},  # FP32 frozen stage and replays
     (19, None, 5, None), (19, math.nan, 5, math.nan, "FP32")),
    ({"replay": {"bits": 7}, "quant": {"frozen_bits": None}},
     (None, 7, None, None), (None, 7.0, None, math.nan, "FP32 + U7")),
    # bit-widths the config lacks: the wandb config shows None, the tables the config's default 8
    ({"latent_layer": 20, "replay": {"size": 10}, "quant": {}}, (20, None, 10, None), (20, 8.0, 10, 8.0, "U8 + U8")),
    ({}, (None, None, None, None), (None, 8.0, None, math.nan, "FP32 + U8")),  # no quant group: FP32 frozen
])
def test_params_from_config_agrees_with_the_wandb_paper_names(config, names, columns):
    """The names a run's wandb config gets (`paper_names`, default_bits None) and the analysis columns
    (`params_from_config`, which derives them with default_bits 8), each against its expected values."""
    got = paper_names(config)
    assert list(got) == ["l", "Q_LR", "N_LR", "Q_frozen"] and tuple(got.values()) == names
    assert [type(v) for v in got.values()] == [type(v) for v in names]
    p = params_from_config(config)
    row = (p["latent_layer"], p["lr_bits"], p["buffer_size"], p["frozen_bits"], p["precision"])
    assert [type(v) for v in row] == [type(v) for v in columns]
    assert all(a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)) for a, b in zip(row, columns))


def test_importing_clq_tracking_loads_no_analysis():
    """clq.tracking takes paper_names from clq.analysis.collect only when it opens a wandb run: importing it loads
    neither the analysis nor pandas, wandb or matplotlib."""
    code = ("import sys, clq.tracking; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pandas', 'wandb', 'matplotlib') or m.startswith('clq.analysis')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_csv_round_trip(fake_sweep, tmp_path):
    df = collect_runs(fake_sweep)
    path = write_csv(df, str(tmp_path / "out" / "sweep.csv"))
    back = pd.read_csv(path)
    assert len(back) == 7 and list(back["status"]) == list(df["status"])
    assert json.loads(back.loc[1, "accuracy_per_event"]) == [0.2, 0.4, 0.6]
    np.testing.assert_allclose(back["memory_lr_buffer"], df["memory_lr_buffer"])
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".tmp")]
