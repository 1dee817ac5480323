"""The paper experiment config end to end through `clq-run` on a generated CORe50 tree (official layout)."""

import json
import os
import subprocess
import sys

import pytest

from clq.data.core50 import write_nicv2_protocol
from clq.model.imagenet import default_weights_path

pytestmark = pytest.mark.skipif(not default_weights_path().is_file(),
                                reason="ImageNet weights absent: run scripts/fetch_weights.sh (scripts/setup.sh does)")


def test_paper_experiment_config_runs_on_a_generated_core50_tree(tmp_path):
    tree = write_nicv2_protocol(str(tmp_path / "core50"), objects=(1, 2, 6), train_sessions=(1, 2, 4),
                                test_sessions=(3,), frames=4, layout="latent_replay")
    run_dir = tmp_path / "run"
    args = ["+experiment=core50_nicv2_391", f"data.path={tree['images']}", f"data.filelists={tree['filelists']}",
            # The generated protocol is small: fewer batches than 391, and a test list shorter than 20 lines.
            "data.strict=false", "data.test_list=test_filelist.txt", "data.max_events=4",
            "train.first_event.epochs=1", "replay.size=12", "progress=false", "tracking=none",
            f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-m", "clq", *args], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    cfg = res["config"]
    assert cfg["model"]["weights"] == "imagenet" and cfg["model"]["input_size"] == 128 and cfg["latent_layer"] == 19
    assert cfg["train"]["lr"] == 5e-5 and cfg["train"]["first_event"]["lr"] == 1e-3
    assert len(res["accuracy_per_event"]) == 4
    assert res["latent"]["shape"] == [8, 8, 512] and res["latent"]["lr_bits"] == 8
    assert res["memory_bytes"]["lr_buffer"] == 12 * 32768 + 4  # 12 UINT-8 LRs at l=19 + one FP32 scale
    assert res["events"][1]["classes"] == [res["events"][1]["classes"][0]]  # later batches: one class each
