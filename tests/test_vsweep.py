"""`clq-vsweep` end to end: a tiny bit-width x seed sweep as one program, against `clq-run`, and clean config errors."""

import json

import numpy as np
import pytest

from clq.analysis import collect_runs
from clq.config import ConfigError
from clq.vsweep import vsweep_config
from tiny import TINY, needs_fmnist, run_module

BITS, SEEDS = [8, 4], [0, 3]


@needs_fmnist
def test_tiny_vsweep_members_equal_clq_run_and_collect_like_a_multirun(tmp_path):
    sweep_dir, run_dir = tmp_path / "vsweep", tmp_path / "run"
    p = run_module("clq.vsweep", [*TINY, f"vsweep.bits=[{','.join(map(str, BITS))}]",
                                  f"vsweep.seeds=[{','.join(map(str, SEEDS))}]", f"hydra.run.dir={sweep_dir}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "one jitted call" in p.stdout and "final accuracy" in p.stdout and "U4" in p.stdout

    n_events = 1 + 10 * 2 - 5
    top = json.loads((sweep_dir / "vsweep.json").read_text())
    assert top["status"] == "completed" and top["lr_bits"] == BITS and top["seeds"] == SEEDS
    assert np.asarray(top["accuracy"]).shape == (len(BITS), len(SEEDS), n_events)
    assert set(top["timing_s"]) >= {"event0_frozen_latents_s", "compile_and_sweep_s", "total_s"}
    members = {}
    for k, b in enumerate(BITS):
        for s, seed in enumerate(SEEDS):
            res = json.loads((sweep_dir / f"bits{b}_seed{seed}" / "results.json").read_text())
            assert res["status"] == "completed"
            assert res["config"]["replay"]["bits"] == b and res["config"]["seed"] == seed
            assert "vsweep" not in res["config"]
            assert res["accuracy_per_event"] == top["accuracy"][k][s]
            assert res["final_accuracy"] == res["accuracy_per_event"][-1]
            assert res["buffer"]["filled"] == 40
            members[b, seed] = res
    # The buffer's memory follows Q_LR: 40 latents of 128 elements, 8 vs 4 bits each.
    lr8, lr4 = members[8, 0]["memory_bytes"]["lr_buffer"], members[4, 0]["memory_bytes"]["lr_buffer"]
    assert lr8 - lr4 == 40 * 128 * 4 // 8
    # Seeds and bit-widths give different learning phases.
    assert members[8, 0]["accuracy_per_event"] != members[8, 3]["accuracy_per_event"]
    assert members[8, 0]["accuracy_per_event"] != members[4, 0]["accuracy_per_event"]

    # The member whose seed is the base seed (seed=0) is clq-run with that replay.bits and seed.
    p = run_module("clq", [*TINY, "replay.bits=8", "seed=0", "checkpoint_every=0", "tracking=none",
                           f"hydra.run.dir={run_dir}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = json.loads((run_dir / "results.json").read_text())
    np.testing.assert_allclose(members[8, 0]["accuracy_per_event"], ref["accuracy_per_event"], atol=1e-6, rtol=0)
    assert members[8, 0]["buffer"]["class_histogram"] == ref["buffer"]["class_histogram"]
    assert members[8, 0]["memory_bytes"] == ref["memory_bytes"] and members[8, 0]["cost"] == ref["cost"]
    assert members[8, 0]["latent"] == ref["latent"]
    # The same evaluator and results builder: per-class / per-session matrices and forgetting agree too.
    for group in ("per_class", "per_session"):
        np.testing.assert_allclose(np.asarray(members[8, 0]["accuracy_matrix"][group], float),
                                   np.asarray(ref["accuracy_matrix"][group], float), atol=1e-6, rtol=0)
        assert abs(members[8, 0]["forgetting"][group] - ref["forgetting"][group]) < 1e-6
    assert members[8, 0]["final_accuracy_per_session"].keys() == ref["final_accuracy_per_session"].keys()

    # clq.analysis reads the folder like a multirun: one row per member, not one for the sweep's own run dir.
    df = collect_runs(str(sweep_dir))
    assert len(df) == len(BITS) * len(SEEDS) and set(df["status"]) == {"completed"}
    assert sorted(zip(df["lr_bits"].astype(int), df["seed"].astype(int))) == sorted(members)
    row = df[(df["lr_bits"] == 8) & (df["seed"] == 0)].iloc[0]
    assert row["final_accuracy"] == ref["final_accuracy"] and row["memory_lr_buffer"] == lr8


@pytest.mark.parametrize("override,needle", [
    ("vsweep.bits=[20]", "vsweep.bits[0] must be an integer in 1..16"),
    ("vsweep.bits=[]", "vsweep.bits must be a non-empty list"),
    ("vsweep.bits=[8,null]", "vsweep.bits[1] must be an integer in 1..16"),
    ("vsweep.seeds=[-1]", "vsweep.seeds[0] must be an integer in 0.."),
    ("vsweep.seeds=[1,1]", "vsweep.seeds must hold distinct values"),
    ("vsweep.members_per_batch=0", "vsweep.members_per_batch must be null (all members at once) or an integer >= 1"),
    ("replay.size=-1", "replay.size must be"),
])
def test_bad_config_exits_2_before_compute(tmp_path, override, needle):
    p = run_module("clq.vsweep", [override, f"hydra.run.dir={tmp_path / 'r'}", "progress=false"], tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r" / "vsweep.json").exists()
    assert not list((tmp_path / "r").glob("*/results.json")) and not (tmp_path / "r" / "results.json").exists()


def test_vsweep_config_validation():
    every = {"bits": [8, 16, 1], "seeds": [0, 7], "members_per_batch": None}
    assert vsweep_config({"vsweep": every}).bits == (8, 16, 1)
    assert vsweep_config({"vsweep": {"bits": [8], "seeds": [0], "members_per_batch": 2}}).members_per_batch == 2
    for bad in ({"bits": [8], "seeds": [0], "extra": 1}, {"bits": "8", "seeds": [0]}, {"bits": [8.0], "seeds": [0]},
                {"bits": [True], "seeds": [0]}, {"bits": [8], "seeds": None},
                {"bits": [8], "seeds": [0], "members_per_batch": 1.5}, {"bits": [8], "seeds": [0], "members_per_batch": True},
                {"bits": [8], "seeds": [0]}):  # a missing key: conf/vsweep.yaml sets every one
        with pytest.raises(ConfigError, match="vsweep"):
            vsweep_config({"vsweep": bad})


def test_unequal_event_compositions_are_refused_before_event_0():
    from types import SimpleNamespace

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from clq.config import experiment_config
    from clq.run import CONF_DIR
    from clq.vsweep import check_stream

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["replay.size=40", "train.batch_size=16"])
    exp = experiment_config(OmegaConf.to_container(cfg, resolve=True))
    stream = lambda *sizes: SimpleNamespace(experiences=[np.arange(n) for n in sizes])  # noqa: E731
    check_stream(stream(100, 12, 12), exp)  # 12 new images: 4 new + 12 replays, 3 iterations per epoch
    check_stream(stream(100, 12, 13), exp)  # 13: 4 + 12, 4 iterations: one program, masked steps
    with pytest.raises(ConfigError, match=r"one split of new and replayed.*event sizes \[5, 12\]"):
        check_stream(stream(100, 12, 5), exp)  # 5 new images: 2 new + 14 replays
    with pytest.raises(ConfigError, match="no learning event"):
        check_stream(stream(100), exp)


@needs_fmnist
def test_vsweep_runs_ar1_choices_like_clq_run(tmp_path):
    """CWR*, batch renormalization above the latent layer and a fresh optimizer state per event: the sweep's
    base-seed member is clq-run with the same choices (both run the learner step of clq.learn)."""
    ar1 = ["train.strategy=ar1star", "train.adaptive_norm=brn", "train.norm_momentum=0.05", "train.reset_momentum=true"]
    p = run_module("clq.vsweep", [*TINY, *ar1, "vsweep.bits=[8]", "vsweep.seeds=[0]",
                                  f"hydra.run.dir={tmp_path / 'vsweep'}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    member = json.loads((tmp_path / "vsweep" / "bits8_seed0" / "results.json").read_text())
    p = run_module("clq", [*TINY, *ar1, "replay.bits=8", "seed=0", "checkpoint_every=0", "tracking=none",
                           f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = json.loads((tmp_path / "run" / "results.json").read_text())
    np.testing.assert_allclose(member["accuracy_per_event"], ref["accuracy_per_event"], atol=1e-6, rtol=0)
    assert member["buffer"]["class_histogram"] == ref["buffer"]["class_histogram"]
