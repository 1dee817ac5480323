"""clq-cost: Hydra composition, JSON keys, paper defaults, clean errors with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from clq.cost.cli import render, report_from_config

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="cost", overrides=list(overrides))


def test_defaults_are_the_paper_configuration():
    rep = report_from_config(_cfg())
    c, ev = rep["config"], rep["event"]
    assert (c["target"], c["l1_bytes"], c["latent_layer"], c["lr_bits"], c["frozen_bits"]) == (
        "vega", 128 * 1024, 19, 8, 8)
    assert c["model"]["input_size"] == 128 and c["model"]["num_classes"] == 50
    assert (ev["new_images"], ev["replays"], ev["epochs"], ev["batch_size"]) == (300, 1500, 4, 128)
    assert (ev["new_per_batch"], ev["replays_per_batch"], ev["iterations"]) == (21, 107, 60)
    assert rep["memory_bytes"]["lr_buffer"] == 49_152_004


def test_json_has_the_documented_keys():
    doc = json.loads(render(_cfg("format=json", "latent_layer=23")))
    for key in ("lr_buffer", "frozen_weights", "adaptive_weights", "gradients", "optimizer_state", "activations",
                "total"):
        assert isinstance(doc["memory_bytes"][key], int)
    for key in ("new_images", "replays", "epochs", "iterations"):
        assert key in doc["event"]
    for group in ("cycles", "latency_s", "energy_j"):
        assert set(doc[group]) >= {"frozen", "adaptive", "total"}
        assert doc[group]["total"] == pytest.approx(doc[group]["frozen"] + doc[group]["adaptive"])
    assert isinstance(doc["fits"], bool)
    fc = [L for L in doc["layers"] if L["index"] == 28][0]
    assert fc["kind"] == "linear" and set(fc["macs"]) == set(fc["cycles"]) == {
        "forward", "backward_error", "backward_gradient"}
    assert [c["target"] for c in doc["comparison"]] == ["stm32l4"]


@pytest.mark.parametrize("target", ["vega", "stm32l4"])
def test_every_target_option_composes_and_builds(target):
    rep = report_from_config(_cfg(f"target={target}"))
    assert rep["config"]["target"] == target
    others = [c["target"] for c in rep["comparison"]]
    assert target not in others and len(others) == 1


def test_overrides_reach_the_model():
    rep = report_from_config(_cfg("l1_kib=512", "replay.bits=null", "quant=fp32", "train.momentum=0"))
    assert rep["config"]["l1_bytes"] == 512 * 1024
    assert rep["config"]["lr_bits"] is None and rep["config"]["frozen_bits"] is None
    assert rep["memory_bytes"]["optimizer_state"] == 0


def test_stm32l4_table_states_the_ratios():
    text = render(_cfg("target=stm32l4", "latent_layer=27"))
    assert "Compared with vega" in text and "stm32l4/vega" in text and "energy" in text


def _cli(*args):
    return subprocess.run([sys.executable, "-c", "from clq.cost.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_exactly_one_json_document():
    r = _cli("format=json", "latent_layer=27")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # fails on any extra output
    assert doc["config"]["latent_layer"] == 27


@pytest.mark.parametrize("arg, field", [
    ("target=gap42", "target must be one of"),
    ("latent_layer=28", "latent_layer"),
])
def test_cli_bad_input_exits_2_without_traceback(arg, field):
    r = _cli(arg)
    assert r.returncode == 2
    assert field in r.stderr and "Traceback" not in r.stderr and r.stdout == ""
