"""Adaptive-stage training, the learning-event loop, evaluation and metrics."""

from clq.train.config import ReplayConfig, TrainConfig
from clq.train.evaluate import EvalLatents, count_hits, evaluate, jit_count_hits, make_hits, pad_eval_latents
from clq.train.event import (
    Composition,
    EventMetrics,
    cross_entropy,
    make_learning_event,
    make_optimizer,
    minibatch_composition,
    set_learning_rate,
)
from clq.train.first_event import configure_head, population_bn_stats, train_first_event
from clq.train.frozen_stage import FrozenStage, make_frozen_stage
from clq.train.metrics import at_chance, average_accuracy, forgetting
from clq.train.norm import ADAPTIVE_NORMS, FIRST_EVENT_NORMS, AdaptiveNorm, make_adaptive_norm

__all__ = [
    "evaluate", "make_hits", "EvalLatents", "pad_eval_latents", "count_hits", "jit_count_hits", "Composition",
    "EventMetrics", "cross_entropy", "make_learning_event",
    "make_optimizer", "minibatch_composition", "set_learning_rate", "population_bn_stats", "train_first_event",
    "FrozenStage", "make_frozen_stage", "ReplayConfig", "TrainConfig", "run_continual", "average_accuracy",
    "forgetting", "at_chance", "configure_head", "ADAPTIVE_NORMS", "FIRST_EVENT_NORMS", "AdaptiveNorm",
    "make_adaptive_norm", "calibrate_frozen_stage", "folded_shapes", "restore_frozen_stage",
]

# The run driver (`clq.train.loop`) builds on `clq.learn`, whose learner builds on this package's pieces
# (event, norm, CWR*): its names load on first use, so that importing a piece does not import the driver.
_DRIVER = ("calibrate_frozen_stage", "folded_shapes", "restore_frozen_stage", "run_continual")


def __getattr__(name):
    if name in _DRIVER:
        from clq.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'clq.train' has no attribute {name!r}")
