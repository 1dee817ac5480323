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
