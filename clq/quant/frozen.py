"""Post-training quantization of the frozen stage (paper.md §1) and its fake-quantized forward pass.

After the first experience the frozen stage (layers 0..l, batch norm folded) is quantized:

* weights per layer (or per output channel), asymmetric ``S_w = (w_max - w_min) / (2^Q - 1)`` with an
  integer zero point (paper), or symmetric ``S_w = max|w| / (2^(Q-1) - 1)``;
* biases to int32 at scale ``S_in * S_w`` (the accumulator's scale), as integer MCU kernels need;
* activations unsigned after ReLU, ``S_a = a_max / (2^Q - 1)`` with ``a_max`` calibrated on the first
  experience's training images (max, or a percentile to clip outliers);
* the input image is uint8 and enters as codes with scale 1/255 (the network sees ``x = pixel / 255``).

The fake-quantized forward works on integer codes held in float32: each layer computes the integer
accumulator ``acc = sum (q_in)(q_w - z_w) + q_b``, rescales it by ``S_in * S_w / S_out``, rounds and clips
to 0..2^Q-1. The output of layer l is the uint8 latent plus its FP32 scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.model.forward import activation, linear_op
from clq.model.specs import LayerSpec
from clq.quant.uniform import check_bits, code_range

__all__ = [
    "QuantConfig",
    "LayerQuant",
    "INPUT_SCALE",
    "calibrate_activation_max",
    "quantize_frozen_stage",
    "frozen_forward_codes",
    "frozen_forward_fp32",
]

#: Scale of the network's input: uint8 pixels p enter as x = p / 255.
INPUT_SCALE = 1.0 / 255.0

WEIGHT_GRANULARITIES = ("per_layer", "per_channel")
WEIGHT_MODES = ("asymmetric", "symmetric")
ACTIVATION_RANGES = ("minmax", "percentile")


@dataclass(frozen=True)
class QuantConfig:
    """Static choices of the frozen-stage quantization (defaults reproduce paper.md §1)."""

    bits: int = 8
    weight_granularity: str = "per_layer"
    weight_mode: str = "asymmetric"
    activation_range: str = "minmax"
    percentile: float = 99.99

    def __post_init__(self):
        check_bits(self.bits, "quant.frozen_bits", lo=2, hi=8, allow_none=False)
        for field, value, allowed in (
            ("quant.weight_granularity", self.weight_granularity, WEIGHT_GRANULARITIES),
            ("quant.weight_mode", self.weight_mode, WEIGHT_MODES),
            ("quant.activation_range", self.activation_range, ACTIVATION_RANGES),
        ):
            if value not in allowed:
                raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"quant.percentile must be in (50, 100], got {self.percentile}")


class LayerQuant(NamedTuple):
    """Quantization of one frozen layer. Scales broadcast over the output-channel (last) axis.

    Fields:
      w_codes: int32 `spec.weight_shape` (empty for pooling), weight codes.
      w_scale: float32 () or (C_out,), S_w.
      w_zero: int32 () or (C_out,), weight zero point z_w.
      b_codes: int32 (C_out,), bias at scale S_in * S_w (empty for pooling).
      in_scale: float32 (), scale of the input codes.
      out_scale: float32 (), S_a of the output codes (zero point 0, unsigned).
    """

    w_codes: np.ndarray
    w_scale: np.ndarray
    w_zero: np.ndarray
    b_codes: np.ndarray
    in_scale: np.ndarray
    out_scale: np.ndarray


def frozen_forward_fp32(specs: Sequence[LayerSpec], params: Sequence[dict], x: jax.Array) -> list[jax.Array]:
    """FP32 folded forward returning every layer's output (for calibration). x: float32 [B,H,W,C]."""
    outs = []
    for spec, p in zip(specs, params):
        y = linear_op(spec, p.get("w"), x)
        if "b" in p:
            y = y + p["b"]
        x = activation(spec, y)
        outs.append(x)
    return outs


