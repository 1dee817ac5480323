"""Fuzz the config boundary: any override set gives a clean ConfigError naming a field, or objects that build."""

import os

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from clq.config import ConfigError, experiment_config
from clq.model import split_specs
from clq.quant import make_latent_codec
from clq.replay import make_replay_buffer
from clq.run import memory_report
from clq.train import make_optimizer, minibatch_composition

CONF = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "conf"))
POOL = {
    "latent_layer": ["-1", "0", "13", "27", "28", "x", "3.5"],
    "replay.bits": ["0", "1", "8", "16", "17", "null", "fp32", "eight", "2.5"],
    "replay.size": ["-1", "0", "10", "1500", "big"],
    "replay.policy": ["ar1", "reservoir", "class_balanced", "fifo", "3"],
    "train.epochs": ["0", "1", "-2", "four"],
    "train.batch_size": ["0", "1", "128"],
    "train.lr": ["0", "-1", "0.001", "fast"],
    "train.strategy": ["qlr", "ar1star", "ewc"],
    "model.width": ["0", "0.25", "5", "wide"],
    "model.input_size": ["0", "7", "32", "2000"],
    "data.images_per_event": ["0", "1", "300"],
    "quant.frozen_bits": ["1", "8", "9", "null"],
    "seed": ["-1", "0", "7", "s"],
    "tracking.mode": ["offline", "cloud"],
    "target.enforce_memory": ["true", "false", "maybe"],
    "checkpoint_every": ["-1", "0", "5"],
}

overrides = st.dictionaries(st.sampled_from(sorted(POOL)), st.just(None), max_size=6).flatmap(
    lambda d: st.fixed_dictionaries({k: st.sampled_from(POOL[k]) for k in d}))


@pytest.fixture(scope="module")
def composer():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield lambda ov: OmegaConf.to_container(compose("config", overrides=ov), resolve=True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides)
def test_any_override_set_fails_cleanly_or_builds(composer, ov):
    cfg = composer([f"{k}={v}" for k, v in ov.items()])
    try:
        exp = experiment_config(cfg)
        memory_report(exp, exp.model.specs())  # the cost model's checks, incl. target.enforce_memory
    except ConfigError as e:
        msg = str(e)
        assert any(k in msg for k in ov) or "model.num_classes" in msg, (ov, msg)
        return
    # A valid configuration builds every object without an error from JAX or NumPy.
    specs = exp.model.specs()
    frozen, adaptive = split_specs(specs, exp.latent_layer)
    codec = make_latent_codec(exp.replay.bits, 1.0)
    buf = make_replay_buffer(exp.replay.size, frozen[-1].out_shape, codec, exp.replay.policy, exp.data.num_classes)
    assert buf.init().latents.shape[0] == exp.replay.size
    comp = minibatch_composition(exp.data.images_per_event, exp.replay.size, exp.train.batch_size)
    n_new, b = exp.data.images_per_event, exp.train.batch_size
    assert 1 <= comp.new_per_batch <= n_new  # never a new image twice in one mini-batch
    # A full mini-batch of B when there is a buffer to fill it; without one, only the event's new images.
    assert comp.new_per_batch + comp.replays_per_batch == (b if exp.replay.size > 0 else min(b, n_new))
    make_optimizer(exp.train.lr, exp.train.momentum, exp.train.weight_decay)
