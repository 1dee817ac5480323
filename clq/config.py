"""Typed experiment configuration: the boundary between Hydra and the library.

The YAML of each config group (conf/<group>/*.yaml, composed by conf/config.yaml) is the only place a default
lives. `experiment_config(cfg)` reads every key of a composed, resolved config (a missing key is an error naming
it; nothing is filled in here) into frozen dataclasses, and each dataclass checks its fields once, on
construction, with the checks of `clq.checks`: `ModelConfig`, `DataConfig`, `TrackingConfig` here,
`clq.train.config.TrainConfig` / `ReplayConfig`, `clq.quant.frozen.QuantConfig`, and `ExperimentConfig` for the
top-level keys and the relations between groups (the mini-batch rule is `clq.train.event.minibatch_composition`,
the one the learning events use). Each problem raises `ConfigError` naming the field and the allowed values;
`clq-run` prints it and exits with status 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from clq.checks import check_choice, check_flag, check_int, check_number
from clq.data import DATASETS
from clq.data.core50.layout import NUM_CATEGORIES, NUM_OBJECTS
from clq.data.sessions import SESSIONS
from clq.model.specs import mobilenet_v1_specs, validate_latent_layer
from clq.quant.frozen import QuantConfig
from clq.train.config import TRAIN_KEYS, ReplayConfig, TrainConfig
from clq.minibatch import minibatch_composition

__all__ = ["ConfigError", "ModelConfig", "DataConfig", "TrackingConfig", "ExperimentConfig", "experiment_config",
           "TRACKING_BACKENDS", "WANDB_MODES", "sweep_group"]

TRACKING_BACKENDS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")
#: data.labels of CORe50 -> data.num_classes it needs.
CORE50_CLASSES = {"object": NUM_OBJECTS, "category": NUM_CATEGORIES}
#: Keys of the stream built from a classification set (data=fashion_mnist_nic, data=arrays), not of CORe50.
NIC_KEYS = ("sessions", "initial_classes", "initial_images_per_class", "test_size")
#: Keys of CORe50's official protocol (data=core50).
CORE50_KEYS = ("scenario", "run", "test_list", "filelists", "labels", "strict", "max_events")
#: QuantConfig fields read from the ``quant`` group under the same names (``frozen_bits: null``: no QuantConfig).
QUANT_FIELDS = ("weight_granularity", "weight_mode", "activation_range", "percentile", "equalize", "bias_correction")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and the allowed values."""


def _path_or_none(value, field: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{field} must be a path or null, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelConfig:
    """The network (conf/model): MobileNet-V1 of `width` at `input_size` px, `weights` None (event 0 trains from
    scratch) or 'imagenet' (the TF-slim ImageNet weights, read from `weights_path` or the default cache)."""

    name: str
    width: float
    input_size: int
    num_classes: int
    activation: str
    weights: str | None
    weights_path: str | None

    def __post_init__(self):
        check_choice(self.name, "model.name", ("mobilenet_v1",))
        check_number(self.width, "model.width", 0.0, 4.0, lo_open=True)
        check_int(self.input_size, "model.input_size", 8, 1024)
        check_int(self.num_classes, "model.num_classes", 2)
        check_choice(self.activation, "model.activation", ("relu", "relu6"))
        check_choice(self.weights, "model.weights", (None, "imagenet"))
        _path_or_none(self.weights_path, "model.weights_path")
        if self.weights == "imagenet" and (self.width != 1.0 or self.activation != "relu6"):
            raise ValueError("model.weights=imagenet needs model.width=1.0 and model.activation=relu6 (the TF-slim "
                             f"MobileNet-V1 1.0), got width={self.width}, activation={self.activation}")

    def specs(self):
        return mobilenet_v1_specs(self.width, self.input_size, self.num_classes, 3, self.activation)


@dataclass(frozen=True)
class DataConfig:
    """The dataset and its continual-learning stream (conf/data).

    `NIC_KEYS` are set for the streams built from a classification set (fashion_mnist, arrays) and None for
    CORe50; `CORE50_KEYS` are set for CORe50 and None otherwise. `images_per_event` is the size of a learning
    event (for CORe50, the cost model's: its batches hold 293-300 images).
    """

    name: str
    path: str
    num_classes: int
    images_per_event: int
    sessions: tuple | None
    initial_classes: int | None
    initial_images_per_class: int | None
    test_size: int | None
    scenario: str | None
    run: int | None
    test_list: str | None
    filelists: str | None
    labels: str | None
    strict: bool | None
    max_events: int | None

    def __post_init__(self):
        check_choice(self.name, "data.name", DATASETS)
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"data.path must be a file or folder path, got {self.path!r}")
        check_int(self.num_classes, "data.num_classes", 2)
        check_int(self.images_per_event, "data.images_per_event", 1)
        core50 = self.name == "core50"
        for key in NIC_KEYS if core50 else CORE50_KEYS:
            if getattr(self, key) is not None:
                raise ValueError(f"data.{key} is not a key of data.name={self.name}")
        if core50:
            from clq.data.core50 import SCENARIOS

            check_choice(self.scenario, "data.scenario", SCENARIOS)
            check_int(self.run, "data.run", 0, 9)
            if not isinstance(self.test_list, str) or not self.test_list:
                raise ValueError(f"data.test_list must be a file-list name, got {self.test_list!r}")
            _path_or_none(self.filelists, "data.filelists")
            check_choice(self.labels, "data.labels", tuple(CORE50_CLASSES))
            check_flag(self.strict, "data.strict")
            if self.max_events is not None:
                check_int(self.max_events, "data.max_events", 1)
            need = CORE50_CLASSES[self.labels]
            if self.num_classes != need:
                raise ValueError(f"data.num_classes must be {need} for CORe50 with data.labels={self.labels}, "
                                 f"got {self.num_classes}")
            return
        s = self.sessions
        if not isinstance(s, tuple) or not s or any(x not in SESSIONS for x in s) or len(set(s)) != len(s):
            raise ValueError(f"data.sessions must be a non-empty list of distinct names from {list(SESSIONS)}, "
                             f"got {s if not isinstance(s, tuple) else list(s)!r}")
        check_int(self.initial_classes, "data.initial_classes", 1, self.num_classes)
        check_int(self.initial_images_per_class, "data.initial_images_per_class", 1)
        check_int(self.test_size, "data.test_size", 1)


