"""Every config group composes and validates; bad values fail before any compute, naming the field."""

import inspect
import os

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from clq.config import ConfigError, experiment_config
from clq.quant.frozen import QuantConfig
from clq.train.config import TRAIN_KEYS, ReplayConfig, TrainConfig
from clq.train.event import minibatch_composition

CONF = os.path.join(os.path.dirname(__file__), "..", "conf")
GROUPS = {g: sorted(f[:-5] for f in os.listdir(os.path.join(CONF, g)) if f.endswith(".yaml"))
          for g in ("model", "data", "quant", "replay", "train", "tracking", "target")}


def _compose(overrides=()):
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False)


def _resolve(overrides=()):
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes_and_builds(group, option):
    extra = ["data.path=/tmp/x.npz", "data.num_classes=10"] if (group, option) == ("data", "arrays") else []
    exp = experiment_config(_resolve([f"{group}={option}", *extra]))
    assert exp.model.specs()[exp.latent_layer].index == exp.latent_layer


def test_defaults_are_the_documented_ones():
    exp = experiment_config(_resolve())
    assert (exp.latent_layer, exp.replay.size, exp.replay.bits, exp.replay.policy) == (19, 1500, 8, "ar1")
    assert exp.quant.bits == 8 and exp.tracking.backend == "wandb" and exp.tracking.mode == "offline"
    assert exp.train.epochs == 4 and exp.train.batch_size == 128 and exp.target == "vega"
    assert experiment_config(_resolve(["replay.bits=null"])).replay.bits is None
    assert experiment_config(_resolve(["quant=fp32"])).quant is None


