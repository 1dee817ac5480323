"""Typed experiment configuration and its validation: the boundary between Hydra and the library.

`experiment_config(cfg)` turns a composed Hydra `DictConfig` (or any mapping) into frozen dataclasses and
checks every field before anything is computed. Each problem raises `ConfigError` naming the field and the
allowed values; `clq-run` prints it and exits with status 2.
"""

from __future__ import annotations

import os

from dataclasses import dataclass
from typing import Any, Mapping

from clq.data import DATASETS
from clq.data.sessions import SESSIONS
from clq.model.specs import mobilenet_v1_specs, validate_latent_layer
from clq.quant.frozen import QuantConfig
from clq.quant.uniform import check_bits
from clq.replay.buffer import POLICIES
from clq.train.first_event import HEAD_INITS, SCHEDULES
from clq.train.loop import ReplayConfig, TrainConfig
from clq.train.norm import ADAPTIVE_NORMS, FIRST_EVENT_NORMS

__all__ = ["ConfigError", "ModelConfig", "DataConfig", "TrackingConfig", "ExperimentConfig", "experiment_config"]

TRACKING_BACKENDS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and the allowed values."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mobilenet_v1"
    width: float = 0.5
    input_size: int = 32
    num_classes: int = 10
    activation: str = "relu"
    weights: str | None = None  # None: event 0 trains from scratch; 'imagenet': TF-slim ImageNet weights
    weights_path: str | None = None

    def specs(self):
        return mobilenet_v1_specs(self.width, self.input_size, self.num_classes, 3, self.activation)


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion_mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    num_classes: int = 10
    sessions: tuple = SESSIONS
    initial_classes: int = 5
    initial_images_per_class: int = 600
    images_per_event: int = 300
    test_size: int = 10000
    # CORe50 only (data=core50): the official protocol, its run and test list.
    scenario: str = "nicv2_391"
    run: int = 0
    test_list: str = "test_filelist_20.txt"
    filelists: str | None = None
    labels: str = "object"
    strict: bool = True
    max_events: int | None = None


@dataclass(frozen=True)
class TrackingConfig:
    backend: str = "wandb"
    project: str = "clq"
    mode: str = "offline"
    group: str | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig
    data: DataConfig
    quant: QuantConfig | None
    replay: ReplayConfig
    train: TrainConfig
    tracking: TrackingConfig
    latent_layer: int = 19
    seed: int = 0
    joint_upper_bound: bool = False
    progress: bool = True
    target: str = "vega"
    resume: bool = True
    checkpoint_every: int = 1
    enforce_memory: bool = False
    latent_cache_dir: str | None = None
    compile_cache_dir: str | None = None
    export: bool = False


def _optional_path(cfg: Mapping, key: str) -> str | None:
    """A directory field: a non-empty string (``~`` expanded) or null."""
    v = cfg.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ConfigError(f"{key} must be a directory path or null, got {v!r}")
    return os.path.expanduser(v)


def _get(m: Mapping, key: str, default=None):
    return m[key] if key in m and m[key] is not None else default


def _int(value, field: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field} must be an integer{_range(lo, hi)}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{field} must be an integer{_range(lo, hi)}, got {value}")
    return value


