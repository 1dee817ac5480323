"""MobileNet-V1 as a list of layer specs: the single source of truth for the network.

The forward pass (`clq.model.forward`), the frozen/adaptive split, quantization (`clq.quant`) and the
analytic cost model (`clq.cost`) all read the tuple returned by `mobilenet_v1_specs`. Nobody re-types
a layer table.

Numbering follows Ravaglia et al. 2021 (paper.md §2): flatten the sequential blocks, split every
depthwise-separable block into its depthwise (dw) and pointwise (pw) halves, so that conv1 is 0,
conv2_1 dw/pw are 1/2, ..., conv6 dw/pw are 25/26 and the global average pool is 27. The classifier
is appended with index 28 (`CLASSIFIER_INDEX`). "Layer l" means the *output* of layer l, so
`latent_layer=l` puts layers 0..l in the frozen stage and l+1..28 in the adaptive stage.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

__all__ = [
    "LayerSpec",
    "mobilenet_v1_specs",
    "split_specs",
    "validate_latent_layer",
    "CLASSIFIER_INDEX",
    "LAYER_KINDS",
    "num_params",
]

#: Paper index given to the final classifier (the paper numbers 0..27 and excludes it).
CLASSIFIER_INDEX = 28

#: Layer kinds and what they compute.
#: conv: KxK dense convolution; dw: KxK depthwise; pw: 1x1 convolution; pool: global average pool;
#: linear: fully connected classifier.
LAYER_KINDS = ("conv", "dw", "pw", "pool", "linear")


class LayerSpec(NamedTuple):
    """One layer of the network, everything a consumer needs to know statically.

    Attributes:
      index: paper index 0..27, or 28 for the classifier.
      name: TF-slim-style name, e.g. ``conv5_4_dw``.
      kind: one of `LAYER_KINDS`.
      kernel: spatial kernel size K (1 for pw/linear, the pooled window for pool).
      stride: spatial stride (TF 'SAME' padding).
      in_shape: (H, W, C) of the layer's input.
      out_shape: (H, W, C) of the layer's output.
      batch_norm: whether a BatchNorm follows the convolution (folded once frozen).
      activation: 'relu', 'relu6' or 'none'.
    """

    index: int
    name: str
    kind: str
    kernel: int
    stride: int
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    batch_norm: bool
    activation: str

    @property
    def in_channels(self) -> int:
        return self.in_shape[2]

    @property
    def out_channels(self) -> int:
        return self.out_shape[2]

    @property
    def out_elements(self) -> int:
        """Number of elements of the output tensor of one sample."""
        h, w, c = self.out_shape
        return h * w * c

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the weight tensor (HWIO for conv, HW1C for dw, IO for pw/linear, () for pool)."""
        k, cin, cout = self.kernel, self.in_channels, self.out_channels
        if self.kind == "conv":
            return (k, k, cin, cout)
        if self.kind == "dw":
            return (k, k, 1, cout)
        if self.kind in ("pw", "linear"):
            return (cin, cout)
        return ()

    @property
    def has_params(self) -> bool:
        return self.kind != "pool"

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass of one sample."""
        h, w, c = self.out_shape
        k, cin = self.kernel, self.in_channels
        if self.kind == "conv":
            return h * w * c * k * k * cin
        if self.kind == "dw":
            return h * w * c * k * k
        if self.kind in ("pw", "linear"):
            return h * w * c * cin
        return 0  # pool: additions only

    @property
    def params(self) -> int:
        """Trainable parameters (weights + bias; BN folded into the bias)."""
        if not self.has_params:
            return 0
        return math.prod(self.weight_shape) + self.out_channels


def _same_out(size: int, stride: int) -> int:
    return -(-size // stride)  # ceil: TF 'SAME' padding


# (kind, stride, output channels at width 1.0) for layers 1..26, i.e. the 13 dw/pw blocks.
_BLOCKS = (
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024),
)
_BLOCK_NAMES = (
    "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv4_1", "conv4_2",
    "conv5_1", "conv5_2", "conv5_3", "conv5_4", "conv5_5", "conv5_6", "conv6",
)


def _scaled(channels: int, width: float) -> int:
    return max(8, int(channels * width))


def mobilenet_v1_specs(
    width: float = 1.0,
    input_size: int = 128,
    num_classes: int = 50,
    in_channels: int = 3,
    activation: str = "relu",
) -> tuple[LayerSpec, ...]:
    """Layer specs of MobileNet-V1 with the paper's numbering 0..27 plus the classifier (28).

    Args:
      width: width multiplier alpha (1.0 in the paper; 0.25/0.5/0.75 for cheaper CPU runs). Channels are
        ``max(8, int(c * width))``.
      input_size: square input resolution (128 in the paper, 224 for ImageNet, 32 for the offline stream).
      num_classes: outputs of the classifier.
      in_channels: input image channels.
      activation: 'relu' (paper, from-scratch training) or 'relu6' (TF-slim ImageNet weights).

    Returns:
      29 `LayerSpec` with indices 0..28.
    """
    if not (0 < width <= 4):
        raise ValueError(f"model.width must be in (0, 4], got {width}")
    if input_size < 1:
        raise ValueError(f"model.input_size must be >= 1, got {input_size}")
    if num_classes < 2:
        raise ValueError(f"model.num_classes must be >= 2, got {num_classes}")
    if activation not in ("relu", "relu6"):
        raise ValueError(f"model.activation must be one of ['relu', 'relu6'], got {activation!r}")

    specs: list[LayerSpec] = []
    h = input_size
    c = _scaled(32, width)
    h_out = _same_out(h, 2)
    specs.append(
        LayerSpec(0, "conv1", "conv", 3, 2, (h, h, in_channels), (h_out, h_out, c), True, activation)
    )
    h = h_out
    for b, ((stride, cout), name) in enumerate(zip(_BLOCKS, _BLOCK_NAMES)):
        h_out = _same_out(h, stride)
        specs.append(
            LayerSpec(1 + 2 * b, f"{name}_dw", "dw", 3, stride, (h, h, c), (h_out, h_out, c), True, activation)
        )
        h = h_out
        cout = _scaled(cout, width)
        specs.append(LayerSpec(2 + 2 * b, f"{name}_pw", "pw", 1, 1, (h, h, c), (h, h, cout), True, activation))
        c = cout
    specs.append(LayerSpec(27, "pool6", "pool", h, 1, (h, h, c), (1, 1, c), False, "none"))
    specs.append(
        LayerSpec(CLASSIFIER_INDEX, "fc", "linear", 1, 1, (1, 1, c), (1, 1, num_classes), False, "none")
    )
    return tuple(specs)


def validate_latent_layer(specs: Sequence[LayerSpec], latent_layer: int) -> int:
    """Raise `ValueError` naming `latent_layer` unless 0 <= l <= 27 (the classifier must stay adaptive)."""
    last = len(specs) - 2
    if isinstance(latent_layer, bool) or not isinstance(latent_layer, int):
        raise ValueError(f"latent_layer must be an integer in 0..{last}, got {latent_layer!r}")
    if not 0 <= latent_layer <= last:
        raise ValueError(
            f"latent_layer must be in 0..{last} for this model (layer {last + 1} is the classifier, "
            f"which always trains), got {latent_layer}"
        )
    return latent_layer


def split_specs(
    specs: Sequence[LayerSpec], latent_layer: int
) -> tuple[tuple[LayerSpec, ...], tuple[LayerSpec, ...]]:
    """Split at the latent replay layer: frozen = layers 0..l, adaptive = layers l+1..end."""
    validate_latent_layer(specs, latent_layer)
    return tuple(specs[: latent_layer + 1]), tuple(specs[latent_layer + 1 :])


def num_params(specs: Sequence[LayerSpec]) -> int:
    """Total trainable parameters (BN folded) of the given layers."""
    return sum(s.params for s in specs)
