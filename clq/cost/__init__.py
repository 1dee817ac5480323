"""Analytic cost model of on-device continual learning with quantized latent replays (plain NumPy).

For any configuration (network specs, latent layer, LR bits, buffer size, learning event, target), where every
byte lives and where every cycle goes: memory per tensor and per tier with a placement that says whether the
configuration fits; forward / backward-error / backward-gradient MACs and cycles per adaptive layer with
kernel efficiencies, tiling and DMA bounds; the frozen stage's integer inference; latency and energy per
learning event; ratios between targets. The model is documented in `clq.cost.engine` and docs/cost_model.md;
targets are YAML files in conf/target/. Nothing here is traced by JAX.
"""

from clq.cost.engine import BOUNDS, Evaluation, evaluate, layer_arrays
from clq.cost.event import LearningEvent, learning_event
from clq.cost.grid import evaluate_grid
from clq.cost.report import cost_report, format_table, memory_bytes
from clq.cost.targets import KERNEL_PASSES, TIERS, Target, available_targets, load_target, target_from_dict
from clq.cost.validate import BACKWARD_ERROR_POLICIES

__all__ = [
    "BACKWARD_ERROR_POLICIES",
    "BOUNDS",
    "Evaluation",
    "KERNEL_PASSES",
    "LearningEvent",
    "TIERS",
    "Target",
    "available_targets",
    "cost_report",
    "evaluate",
    "evaluate_grid",
    "format_table",
    "layer_arrays",
    "learning_event",
    "load_target",
    "memory_bytes",
    "target_from_dict",
]