@dataclass(frozen=True)
class TrackingConfig:
    """Where a run is tracked besides its results.json (conf/tracking): `backend` 'wandb' (with `project`,
    `mode` and `group`) or 'none' (the other fields None)."""

    backend: str
    project: str | None
    mode: str | None
    group: str | None

    def __post_init__(self):
        check_choice(self.backend, "tracking.backend", TRACKING_BACKENDS)
        if self.backend == "none":
            return
        if not isinstance(self.project, str) or not self.project:
            raise ValueError(f"tracking.project must be a project name, got {self.project!r}")
        check_choice(self.mode, "tracking.mode", WANDB_MODES)
        if self.group is not None and not isinstance(self.group, str):
            raise ValueError(f"tracking.group must be a name or null, got {self.group!r}")


def sweep_group(group: str | None, sweep_dir) -> str:
    """The wandb group of a multirun member: `tracking.group` when set, else the sweep's folder, the same string
    for every member of an ad-hoc ``clq-run -m`` (clq-run's task, the vectorized launcher and the sweep summary
    run all group by it)."""
    return str(group) if group is not None else str(sweep_dir)


@dataclass(frozen=True)
class ExperimentConfig:
    """One clq-run experiment: the groups plus the top-level keys of conf/config.yaml, checked together."""

    model: ModelConfig
    data: DataConfig
    quant: QuantConfig | None
    replay: ReplayConfig
    train: TrainConfig
    tracking: TrackingConfig
    latent_layer: int
    seed: int
    joint_upper_bound: bool
    progress: bool
    target: str
    resume: bool
    checkpoint_every: int
    enforce_memory: bool
    latent_cache_dir: str | None
    compile_cache_dir: str | None
    export: bool
    event0_cache_dir: str | None

    def __post_init__(self):
        validate_latent_layer(self.model.specs(), self.latent_layer)
        check_int(self.seed, "seed", 0, 2**31 - 1)
        for name in ("joint_upper_bound", "progress", "resume", "export"):
            check_flag(getattr(self, name), name)
        check_flag(self.enforce_memory, "target.enforce_memory")
        if not isinstance(self.target, str) or not self.target:
            raise ValueError(f"target.name must be a target name, got {self.target!r}")
        check_int(self.checkpoint_every, "checkpoint_every", 0)
        for name in ("latent_cache_dir", "compile_cache_dir", "event0_cache_dir"):
            _path_or_none(getattr(self, name), name)
        if self.model.num_classes != self.data.num_classes:
            raise ValueError(f"model.num_classes ({self.model.num_classes}) must equal data.num_classes "
                             f"({self.data.num_classes})")
        if self.train.first_norm == "ar1" and self.model.weights is None:
            raise ValueError("train.first_event.norm=ar1 keeps the pretrained statistics below the latent layer "
                             "and needs pretrained weights (model.weights=imagenet); use train.first_event.norm="
                             "batch for a network trained from scratch")
        minibatch_composition(self.data.images_per_event, self.replay.size, self.train.batch_size)
        if self.export and self.quant is None:
            raise ValueError("export=true writes the integer frozen stage, but quant.frozen_bits is null (an FP32 "
                             "frozen stage has no integer tensors); set quant.frozen_bits (e.g. quant=int8) or "
                             "export=false")


