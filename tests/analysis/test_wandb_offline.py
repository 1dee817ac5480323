"""Reading offline wandb runs (the binary .wandb file) without the wandb service."""

import glob
import os
import time

import pytest

from clq.analysis import collect_wandb, read_wandb_offline


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """A real offline run written by the installed wandb: config, 3 logged events, summary, group."""
    wandb = pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("wb")
    os.environ.setdefault("WANDB_SILENT", "true")
    config = {"latent_layer": 23, "replay": {"bits": 6, "size": 40, "policy": "ar1"}, "quant": {"frozen_bits": 8},
              "seed": 2, "target": {"name": "vega"}}
    run = wandb.init(project="clq", mode="offline", dir=str(root), config=config, group="grid_A",
                     reinit="finish_previous")
    for i, acc in enumerate([0.1, 0.3, 0.25]):
        run.log({"accuracy": acc, "train_loss": 1.0 / (i + 1)}, step=i)
    run.summary["final_accuracy"] = 0.25
    run.summary["memory_lr_buffer"] = 3844
    run.finish(exit_code=0)
    # wandb's core process may still be flushing the file when finish() returns: wait for the exit record.
    (path,) = glob.glob(str(root / "wandb" / "offline-run-*"))
    deadline = time.monotonic() + 30
    while read_wandb_offline(path)["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return root


def test_read_wandb_offline(offline_run):
    (path,) = glob.glob(str(offline_run / "wandb" / "offline-run-*"))
    w = read_wandb_offline(path)
    assert (w["group"], w["project"], w["exit_code"]) == ("grid_A", "clq", 0), w
    assert w["config"]["replay"] == {"bits": 6, "size": 40, "policy": "ar1"} and w["config"]["seed"] == 2
    assert [h["accuracy"] for h in w["history"]] == [0.1, 0.3, 0.25]
    assert w["summary"]["final_accuracy"] == 0.25 and w["summary"]["memory_lr_buffer"] == 3844


def test_collect_wandb(offline_run):
    df = collect_wandb(str(offline_run))
    assert len(df) == 1
    r = df.iloc[0]
    assert r["status"] == "completed" and r["group"] == "grid_A" and r["lr_precision"] == "U6"
    assert r["latent_layer"] == 23 and r["seed"] == 2 and r["final_accuracy"] == 0.25
    assert r["accuracy_per_event"] == [0.1, 0.3, 0.25] and r["memory_lr_buffer"] == 3844


def test_not_a_wandb_file(tmp_path):
    p = tmp_path / "x.wandb"
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a wandb run file"):
        read_wandb_offline(str(p))


@pytest.fixture(scope="module")
def clq_run_wandb(tmp_path_factory):
    """A real (tiny) clq-run with its offline wandb run."""
    from tiny import HAVE_FMNIST, TINY, run_module

    if not HAVE_FMNIST:
        pytest.skip("dataset-fashion-mnist not installed (scripts/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("clqwb")
    p = run_module("clq", [*TINY, "replay.bits=6", f"hydra.run.dir={tmp / 'r'}"], tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    (path,) = glob.glob(str(tmp / "r" / "wandb" / "offline-run-*"))
    deadline = time.monotonic() + 30
    while read_wandb_offline(path)["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return tmp / "r", path


def test_a_runs_wandb_tells_its_story(clq_run_wandb):
    """The learning event is the step metric; accuracy per session and per class after every event; the accuracy
    matrices as tables; the cost model's breakdown in the summary; the paper's names in the config; results.json
    as an artifact. All read back offline, from the run folder."""
    import json

    from clq.analysis import wandb_table

    run_dir, path = clq_run_wandb
    res = json.loads((run_dir / "results.json").read_text())
    w = read_wandb_offline(path)
    assert w["exit_code"] == 0 and w["step_metrics"] == {"event": None, "*": "event"}
    hist = sorted((h for h in w["history"] if "accuracy" in h), key=lambda h: h["event"])
    assert [h["event"] for h in hist] == list(range(len(res["accuracy_per_event"])))
    assert [h["accuracy"] for h in hist] == res["accuracy_per_event"]
    sessions = list(res["final_accuracy_per_session"])
    for i, h in enumerate(hist):
        for j, name in enumerate(sessions):
            assert h.get(f"session/{name}") == res["accuracy_matrix"]["per_session"][i][j]
        assert [h.get(f"class/{k}") for k in range(10)] == res["accuracy_matrix"]["per_class"][i]
    per_class = wandb_table(path, "accuracy_matrix/per_class")
    assert per_class.shape == (len(hist), 11)
    assert per_class.drop(columns="event").where(per_class.notna(), None).values.tolist() == \
        res["accuracy_matrix"]["per_class"]
    assert list(wandb_table(path, "accuracy_matrix/per_session").columns) == ["event", *sessions]
    assert wandb_table(path, "buffer/class_histogram_table")["latents"].tolist() == \
        res["buffer"]["class_histogram"]
    s = w["summary"]
    assert s["accuracy_matrix/heatmap._type"] == "image-file"
    assert os.path.exists(os.path.join(path, "files", s["accuracy_matrix/heatmap.path"]))
    for k, v in res["cost"]["memory_bytes"].items():
        assert s[f"memory/{k}"] == v
    assert s["latency_s/total"] == res["cost"]["latency_s"]["total"] and s["target"] == "vega"
    assert s["energy_j/total"] == res["cost"]["energy_j"]["total"]
    assert s["final_accuracy"] == res["final_accuracy"] and s["forgetting"] == res["forgetting"]["per_class"]
    c = w["config"]
    assert (c["l"], c["Q_LR"], c["N_LR"], c["Q_frozen"]) == (23, 6, 40, 8)
    (art,) = [a for a in w["artifacts"] if a["type"] == "results"]
    assert art["files"] == ["results.json"]
