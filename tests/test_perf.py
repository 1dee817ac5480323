"""clq.perf's speed account counts the work done in the process it times: all of it on a fresh run, the events
after the checkpoint on a resumed one, the misses of a latent cache."""

from types import SimpleNamespace

import numpy as np
import pytest

from clq.model.specs import mobilenet_v1_specs
from clq.perf import cpu_model, flop_account, training_macs
from tiny import TINY, needs_fmnist

SPECS = mobilenet_v1_specs(0.25, 32, 10)
L = 19
STREAM = SimpleNamespace(experiences=[np.arange(100), np.arange(10), np.arange(20), np.arange(30)],
                         test_labels=np.zeros(50, int))
TRAIN = SimpleNamespace(first_batch_size=32, first_epochs=2, batch_size=16)
PEAK = {"gflops": 100.0}
FROZEN_FWD = 2 * training_macs(SPECS[: L + 1])["forward"]
ADAPT = training_macs(SPECS[L + 1 :])


def results(**extra):
    events = [{"event": i, "iterations": 3} for i in range(4)]
    timing = {"first_event_s": 1.0, "frozen_pass_s": 1.0, "train_s": 1.0, "eval_s": 1.0}
    return {"events": events, "timing_s": timing, "event0_cached": False, "resumed_from_event": None, **extra}


def gflop(account, phase):
    return account["phases"][phase]["gflop"]


def test_a_fresh_run_counts_every_event_and_image():
    a = flop_account(SPECS, L, STREAM, TRAIN, results(), PEAK)
    assert gflop(a, "frozen_pass") == round(FROZEN_FWD * (160 + 50) / 1e9, 3)
    assert gflop(a, "learning_events") == round(2 * ADAPT["total"] * 3 * 3 * 16 / 1e9, 3)
    assert gflop(a, "evaluation") == round(2 * ADAPT["forward"] * 50 * 4 / 1e9, 3)
    assert gflop(a, "event_0") == round(2 * (training_macs(SPECS)["total"] * 96 * 2
                                             + training_macs(SPECS)["forward"] * 100) / 1e9, 3)
    assert a["phases"]["learning_events"]["fraction_of_peak"] == pytest.approx(
        gflop(a, "learning_events") / 100.0, abs=1e-4)


def test_the_account_names_the_host_cpu_with_its_family_and_model(tmp_path):
    """A bare "AMD EPYC" hides the generation (Zen 4 and Zen 5 differ ~2x in peak): the family and model say it."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\n"
                    "model name\t: Other\n")
    assert cpu_model(str(info)) == "AMD EPYC (family 25, model 17)"  # the first processor's block
    assert cpu_model(str(tmp_path / "absent"))  # no such file: the platform's processor name, never an error
    assert flop_account(SPECS, L, STREAM, TRAIN, results(), PEAK)["host_cpu"] == cpu_model()


def test_a_resumed_run_counts_only_the_events_after_its_checkpoint():
    a = flop_account(SPECS, L, STREAM, TRAIN, results(resumed_from_event=1, event0_cached=None), PEAK)
    assert gflop(a, "frozen_pass") == round(FROZEN_FWD * (20 + 30 + 50) / 1e9, 3)
    assert gflop(a, "learning_events") == round(2 * ADAPT["total"] * 2 * 3 * 16 / 1e9, 3)
    assert gflop(a, "evaluation") == round(2 * ADAPT["forward"] * 50 * 2 / 1e9, 3)
    assert a["phases"]["event_0"]["seconds"] is None  # event 0 was not trained in this process


def test_a_latent_cache_counts_its_misses():
    a = flop_account(SPECS, L, STREAM, TRAIN, results(latent_cache={"hits": 150, "misses": 60}), PEAK)
    assert gflop(a, "frozen_pass") == round(FROZEN_FWD * 60 / 1e9, 3)


@needs_fmnist
def test_a_failing_speed_account_costs_the_account_not_the_run(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import clq.perf
    from clq.config import experiment_config
    from clq.run import CONF_DIR, run_experiment

    def broken(*args):
        raise ZeroDivisionError("no time measured")

    monkeypatch.setattr(clq.perf, "flop_account", broken)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "tracking=none", "checkpoint_every=0"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    res = run_experiment(experiment_config(resolved), resolved, str(tmp_path))
    assert res["status"] == "completed" and res["speed"] is None
    assert "speed account not made (ZeroDivisionError: no time measured)" in res["warnings"]