@pytest.mark.parametrize("override,field", [
    ("latent_layer=28", "latent_layer"),
    ("latent_layer=-1", "latent_layer"),
    ("replay.bits=0", "replay.bits"),
    ("replay.bits=17", "replay.bits"),
    ("replay.size=-5", "replay.size"),
    ("replay.policy=lifo", "replay.policy"),
    ("train.epochs=0", "train.epochs"),
    ("train.lr=-0.1", "train.lr"),
    ("train.momentum=1.5", "train.momentum"),
    ("model.width=0", "model.width"),
    ("quant.frozen_bits=9", "quant.frozen_bits"),
    ("quant.weight_mode=fancy", "quant.weight_mode"),
    ("data.sessions=[clean,underwater]", "data.sessions"),
    ("data.initial_classes=11", "data.initial_classes"),
    ("tracking.mode=cloud", "tracking.mode"),
    ("seed=-3", "seed"),
    ("train.batch_size=1", "train.batch_size"),
    ("train.adaptive_norm=layer", "train.adaptive_norm"),
    ("train.first_event.norm=group", "train.first_event.norm"),
    ("train.first_event.schedule=step", "train.first_event.schedule"),
    ("train.head.init=ones", "train.head.init"),
    ("train.head.bias=maybe", "train.head.bias"),
    ("train.reset_momentum=1", "train.reset_momentum"),
    ("train.norm_momentum=2", "train.norm_momentum"),
    ("train.first_event.norm=ar1", "model.weights=imagenet"),  # AR1's event 0 needs pretrained statistics
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        experiment_config(_resolve([override]))
    assert field in str(e.value)


def test_imagenet_preset_is_the_papers_setting_with_ar1s_event_0():
    exp = experiment_config(_resolve(["+experiment=fashion_mnist_imagenet"]))
    assert exp.model.weights == "imagenet" and exp.model.input_size == 64 and exp.latent_layer == 19
    assert (exp.train.lr, exp.train.first_lr, exp.train.epochs, exp.train.first_epochs) == (5e-5, 1e-3, 4, 4)
    assert (exp.train.first_norm, exp.train.first_schedule, exp.train.head_bias, exp.train.head_init) == (
        "ar1", "constant", False, "zeros")
    assert len(exp.data.sessions) == 3 and exp.replay.size == 1500 and exp.replay.bits == 8


def test_library_defaults_are_the_yaml_defaults():
    """`TrainConfig()`, `ReplayConfig()` and `QuantConfig()` (library users' shorthand) equal the default groups'
    YAML (conf/train/default.yaml, conf/replay/ar1.yaml, conf/quant/int8.yaml), field by field."""
    exp = experiment_config(_resolve())
    assert TrainConfig() == exp.train and ReplayConfig() == exp.replay and QuantConfig() == exp.quant
    # Every TrainConfig field is read from a key of the train group, and every key is read.
    train = _resolve()["train"]
    keys = {f"{k}.{kk}" for k, v in train.items() if isinstance(v, dict) for kk in v}
    keys |= {k for k, v in train.items() if not isinstance(v, dict)}
    assert set(TRAIN_KEYS.values()) == keys


def _signature_defaults(fn, names):
    params = inspect.signature(fn).parameters
    return {n: params[n].default for n in names}


def test_library_function_defaults_are_the_yaml_defaults():
    """The data functions' (and the TFDS builder's) defaults, the documented shorthand of library users, equal the
    data groups' YAML: the YAML is the source, these must follow it."""
    from clq.data.core50 import load_core50_stream
    from clq.data.stream import build_nic_stream

    nic = _resolve()["data"]
    keys = ("sessions", "initial_classes", "initial_images_per_class", "images_per_event", "test_size")
    got = _signature_defaults(build_nic_stream, keys)
    assert {**got, "sessions": list(got["sessions"])} == {k: nic[k] for k in keys}
    core50 = _resolve(["data=core50", "data.path=/x"])["data"]
    keys = ("scenario", "run", "test_list", "filelists", "labels", "strict", "max_events")
    assert _signature_defaults(load_core50_stream, keys) == {k: core50[k] for k in keys}
    pytest.importorskip("tensorflow_datasets")
    from clq.data.tfds.fashion_mnist import FashionMnistNicConfig

    tfds_default = FashionMnistNicConfig(name="default")
    keys = ("initial_classes", "initial_images_per_class", "images_per_event", "test_size")
    assert {k: getattr(tfds_default, k) for k in keys} == {k: nic[k] for k in keys}
    assert list(tfds_default.sessions) == nic["sessions"]


def _without(cfg, dotted):
    *path, last = dotted.split(".")
    node = cfg
    for p in path:
        node = node[p]
    del node[last]
    return cfg


@pytest.mark.parametrize("key", ["train.lr", "train.first_event.epochs", "train.head.init", "model.width",
                                 "data.images_per_event", "data.sessions", "quant.percentile", "replay.bits",
                                 "tracking.mode", "target.enforce_memory", "seed", "latent_cache_dir", "train"])
def test_a_missing_key_is_an_error_naming_it(key):
    with pytest.raises(ConfigError, match=f"^{key} is missing"):
        experiment_config(_without(_resolve(), key))


def test_event0_and_latent_caches_are_on_by_default_and_an_empty_variable_turns_them_off(monkeypatch):
    for var in ("CLQ_EVENT0_CACHE_DIR", "CLQ_LATENT_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    exp = experiment_config(_resolve())
    assert exp.event0_cache_dir == os.path.expanduser("~/.cache/clq/event0")
    assert exp.latent_cache_dir == os.path.expanduser("~/.cache/clq/latents")
    monkeypatch.setenv("CLQ_EVENT0_CACHE_DIR", "/somewhere/e0")
    monkeypatch.setenv("CLQ_LATENT_CACHE_DIR", "")
    exp = experiment_config(_resolve())
    assert exp.event0_cache_dir == "/somewhere/e0" and exp.latent_cache_dir is None
    assert experiment_config(_resolve(["event0_cache_dir=null"])).event0_cache_dir is None


def test_each_dataset_has_its_own_keys():
    nic = experiment_config(_resolve()).data
    assert nic.sessions[0] == "clean" and nic.initial_classes == 5 and nic.scenario is None and nic.labels is None
    core50 = experiment_config(_resolve(["data=core50", "data.path=/x"])).data
    assert core50.scenario == "nicv2_391" and core50.labels == "object" and core50.sessions is None
    with pytest.raises(ConfigError, match="^data.scenario is missing"):
        experiment_config(_without(_resolve(["data=core50", "data.path=/x"]), "data.scenario"))


@pytest.mark.parametrize("batch,size,n_new", [(1, 1500, 300), (2, 1500, 300), (3, 1500, 300), (16, 40, 12),
                                              (128, 1500, 6), (128, 1500, 4), (8, 0, 5)])
def test_the_config_checks_the_minibatch_rule_the_learning_events_use(batch, size, n_new):
    cfg = _resolve([f"train.batch_size={batch}", f"replay.size={size}", f"data.images_per_event={n_new}"])
    try:
        comp = minibatch_composition(n_new, size, batch)
    except ValueError as e:
        with pytest.raises(ConfigError) as got:
            experiment_config(cfg)
        assert str(got.value) == str(e) and "train.batch_size" in str(e)
    else:
        assert comp.new_per_batch >= 1
        assert experiment_config(cfg).train.batch_size == batch


def test_a_multirun_member_is_grouped_by_its_sweep_folder_unless_it_names_a_group():
    from clq.config import sweep_group

    assert sweep_group(None, "multirun/2026-11-30/10-00-00") == "multirun/2026-11-30/10-00-00"
    assert sweep_group("bits-sweep", "multirun/x") == "bits-sweep"
