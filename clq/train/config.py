"""Typed training and replay settings: what `clq.config.experiment_config` builds from the ``train`` and ``replay``
config groups, and what the learning-event loop takes.

Each dataclass checks its fields once, on construction, and names the config key in the error. Its defaults are
those of the group's default file (conf/train/default.yaml, conf/replay/ar1.yaml) so that library code and tests
can write ``TrainConfig(epochs=2)``; tests/test_config.py compares every default with its YAML, which stays the
source: a run reads every key from the composed config, never a default from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from clq.checks import check_choice, check_flag, check_int, check_number
from clq.quant.uniform import check_bits
from clq.replay.buffer import POLICIES
from clq.train.first_event import HEAD_INITS, SCHEDULES
from clq.train.norm import ADAPTIVE_NORMS, FIRST_EVENT_NORMS

__all__ = ["TrainConfig", "ReplayConfig", "STRATEGIES", "TRAIN_KEYS"]

#: train.strategy: plain quantized latent replay (QLR-CL) or latent replay + CWR* consolidation (`clq.train.cwr`).
STRATEGIES = ("qlr", "ar1star")

#: TrainConfig field -> its key in the ``train`` config group.
TRAIN_KEYS = {
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "momentum": "momentum",
    "weight_decay": "weight_decay", "first_epochs": "first_event.epochs", "first_lr": "first_event.lr",
    "first_batch_size": "first_event.batch_size", "eval_batch_size": "eval_batch_size",
    "joint_epochs": "joint_epochs", "strategy": "strategy", "first_norm": "first_event.norm",
    "first_schedule": "first_event.schedule", "adaptive_norm": "adaptive_norm", "norm_momentum": "norm_momentum",
    "head_bias": "head.bias", "head_init": "head.init", "reset_momentum": "reset_momentum",
}


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (paper.md §3 names). `first_*` apply to event 0 (whole network).

    strategy: 'qlr' (plain quantized latent replay, the paper's QLR-CL) or 'ar1star' (latent replay plus
    CWR* consolidation of the classifier, `clq.train.cwr`).
    first_norm, first_schedule: event 0's normalization ('batch' | 'ar1') and learning-rate schedule
    ('cosine' | 'constant'); adaptive_norm: the adaptive stage's normalization in learning events ('fold' |
    'bn' | 'brn') with running statistics updated by norm_momentum (`clq.train.norm`).
    head_bias, head_init: the classifier's bias and initialization ('random' | 'zeros'; AR1: no bias, zeros).
    reset_momentum: start every learning event with fresh optimizer state (AR1 builds a new SGD per event).
    """

    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    first_epochs: int = 12
    first_lr: float = 0.05
    first_batch_size: int = 64
    eval_batch_size: int = 1000
    joint_epochs: int = 10
    strategy: str = "qlr"
    first_norm: str = "batch"
    first_schedule: str = "cosine"
    adaptive_norm: str = "fold"
    norm_momentum: float = 5e-5
    head_bias: bool = True
    head_init: str = "random"
    reset_momentum: bool = False

    def __post_init__(self):
        def key(name):
            return f"train.{TRAIN_KEYS[name]}"

        for name in ("epochs", "batch_size", "first_epochs", "first_batch_size", "eval_batch_size", "joint_epochs"):
            check_int(getattr(self, name), key(name), 1)
        for name in ("lr", "first_lr"):
            check_number(getattr(self, name), key(name), 0.0, lo_open=True)
        check_number(self.momentum, key("momentum"), 0.0, 1.0, hi_open=True)
        check_number(self.weight_decay, key("weight_decay"), 0.0)
        check_number(self.norm_momentum, key("norm_momentum"), 0.0, 1.0)
        for name, allowed in (("strategy", STRATEGIES), ("first_norm", FIRST_EVENT_NORMS),
                              ("first_schedule", SCHEDULES), ("adaptive_norm", ADAPTIVE_NORMS),
                              ("head_init", HEAD_INITS)):
            check_choice(getattr(self, name), key(name), allowed)
        for name in ("head_bias", "reset_momentum"):
            check_flag(getattr(self, name), key(name))


@dataclass(frozen=True)
class ReplayConfig:
    """Latent replay buffer: `size` N_LR (>= 0), `bits` Q_LR (1..16 or None = FP32), `policy`."""

    size: int = 1500
    bits: int | None = 8
    policy: str = "ar1"

    def __post_init__(self):
        check_int(self.size, "replay.size", 0)
        check_bits(self.bits, "replay.bits", 1, 16)
        check_choice(self.policy, "replay.policy", POLICIES)