def calibrate_activation_max(
    specs: Sequence[LayerSpec], params: Sequence[dict], batches: Iterable[np.ndarray], config: QuantConfig
) -> np.ndarray:
    """a_max of every layer's output over the calibration images (the first experience).

    Args:
      batches: float32 image batches [B, H, W, C] in [0, 1].
    Returns:
      float32 [len(specs)]: the max (minmax) or the mean over batches of the per-batch percentile.
    """
    fwd = jax.jit(lambda x: frozen_forward_fp32(specs, params, x))
    per_batch = []
    for xb in batches:
        outs = fwd(jnp.asarray(xb))
        if config.activation_range == "minmax":
            per_batch.append([float(jnp.max(o)) for o in outs])
        else:
            per_batch.append([float(jnp.percentile(o, config.percentile)) for o in outs])
    if not per_batch:
        raise ValueError("calibration needs at least one batch of first-experience images")
    arr = np.asarray(per_batch, np.float64)
    a_max = arr.max(0) if config.activation_range == "minmax" else arr.mean(0)
    return np.maximum(a_max, 1e-8).astype(np.float32)


def _quantize_weights(w: np.ndarray, config: QuantConfig):
    axes = tuple(range(w.ndim - 1)) if config.weight_granularity == "per_channel" else None
    bits = config.bits
    if config.weight_mode == "asymmetric":
        # Range always contains 0 so that the zero point is an exact integer code.
        w_min = np.minimum(w.min(axis=axes), 0.0)
        w_max = np.maximum(w.max(axis=axes), 0.0)
        scale = np.maximum((w_max - w_min) / (2**bits - 1), 1e-12)
        zero = np.round(-w_min / scale)
        lo, hi = code_range(bits)
    else:
        scale = np.maximum(np.abs(w).max(axis=axes) / (2 ** (bits - 1) - 1), 1e-12)
        zero = np.zeros_like(scale)
        lo, hi = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1  # narrow range: symmetric around 0
    codes = np.clip(np.round(w / scale) + zero, lo, hi)
    return codes.astype(np.int32), scale.astype(np.float32), zero.astype(np.int32)


def quantize_frozen_stage(
    specs: Sequence[LayerSpec], params: Sequence[dict], a_max: np.ndarray, config: QuantConfig
) -> tuple[LayerQuant, ...]:
    """Quantize the folded frozen-stage parameters with calibrated activation maxima.

    Args:
      specs, params: the frozen stage (layers 0..l) in folded form.
      a_max: float32 [len(specs)] from `calibrate_activation_max`.
    """
    qmax = 2**config.bits - 1
    in_scale = np.float32(INPUT_SCALE)
    layers = []
    for spec, p, amax in zip(specs, params, a_max):
        if spec.kind == "pool":
            # Averaging keeps the scale: the integer kernel divides the code sum with rounding.
            empty = np.zeros((0,), np.int32)
            layers.append(LayerQuant(empty, np.float32(1), np.int32(0), empty, in_scale, in_scale))
            continue
        w_codes, w_scale, w_zero = _quantize_weights(np.asarray(p["w"], np.float32), config)
        b_codes = np.round(np.asarray(p["b"], np.float64) / (in_scale * w_scale)).astype(np.int32)
        out_scale = np.float32(amax / qmax)
        layers.append(LayerQuant(w_codes, w_scale, w_zero, b_codes, in_scale, out_scale))
        in_scale = out_scale
    return tuple(layers)


def frozen_forward_codes(
    specs: Sequence[LayerSpec], layers: Sequence[LayerQuant], pixels: jax.Array, bits: int = 8
) -> jax.Array:
    """Fake-quantized frozen stage: uint8 pixels -> output codes of the last layer.

    Args:
      pixels: uint8 [B, H, W, C] images.
    Returns:
      float32 [B, *specs[-1].out_shape] integer-valued codes in 0..2^bits-1; multiply by
      ``layers[-1].out_scale`` for real values.
    """
    qmax = 2**bits - 1
    q = pixels.astype(jnp.float32)
    for spec, lq in zip(specs, layers):
        if spec.kind == "pool":
            q = jnp.round(linear_op(spec, None, q))
            continue
        w = lq.w_codes.astype(np.float32) - lq.w_zero.astype(np.float32)
        acc = linear_op(spec, jnp.asarray(w), q) + lq.b_codes.astype(np.float32)
        # Requantize the accumulator: M = S_in * S_w / S_out; the clip at 0 is the ReLU, and the clip at
        # qmax is ReLU6 too when a_max <= 6 (calibrated on ReLU6-clipped activations).
        m = (lq.in_scale * lq.w_scale / lq.out_scale).astype(np.float32)
        q = jnp.clip(jnp.round(acc * m), 0, qmax)
    return q
