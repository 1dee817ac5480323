"""Cross-layer equalization and bias correction of the frozen stage (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction"), so that the paper's per-layer 8-bit weights hold on real
networks.

**Why.** Folding batch norm gives the channels of one layer weight ranges that differ by 10-100x (ImageNet
MobileNet-V1: conv2_1_dw from 0.17 to 32.9), and one per-layer scale then leaves most channels a handful of
levels (docs/quantization.md §6).

**Equalization.** For two consecutive layers i -> i+1 where channel c of i's output is channel c of i+1's
input (conv -> dw, dw -> pw, pw -> dw in MobileNet-V1), and a positive s_c,

    W_i[..., c] / s_c,  b_i[c] / s_c,  W_{i+1}[.., c, ..] * s_c

computes the same function, because ``relu(x / s) = relu(x) / s`` for s > 0. ReLU6 is not positively
homogeneous: ``min(max(x, 0), 6)`` of the rescaled channel must clip at ``6 / s_c``, so an equalized ReLU6 layer
carries a per-channel upper bound ``clip`` (float32 [C]) that `clq.model.forward.activation` applies and the
integer kernel applies as a per-channel output clamp (`LayerQuant.act_max` of shape (C,)). The choice
``s_c = sqrt(r_i[c] / r_{i+1}[c])`` with ``r`` the channel's max |w| gives both layers the range
``sqrt(r_i r_{i+1})``; every layer sits in two pairs (as output and as input side), so the pairs are swept
until the scales stop changing. Channels whose range is negligible (dead channels, max |w| ~ 1e-12 after
folding) keep s_c = 1: equalizing them would blow their bias up by 1/s_c. The latent layer's output is never
rescaled, so the latents (and the adaptive stage above them) are unchanged.

**Bias correction.** Quantization shifts each layer's mean output (Nagel et al.'s "biased error"); the
empirical correction measures, layer by layer on the calibration images, the mean pre-activation of the
quantized stage (dequantized weights and bias applied to the input codes the integer stage really produces)
against the FP32 network's, and adds the difference to the bias before it is quantized.

Both steps change only the FP32 parameters the quantizer reads, so the integer reference and the
fake-quantized forward stay bit-exact (tests/quant/test_equalize.py).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.model.forward import activation, linear_op
from clq.model.specs import LayerSpec
from clq.quant.frozen import INPUT_SCALE, dequantized_weights, frozen_codes

__all__ = ["equalize", "equalization_pairs", "bias_correction"]

#: A channel whose weight range is below this fraction of its layer's largest is left as it is.
_NEGLIGIBLE = 1e-6


def equalization_pairs(specs: Sequence[LayerSpec]) -> list[int]:
    """Indices i (into `specs`) of the pairs (i, i+1) that equalization rescales.

    A pair needs a conv/dw/pw layer i whose output channels feed a dw or pw layer i+1 channel for channel,
    with a ReLU or ReLU6 in between; the last layer of `specs` (the latent layer, or the one before the pool)
    is never on the output side, so the latents keep their scale.
    """
    pairs = []
    for i in range(len(specs) - 1):
        a, b = specs[i], specs[i + 1]
        if a.kind in ("conv", "dw", "pw") and b.kind in ("dw", "pw") and a.activation in ("relu", "relu6"):
            pairs.append(i)
    return pairs


def _out_range(spec: LayerSpec, w: np.ndarray) -> np.ndarray:
    """max |w| per output channel: [C_out]."""
    return np.abs(w).reshape(-1, spec.out_channels).max(axis=0)


def _in_range(spec: LayerSpec, w: np.ndarray) -> np.ndarray:
    """max |w| per input channel of a dw (K,K,1,C) or pw (C_in,C_out) layer: [C_in]."""
    if spec.kind == "dw":
        return np.abs(w).reshape(-1, spec.out_channels).max(axis=0)
    return np.abs(w).max(axis=1)


def _scale_in(spec: LayerSpec, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    return w * s if spec.kind == "dw" else w * s[:, None]  # dw (K,K,1,C): last axis; pw (C_in,C_out): first


def _prune_dead_channels(specs: Sequence[LayerSpec], ws: list, bs: list) -> None:
    """Zero, in place, weights that provably act on nothing, so that they do not set a per-layer range.

    After folding, some channels have weights of ~1e-12 (dead filters): their output is the constant
    ``act(b)``, which is 0 when the bias is <= 0. The weights a following layer applies to an always-zero
    input channel never matter (a depthwise filter on it outputs ``act(b)`` whatever its taps), yet they can
    be the largest of their layer (measured on the ImageNet MobileNet-V1: depthwise taps of 30 on dead
    channels against a median channel range of 0.8). Zeroing them changes no output.
    """
    zero_in = np.zeros(specs[0].in_channels, bool)  # the image has no dead channel
    for i, spec in enumerate(specs):
        if spec.kind == "pool" or ws[i] is None:
            continue  # a pool passes its input channels through: zero stays zero
        w = ws[i]
        if zero_in.any():
            if spec.kind == "pw":
                w[zero_in, :] = 0.0
            elif spec.kind == "dw":
                w[..., zero_in] = 0.0
            else:
                w[..., zero_in, :] = 0.0
        r = _out_range(spec, w)
        dead = r <= _NEGLIGIBLE * r.max()
        w[..., dead] = 0.0
        zero_in = dead & (bs[i] <= 0.0) if spec.activation in ("relu", "relu6") else np.zeros_like(dead)


def equalize(
    specs: Sequence[LayerSpec], params: Sequence[dict], iterations: int = 100, tol: float = 1e-4
) -> tuple[dict, ...]:
    """Cross-layer equalization of a folded frozen stage (see the module docstring).

    Args:
      specs: the frozen stage's layer specs (layers 0..l).
      params: its folded parameters ({'w', 'b'} per conv/dw/pw layer, {} for pooling).
      iterations: most sweeps over the pairs.
      tol: stop when every scale of a sweep is within a factor (1 +- tol) of 1.
    Returns:
      params': float32 parameters computing the same function (up to float rounding); every ReLU6 layer with
      weights gets 'clip' (float32 [C]), its per-channel upper bound.
    """
    specs = tuple(specs)
    ws = [None if "w" not in p else np.asarray(p["w"], np.float64).copy() for p in params]
    bs = [None if "b" not in p else np.asarray(p["b"], np.float64).copy() for p in params]
    clips = [np.full(s.out_channels, 6.0) if s.activation == "relu6" else None for s in specs]
    pairs = equalization_pairs(specs)
    _prune_dead_channels(specs, ws, bs)
    for _ in range(iterations):
        worst = 0.0
        for i in pairs:
            a, b = specs[i], specs[i + 1]
            r1, r2 = _out_range(a, ws[i]), _in_range(b, ws[i + 1])
            live = (r1 > _NEGLIGIBLE * r1.max()) & (r2 > _NEGLIGIBLE * r2.max())
            s = np.where(live, np.sqrt(np.where(live, r1, 1.0) / np.where(live, r2, 1.0)), 1.0)
            ws[i] = ws[i] / s
            bs[i] = bs[i] / s
            if clips[i] is not None:
                clips[i] = clips[i] / s
            ws[i + 1] = _scale_in(b, ws[i + 1], s)
            worst = max(worst, float(np.abs(np.log(s)).max()))
        if worst < np.log1p(tol):
            break
    out = []
    for spec, w, bias, clip in zip(specs, ws, bs, clips):
        p = {}
        if w is not None:
            p["w"] = w.astype(np.float32)
        if bias is not None:
            p["b"] = bias.astype(np.float32)
        if clip is not None and "w" in p:
            p["clip"] = clip.astype(np.float32)
        out.append(p)
    return tuple(out)


#: Calibration images bias correction keeps in memory (every layer's FP32 input and input codes for all of them).
BIAS_CORRECTION_IMAGES = 256


@functools.partial(jax.jit, static_argnums=0)
def _layer_means(spec, w, b, clip, wq, bq, x, q, q_scale):
    """One layer on a batch: sums over images and positions of the FP32 pre-activation and of the quantized
    pre-activation (dequantized weights and bias on the dequantized input codes), and the FP32 output."""
    y = linear_op(spec, w, x) + b
    y_q = linear_op(spec, wq, q.astype(jnp.float32) * q_scale) + bq
    return (jnp.sum(y.reshape(-1, y.shape[-1]), 0), jnp.sum(y_q.reshape(-1, y_q.shape[-1]), 0),
            activation(spec, y, clip))


def bias_correction(
    specs: Sequence[LayerSpec],
    params: Sequence[dict],
    quantize,
    pixels: np.ndarray,
    batch_size: int = 64,
) -> tuple[dict, ...]:
    """Biases corrected so that every quantized layer's mean pre-activation matches the FP32 network's.

    Quantizing shifts each output's mean by ``E[W~ x~ + b~] - E[W x + b]`` (W~, b~ the dequantized weights and
    bias, x~ the dequantized input codes the integer stage really produces, so upstream errors count too);
    the correction adds the difference to the FP32 bias before it is quantized, per output channel, measured
    over the calibration images and every position (padding included). Layer by layer: layer i is measured
    with layers 0..i-1 already corrected (correcting all at once overshoots, since every correction also
    moves the layers above it).

    Args:
      specs, params: the frozen stage (folded, possibly equalized): the FP32 reference.
      quantize: (i, params of layer i) -> its `LayerQuant` (the stage's quantizer, calibrated ranges fixed:
        `clq.quant.frozen.quantize_layer`).
      pixels: uint8 [N, H, W, C] calibration images (the first `BIAS_CORRECTION_IMAGES` are used).
      batch_size: images per compiled call.
    Returns:
      (params with every 'b' corrected (float32 [C]), their `LayerQuant` per layer).
    """
    specs = tuple(specs)
    layers = []
    corrected = [{k: np.asarray(v, np.float32) for k, v in p.items()} for p in params]
    pixels = np.asarray(pixels)[:BIAS_CORRECTION_IMAGES]
    x = pixels.astype(np.float32) * np.float32(INPUT_SCALE)  # FP32 inputs of the current layer
    q, q_scale = pixels, np.float32(INPUT_SCALE)  # its input codes (uint8) and their scale
    batches = range(0, len(pixels), batch_size)
    for i, spec in enumerate(specs):
        p = params[i]
        if "w" in p:
            lq = quantize(i, corrected[i])
            wq = jnp.asarray(dequantized_weights((lq,))[0], jnp.float32)
            bq = jnp.asarray(lq.b_codes * np.float64(lq.in_scale) * np.asarray(lq.w_scale, np.float64), jnp.float32)
            clip = p.get("clip", np.float32(6.0))
            ref = qt = 0.0
            outs = []
            with jax.default_matmul_precision("highest"):
                for s in batches:
                    r, t, o = _layer_means(spec, p["w"], p["b"], clip, wq, bq, x[s : s + batch_size],
                                           q[s : s + batch_size], q_scale)
                    ref, qt = ref + np.asarray(r, np.float64), qt + np.asarray(t, np.float64)
                    outs.append(np.asarray(o))
            positions = len(pixels) * spec.out_shape[0] * spec.out_shape[1]
            corrected[i]["b"] = (p["b"].astype(np.float64) + (ref - qt) / positions).astype(np.float32)
            x = np.concatenate(outs)
        else:
            x = x.mean(axis=(1, 2), keepdims=True)  # the pool: FP32 mean
        lq = quantize(i, corrected[i])
        layers.append(lq)
        # One program per layer shared by every calibration of the network (clq-quant-report calibrates one
        # stage per latent layer when it equalizes).
        q = np.concatenate([np.asarray(frozen_codes((spec,), (lq,), jnp.asarray(q[s : s + batch_size])))
                            for s in batches]).astype(np.uint8)
        q_scale = np.float32(lq.out_scale)
    return tuple(corrected), tuple(layers)
