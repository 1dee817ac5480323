"""Integer-only reference executor of the quantized frozen stage (NumPy), as an MCU runs it.

Tensors are uint8 activation codes and int8/uint8 weight codes; every layer computes an int32 accumulator

    acc[c] = b[c] + sum_k q_in[k] * (q_w[k, c] - z_w[c])

(int32 NumPy matmuls and multiply-adds, which wrap like the device's 32-bit registers; the bound check in
`check_accumulator_bounds` proves they never need to), then requantizes it with the fixed-point multiplier
and shift (`clq.quant.requant.requantize`, 64-bit product, single rounding) and clamps to the activation's
code range (ReLU / ReLU6). Average pooling is ``(sum + N//2) // N`` over the window. Padding is TF 'SAME'
with code 0 (= real 0, the activations' zero point).

It takes exactly what `clq.quant.export.export_frozen_stage` writes (a tuple of `LayerQuant` plus the layer
specs) and no floating-point value at all: scales are only needed to interpret its output codes.
`clq.quant.frozen.frozen_forward_codes` must agree with it bit for bit (tests/quant/test_integer.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clq.model.specs import LayerSpec
from clq.model.forward import im2col, im2col_taps
from clq.quant.frozen import LayerQuant
from clq.quant.requant import requantize, requantize_double_rounding

__all__ = ["integer_forward", "integer_layer", "check_accumulator_bounds", "ROUNDINGS"]

#: Requantization variants: 'single' (TFLite/CMSIS-NN single rounding; what clq exports and emulates) and
#: 'double' (gemmlowp/TFLite default, for measuring the LSB differences between the two).
ROUNDINGS = {"single": requantize, "double": requantize_double_rounding}


def _effective_weights(lq: LayerQuant) -> np.ndarray:
    return lq.w_codes.astype(np.int32) - np.asarray(lq.w_zero, np.int32)


def _matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """int32 [..., K] @ int32 [K, C] -> int32 [..., C] as one 2-D integer GEMM."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def check_accumulator_bounds(specs: Sequence[LayerSpec], layers: Sequence[LayerQuant], qmax_in: int = 255) -> None:
    """Raise ValueError unless every layer's worst-case accumulator fits in int32.

    Worst case: ``qmax_in * max_c sum_k |q_w[k,c] - z_w[c]| + max_c |b[c]|`` with the previous layer's
    largest output code as `qmax_in`.
    """
    for spec, lq in zip(specs, layers):
        if spec.kind == "pool":
            continue
        w = np.abs(_effective_weights(lq).astype(np.int64)).reshape(-1, spec.out_channels)
        worst = qmax_in * w.sum(axis=0).max() + np.abs(lq.b_codes.astype(np.int64)).max()
        if worst >= 2**31:
            raise ValueError(f"layer {spec.index} ({spec.name}): accumulator may reach {worst} >= 2^31")
        qmax_in = int(np.max(lq.act_max))


def integer_layer(spec: LayerSpec, lq: LayerQuant, q: np.ndarray, rounding: str = "single") -> np.ndarray:
    """One integer layer.

    Args:
      spec: the layer (conv, dw, pw or pool).
      lq: its quantization.
      q: int32 [B, H, W, C_in] input codes.
      rounding: 'single' or 'double' (see `ROUNDINGS`).
    Returns:
      int32 [B, *spec.out_shape] output codes in act_min..act_max (act_max per layer or per channel).
    """
    if spec.kind == "pool":
        n = q.shape[1] * q.shape[2]
        s = q.sum(axis=(1, 2), keepdims=True, dtype=np.int32)
        return (s + n // 2) // n
    w = _effective_weights(lq)
    if spec.kind == "conv":
        acc = _matmul(im2col(q, spec.kernel, spec.stride, xp=np), w.reshape(-1, spec.out_channels))
    elif spec.kind == "pw":
        acc = _matmul(q, w)
    elif spec.kind == "dw":
        k = spec.kernel
        taps = list(im2col_taps(q, k, spec.stride, xp=np))  # K*K of [B, H', W', C], ordered (kh, kw)
        acc = np.zeros(taps[0].shape, np.int32)
        for t, tap in enumerate(taps):
            acc += tap * w[t // k, t % k, 0]
    else:
        raise ValueError(f"layer kind {spec.kind!r} cannot be in the frozen stage")
    acc = acc.astype(np.int32) + lq.b_codes.astype(np.int32)
    return ROUNDINGS[rounding](acc, lq.multiplier, lq.shift, int(lq.act_min), np.asarray(lq.act_max, np.int32))


def integer_forward(
    specs: Sequence[LayerSpec],
    layers: Sequence[LayerQuant],
    pixels: np.ndarray,
    return_all: bool = False,
    rounding: str = "single",
):
    """Run the quantized frozen stage on uint8 images with integer arithmetic only.

    Args:
      specs: the frozen stage's layer specs (layers 0..l).
      layers: their `LayerQuant`.
      pixels: uint8 [B, H, W, C] images.
      return_all: return every layer's output codes instead of the last one's.
      rounding: requantization variant, 'single' (default, what the export specifies) or 'double'.
    Returns:
      uint8 [B, *specs[-1].out_shape] output codes of layer l (real latent = codes * layers[-1].out_scale),
      or a list with every layer's codes.
    """
    if pixels.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8, got {pixels.dtype}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {list(ROUNDINGS)}, got {rounding!r}")
    check_accumulator_bounds(specs, layers)
    q = pixels.astype(np.int32)
    outs = []
    for spec, lq in zip(specs, layers):
        q = integer_layer(spec, lq, q, rounding)
        outs.append(q.astype(np.uint8))
    return outs if return_all else outs[-1]
