"""The network: layer specs (single source of truth), the pure forward pass, and its native CPU kernel."""

from clq.model.forward import (
    BN_EPS,
    batch_renorm,
    depthwise_weight_grad,
    fold_batch_norm,
    forward,
    forward_bn,
    forward_norm,
    init_params,
    linear_op,
)
from clq.model.native import native_available, use_native
from clq.model.specs import (
    CLASSIFIER_INDEX,
    LAYER_KINDS,
    LayerSpec,
    mobilenet_v1_specs,
    num_params,
    split_specs,
    validate_latent_layer,
)

__all__ = [
    "BN_EPS", "batch_renorm", "fold_batch_norm", "forward", "forward_bn", "forward_norm", "init_params", "linear_op",
    "depthwise_weight_grad", "native_available", "use_native",
    "CLASSIFIER_INDEX", "LAYER_KINDS", "LayerSpec", "mobilenet_v1_specs", "num_params", "split_specs", "validate_latent_layer",
]
