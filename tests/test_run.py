"""The Hydra app end to end: a tiny real run through `clq-run`, and clean config errors."""

import glob
import json

import pytest

from tiny import TINY, needs_fmnist, run_module


def _run(args, cwd):
    return run_module("clq", args, cwd)


@needs_fmnist
def test_tiny_run_through_hydra_app(tmp_path):
    run_dir = tmp_path / "run"
    p = _run([*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "completed"
    n_events = 1 + 10 * 2 - 5
    assert len(res["accuracy_per_event"]) == n_events == len(res["events"])
    assert 0.0 <= res["final_accuracy"] <= 1.0 and res["final_accuracy"] == res["accuracy_per_event"][-1]
    assert res["config"]["latent_layer"] == 23 and res["config"]["replay"]["size"] == 40
    elements = 1 * 1 * 128  # l=23 (dw, 512 x 0.25 channels) at 16 px: 1x1 spatial
    assert res["latent"]["elements"] == elements
    assert res["memory_bytes"]["lr_buffer"] == 40 * elements + 4  # cost model: 40 UINT-8 latents + scale
    assert res["memory_bytes_source"].startswith("cost model")
    ram = res["buffer"]["ram_bytes"]  # measured: 40 x 32 packed uint32 words, int32 labels, bookkeeping
    assert ram["latents"] == 40 * (elements * 8 // 32) * 4 and ram["labels"] == 40 * 4
    assert ram["total"] == ram["latents"] + ram["labels"] + ram["bookkeeping"]
    assert len(res["accuracy_matrix"]["per_class"]) == n_events
    assert res["compiled_event_shapes"] == 1  # every later event reused one compiled learning event
    assert "wall_time_s" in res and "forgetting" in res
    qc = res["quantization_check"]  # what quantizing the frozen stage cost event 0's network
    assert qc["drop_points"] == pytest.approx(100 * (qc["fp32_accuracy"] - qc["quantized_accuracy"]), abs=0.02)
    assert f"{100 * qc['quantized_accuracy']:.2f} % with the quantized frozen stage" in p.stdout
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    assert len(lines) == n_events
    assert glob.glob(str(run_dir / "wandb" / "offline-run-*"))  # a real offline wandb run
    assert "final accuracy" in p.stdout and "replay buffer on the device (cost model)" in p.stdout
    line = next(x for x in p.stdout.splitlines() if "replay buffer in RAM here (measured)" in x)
    assert f"{ram['total']:,} B" in line and f"{ram['latents']:,} B packed uint32 words" in line


@pytest.mark.parametrize("override,needle", [
    ("compile_cache_dir=5", "compile_cache_dir must be a directory path or null"),
    ("compile_cache_dir=/proc/clq-xla", "compile_cache_dir='/proc/clq-xla' is not usable"),
    ("latent_layer=40", "latent_layer must be in 0..27"),
    ("replay.bits=20", "replay.bits must be"),
    ("replay.policy=fifo", "replay.policy must be one of"),
    ("replay.size=-1", "replay.size must be"),
])
def test_bad_config_fails_cleanly_before_compute(tmp_path, override, needle):
    p = _run([override, f"hydra.run.dir={tmp_path / 'r'}", "progress=false"], tmp_path)
    assert p.returncode == 2
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r" / "results.json").exists()


def test_unknown_key_is_rejected(tmp_path):
    p = _run(["replay.sz=3", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert p.returncode != 0 and "replay.sz" in p.stderr


def test_memory_enforcement_refuses_before_compute(tmp_path):
    # The paper configuration at l=19 overflows VEGA's 64 MB external memory (cost model placement).
    p = _run(["model=mobilenet_v1_paper", "target.enforce_memory=true", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert p.returncode == 2 and "does not fit target 'vega'" in p.stderr and "ext by" in p.stderr
    assert not (tmp_path / "r" / "results.json").exists()


@needs_fmnist
@pytest.mark.parametrize("norm", ["fold", "brn"])
def test_joint_upper_bound_runs_and_is_reported(tmp_path, norm):
    """joint_upper_bound=true trains the folded adaptive stage i.i.d. on every latent of the stream and reports it
    beside the continual result, whatever the learning events' normalization."""
    run_dir = tmp_path / "run"
    p = run_module("clq", [*TINY, "joint_upper_bound=true", f"train.adaptive_norm={norm}", "checkpoint_every=0",
                           "tracking=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert 1 / 10 < res["joint_accuracy"] <= 1.0  # above chance (10 classes)
    assert "joint upper bound" in p.stdout and "joint_s" in res["timing_s"]