def _key(m: Mapping, key: str, field: str):
    """`m[key]` (a dotted key reads nested groups); a missing key is a `ConfigError` naming `field`."""
    for part in key.split("."):
        if not isinstance(m, Mapping):
            raise ConfigError(f"{field.rsplit('.', 1)[0]} must be a group of keys, got {m!r}")
        if part not in m:
            raise ConfigError(f"{field} is missing: every key is set in the YAML of its config group (conf/)")
        m = m[part]
    return m


def _directory(value, field: str) -> str | None:
    """A directory key: a non-empty string (``~`` expanded) or null / empty (off)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be a directory path or null, got {value!r}")
    return os.path.expanduser(value)


def _bits(value):
    """A bit-width key: YAML's null, or the strings 'null' / 'none' / 'fp32' (sweep values), mean FP32."""
    return None if isinstance(value, str) and value.lower() in ("null", "none", "fp32") else value


def experiment_config(cfg: Mapping[str, Any]) -> ExperimentConfig:
    """Read a composed, resolved config into typed objects. Raises `ConfigError` on the first missing or bad
    field, before anything is computed."""
    groups = {g: _key(cfg, g, g) for g in ("model", "data", "quant", "replay", "train", "tracking", "target")}
    m, d, q, r, t, tr, tg = (groups[g] for g in ("model", "data", "quant", "replay", "train", "tracking", "target"))
    try:
        model = ModelConfig(**{k: _key(m, k, f"model.{k}") for k in (
            "name", "width", "input_size", "num_classes", "activation", "weights", "weights_path")})

        name = _key(d, "name", "data.name")
        extra = CORE50_KEYS if name == "core50" else NIC_KEYS
        data = {k: _key(d, k, f"data.{k}") for k in ("name", "path", "num_classes", "images_per_event", *extra)}
        if "sessions" in data:
            sessions = data["sessions"]
            if isinstance(sessions, str) or not hasattr(sessions, "__iter__"):
                raise ConfigError(f"data.sessions must be a list of names from {list(SESSIONS)}, got {sessions!r}")
            data["sessions"] = tuple(sessions)
        data = DataConfig(**{k: data.get(k) for k in DataConfig.__dataclass_fields__})

        frozen_bits = _bits(_key(q, "frozen_bits", "quant.frozen_bits"))
        if frozen_bits is None:
            quant = None
        else:
            quant = QuantConfig(bits=frozen_bits, **{k: _key(q, k, f"quant.{k}") for k in QUANT_FIELDS})

        replay = ReplayConfig(size=_key(r, "size", "replay.size"),
                              bits=_bits(_key(r, "bits", "replay.bits")),
                              policy=_key(r, "policy", "replay.policy"))
        train = TrainConfig(**{f: _key(t, k, f"train.{k}") for f, k in TRAIN_KEYS.items()})

        backend = _key(tr, "backend", "tracking.backend")
        wandb = {k: _key(tr, k, f"tracking.{k}") for k in ("project", "mode", "group")} if backend == "wandb" else {}
        tracking = TrackingConfig(backend, wandb.get("project"), wandb.get("mode"), wandb.get("group"))

        top = {k: _key(cfg, k, k) for k in ("latent_layer", "seed", "joint_upper_bound", "progress", "resume",
                                            "checkpoint_every", "export")}
        return ExperimentConfig(
            model, data, quant, replay, train, tracking, target=_key(tg, "name", "target.name"),
            enforce_memory=_key(tg, "enforce_memory", "target.enforce_memory"),
            latent_cache_dir=_directory(_key(cfg, "latent_cache_dir", "latent_cache_dir"), "latent_cache_dir"),
            compile_cache_dir=_directory(_key(cfg, "compile_cache_dir", "compile_cache_dir"), "compile_cache_dir"),
            event0_cache_dir=_directory(_key(cfg, "event0_cache_dir", "event0_cache_dir"), "event0_cache_dir"),
            **top)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
