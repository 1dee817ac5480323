"""Argument checks of the cost model, run before any compute.

Every check raises `ValueError` naming the argument, the config key it comes from in ``clq-cost``/``clq-run``
(in parentheses) and the allowed values. Bit-widths and the latent layer are checked by the package-wide
validators (`clq.quant.uniform.check_bits`, `clq.model.specs.validate_latent_layer`), so the cost model and
``clq-run`` accept and reject the same values with the same messages.
"""

from __future__ import annotations

from typing import Any

from clq.checks import check_int
from clq.model.specs import validate_latent_layer as check_latent_layer
from clq.quant.uniform import check_bits

__all__ = [
    "BACKWARD_ERROR_POLICIES",
    "check_backward_error",
    "check_bits",
    "check_count",
    "check_event",
    "check_latent_layer",
]

#: Which adaptive layers run the backward-error kernel (see `clq.cost.engine`).
#: ``all_but_first``: every adaptive layer above the lowest trainable one (the error below the lowest trainable
#: layer is never used, so it is not computed). ``none``: the paper's per-event accounting, which counts
#: forward + backward-gradient only (see docs/cost_model.md, "Calibration").
BACKWARD_ERROR_POLICIES = ("all_but_first", "none")


#: An integer >= minimum: the configs' own check (`clq.checks.check_int`).
check_count = check_int


def check_event(new_images: Any, buffer_size: Any, epochs: Any, batch_size: Any) -> None:
    check_count(new_images, "new_images (data.images_per_event)", 1)
    check_count(buffer_size, "buffer_size (replay.size)", 0)
    check_count(epochs, "epochs (train.epochs)", 1)
    check_count(batch_size, "batch_size (train.batch_size)", 1)


def check_backward_error(policy: Any) -> str:
    if policy not in BACKWARD_ERROR_POLICIES:
        raise ValueError(f"backward_error must be one of {list(BACKWARD_ERROR_POLICIES)}, got {policy!r}")
    return policy