def _float(value, field: str, lo: float | None = None, hi: float | None = None, lo_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{field} must be a number, got {value!r}")
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"<= {hi}"
        raise ConfigError(f"{field} must be {' and '.join(s for s in (lo_s, hi_s) if s)}, got {value}")
    return float(value)


def _flag(value, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{field} must be true or false, got {value!r}")
    return value


def _choice(value, field: str, allowed) -> str:
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {list(allowed)}, got {value!r}")
    return value


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" in {lo}..{hi}"
    if lo is not None:
        return f" >= {lo}"
    return ""


def _bits(value, field: str, lo: int, hi: int):
    if isinstance(value, str) and value.lower() in ("null", "none", "fp32"):
        return None
    try:
        return check_bits(value, field, lo, hi)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def experiment_config(cfg: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a composed config and return typed objects. Raises `ConfigError` on the first bad field."""
    m, d, q, r, t, tr = (cfg.get(k) or {} for k in ("model", "data", "quant", "replay", "train", "tracking"))

    model = ModelConfig(
        name=_choice(_get(m, "name", "mobilenet_v1"), "model.name", ("mobilenet_v1",)),
        width=_float(_get(m, "width", 1.0), "model.width", 0.0, 4.0, lo_open=True),
        input_size=_int(_get(m, "input_size", 128), "model.input_size", 8, 1024),
        num_classes=_int(_get(m, "num_classes", 10), "model.num_classes", 2),
        activation=_choice(_get(m, "activation", "relu"), "model.activation", ("relu", "relu6")),
        weights=_choice(m.get("weights"), "model.weights", (None, "imagenet")),
        weights_path=m.get("weights_path"),
    )
    if model.weights == "imagenet" and (model.width != 1.0 or model.activation != "relu6"):
        raise ConfigError("model.weights=imagenet needs model.width=1.0 and model.activation=relu6 "
                          f"(the TF-slim MobileNet-V1 1.0), got width={model.width}, activation={model.activation}")
    specs = model.specs()
    try:
        latent_layer = validate_latent_layer(specs, cfg.get("latent_layer", 19))
    except ValueError as e:
        raise ConfigError(str(e)) from None

    sessions = _get(d, "sessions", SESSIONS)
    if isinstance(sessions, str) or not hasattr(sessions, "__iter__"):
        raise ConfigError(f"data.sessions must be a list of names from {list(SESSIONS)}, got {sessions!r}")
    sessions = tuple(sessions)
    bad = [s for s in sessions if s not in SESSIONS]
    if not sessions or bad or len(set(sessions)) != len(sessions):
        raise ConfigError(f"data.sessions must be a non-empty list of distinct names from {list(SESSIONS)}, "
                          f"got {list(sessions)}")
    num_classes = _int(_get(d, "num_classes", 10), "data.num_classes", 2)
    if model.num_classes != num_classes:
        raise ConfigError(f"model.num_classes ({model.num_classes}) must equal data.num_classes ({num_classes})")
    path = d.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"data.path must be a file or folder path, got {path!r}")
    name = _choice(_get(d, "name", "fashion_mnist"), "data.name", DATASETS)
    core50 = {}
    if name == "core50":
        from clq.data.core50 import LABELS, SCENARIOS

        core50 = dict(
            scenario=_choice(_get(d, "scenario", "nicv2_391"), "data.scenario", SCENARIOS),
            run=_int(_get(d, "run", 0), "data.run", 0, 9),
            test_list=str(_get(d, "test_list", "test_filelist_20.txt")),
            filelists=d.get("filelists"),
            labels=_choice(_get(d, "labels", "object"), "data.labels", LABELS),
            strict=bool(_get(d, "strict", True)),
            max_events=None if d.get("max_events") is None else _int(d["max_events"], "data.max_events", 1),
        )
        need = 50 if core50["labels"] == "object" else 10
        if num_classes != need:
            raise ConfigError(f"data.num_classes must be {need} for CORe50 with data.labels={core50['labels']}, "
                              f"got {num_classes}")
    data = DataConfig(
        name=name,
        path=path,
        num_classes=num_classes,
        sessions=sessions,
        initial_classes=_int(_get(d, "initial_classes", 5), "data.initial_classes", 1, num_classes),
        initial_images_per_class=_int(_get(d, "initial_images_per_class", 600), "data.initial_images_per_class", 1),
        images_per_event=_int(_get(d, "images_per_event", 300), "data.images_per_event", 1),
        test_size=_int(_get(d, "test_size", 10000), "data.test_size", 1),
        **core50,
    )

    frozen_bits = _bits(q.get("frozen_bits", 8), "quant.frozen_bits", 2, 8)
    quant = None
    if frozen_bits is not None:
        try:
            quant = QuantConfig(
                bits=frozen_bits,
                weight_granularity=_get(q, "weight_granularity", "per_layer"),
                weight_mode=_get(q, "weight_mode", "asymmetric"),
                activation_range=_get(q, "activation_range", "minmax"),
                percentile=_float(_get(q, "percentile", 99.99), "quant.percentile"),
                equalize=_flag(_get(q, "equalize", False), "quant.equalize"),
                bias_correction=_flag(_get(q, "bias_correction", False), "quant.bias_correction"),
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    replay = ReplayConfig(
        size=_int(r.get("size", 1500), "replay.size", 0),
        bits=_bits(r.get("bits", 8), "replay.bits", 1, 16),
        policy=_choice(r.get("policy", "ar1"), "replay.policy", POLICIES),
    )

    fe = t.get("first_event") or {}
    head = t.get("head") or {}
    try:
        train = TrainConfig(
            epochs=_int(_get(t, "epochs", 4), "train.epochs", 1),
            batch_size=_int(_get(t, "batch_size", 128), "train.batch_size", 1),
            lr=_float(_get(t, "lr", 5e-5), "train.lr", 0.0, lo_open=True),
            momentum=_float(_get(t, "momentum", 0.9), "train.momentum", 0.0, 0.999),
            weight_decay=_float(_get(t, "weight_decay", 5e-4), "train.weight_decay", 0.0),
            first_epochs=_int(_get(fe, "epochs", 12), "train.first_event.epochs", 1),
            first_lr=_float(_get(fe, "lr", 0.05), "train.first_event.lr", 0.0, lo_open=True),
            first_batch_size=_int(_get(fe, "batch_size", 64), "train.first_event.batch_size", 1),
            eval_batch_size=_int(_get(t, "eval_batch_size", 1000), "train.eval_batch_size", 1),
            joint_epochs=_int(_get(t, "joint_epochs", 10), "train.joint_epochs", 1),
            strategy=_choice(_get(t, "strategy", "qlr"), "train.strategy", TrainConfig.STRATEGIES),
            first_norm=_choice(_get(fe, "norm", "batch"), "train.first_event.norm", FIRST_EVENT_NORMS),
            first_schedule=_choice(_get(fe, "schedule", "cosine"), "train.first_event.schedule", SCHEDULES),
            adaptive_norm=_choice(_get(t, "adaptive_norm", "fold"), "train.adaptive_norm", ADAPTIVE_NORMS),
            norm_momentum=_float(_get(t, "norm_momentum", 5e-5), "train.norm_momentum", 0.0, 1.0),
            head_bias=_flag(_get(head, "bias", True), "train.head.bias"),
            head_init=_choice(_get(head, "init", "random"), "train.head.init", HEAD_INITS),
            reset_momentum=_flag(_get(t, "reset_momentum", False), "train.reset_momentum"),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if train.first_norm == "ar1" and model.weights is None:
        raise ConfigError("train.first_event.norm=ar1 keeps the pretrained statistics below the latent layer and "
                          "needs pretrained weights (model.weights=imagenet); use train.first_event.norm=batch "
                          "for a network trained from scratch")
    if replay.size > 0:
        new = int(train.batch_size * data.images_per_event / (data.images_per_event + replay.size) + 0.5)
        if new < 1:
            raise ConfigError(
                f"train.batch_size={train.batch_size} with replay.size={replay.size} and data.images_per_event="
                f"{data.images_per_event} leaves {new} new samples per mini-batch; it must be >= 1 "
                "(raise train.batch_size or lower replay.size)")

    tracking = TrackingConfig(
        backend=_choice(_get(tr, "backend", "none"), "tracking.backend", TRACKING_BACKENDS),
        project=str(_get(tr, "project", "clq")),
        mode=_choice(_get(tr, "mode", "offline"), "tracking.mode", WANDB_MODES),
        group=_get(tr, "group"),
    )
    seed = _int(cfg.get("seed", 0), "seed", 0, 2**31 - 1)
    joint = cfg.get("joint_upper_bound", False)
    if not isinstance(joint, bool):
        raise ConfigError(f"joint_upper_bound must be true or false, got {joint!r}")
    target_cfg = cfg.get("target") or {}
    target = target_cfg.get("name", "vega") if isinstance(target_cfg, Mapping) else str(target_cfg)
    enforce = target_cfg.get("enforce_memory", False) if isinstance(target_cfg, Mapping) else False
    if not isinstance(enforce, bool):
        raise ConfigError(f"target.enforce_memory must be true or false, got {enforce!r}")
    resume = cfg.get("resume", True)
    if not isinstance(resume, bool):
        raise ConfigError(f"resume must be true or false, got {resume!r}")
    every = _int(cfg.get("checkpoint_every", 1), "checkpoint_every", 0)
    export = _flag(cfg.get("export", False), "export")
    if export and quant is None:
        raise ConfigError("export=true writes the integer frozen stage, but quant.frozen_bits is null (an FP32 "
                          "frozen stage has no integer tensors); set quant.frozen_bits (e.g. quant=int8) or "
                          "export=false")
    return ExperimentConfig(model, data, quant, replay, train, tracking, latent_layer, seed, joint,
                            bool(cfg.get("progress", True)), target, resume, every, enforce,
                            _optional_path(cfg, "latent_cache_dir"), _optional_path(cfg, "compile_cache_dir"),
                            export)
