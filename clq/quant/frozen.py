"""Post-training quantization of the frozen stage (paper.md §1) and its fake-quantized forward pass.

After the first experience the frozen stage (layers 0..l, batch norm folded) is quantized:

* weights per layer (paper) or per output channel, asymmetric ``S_w = (w_max - w_min) / (2^Q - 1)`` with an
  integer zero point (paper; codes are uint8), or symmetric ``S_w = max|w| / (2^(Q-1) - 1)`` (int8 codes);
* biases to int32 at scale ``S_in * S_w`` (the accumulator's scale), as integer MCU kernels need;
* activations unsigned with zero point 0 (they follow a ReLU/ReLU6), ``S_a = a_max / (2^Q - 1)`` with
  ``a_max`` calibrated on the first experience's training images: the max (paper), a percentile, or the
  MSE-optimal clipping value;
* the input image is uint8 and enters as codes with scale 1/255 (the network sees ``x = pixel / 255``);
* each layer's real multiplier ``M = S_in * S_w / S_out`` becomes an int32 fixed-point multiplier and a
  right shift (`clq.quant.requant`), and the activation becomes a clamp of the output codes
  (ReLU: ``[0, 2^Q-1]``; ReLU6: upper bound ``min(2^Q-1, round(6 / S_out))``).

`frozen_forward_codes` executes exactly the integer arithmetic of the device
(`clq.quant.integer.integer_forward` is the NumPy reference it is tested against, bit for bit) but in a
jittable JAX graph that runs at float32 GEMM speed:

* codes travel between layers as integer-valued float32; every product ``q_in * (q_w - z_w)`` is an
  integer of magnitude <= 255 * 255 and float32 represents every integer up to 2^24 exactly, so a float32
  dot product whose sum of absolute terms stays <= 2^24 is exact *in any summation order*. The reduction
  axis is split into chunks that respect that bound (computed from the actual weight codes; one chunk for
  most layers), each chunk's exact result is converted to int32 and the chunks are summed in int32;
* the int32 accumulator (+ int32 bias) is requantized with `requantize_jax`, which reproduces the 64-bit
  fixed-point rescaling with 32-bit integer operations;
* average pooling sums codes exactly and divides with round-half-up in int32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.checks import check_choice, check_flag, check_int, check_number
from clq.model.forward import forward, im2col, linear_op
from clq.model.specs import LayerSpec
from clq.programs import persistent_jit
from clq.quant.requant import quantize_multiplier, requantize_jax
from clq.quant.uniform import check_bits, code_range

__all__ = [
    "QuantConfig",
    "LayerQuant",
    "pool_layer_quant",
    "INPUT_SCALE",
    "EXACT_F32_LIMIT",
    "calibrate_activation_max",
    "activation_histograms",
    "quantize_frozen_stage",
    "quantize_layer",
    "input_scales",
    "dequantized_weights",
    "frozen_forward_codes",
    "frozen_codes",
    "frozen_forward_fp32",
    "exact_chunks",
    "LayerPlan",
    "frozen_stage_plan",
]

#: Scale of the network's input: uint8 pixels p enter as x = p / 255.
INPUT_SCALE = 1.0 / 255.0

#: float32 represents every integer of magnitude <= 2^24 exactly.
EXACT_F32_LIMIT = 2**24

WEIGHT_GRANULARITIES = ("per_layer", "per_channel")
WEIGHT_MODES = ("asymmetric", "symmetric")
ACTIVATION_RANGES = ("minmax", "percentile", "mse")

# Largest |bias code|: leaves half of the int32 range to the sum of products.
_BIAS_CODE_LIMIT = 2**30


@dataclass(frozen=True)
class QuantConfig:
    """Static choices of the frozen-stage quantization: the defaults are paper.md §1's scheme (8 bit, per-layer
    asymmetric weights, min/max activations) with cross-layer equalization before it, as conf/quant/int8.yaml;
    ``QuantConfig(equalize=False)`` is the paper's pipeline exactly.

    Fields:
      bits: Q of weights and activations, 2..8 (paper: 8).
      weight_granularity: 'per_layer' (paper) or 'per_channel' (one scale/zero point per output channel).
      weight_mode: 'asymmetric' (paper: S_w = (w_max - w_min)/(2^Q-1), integer zero point, uint8 codes) or
        'symmetric' (S_w = max|w|/(2^(Q-1)-1), zero point 0, narrow-range int8 codes).
      activation_range: how a_max is calibrated: 'minmax' (paper: the max over the calibration images),
        'percentile' (the `percentile`-th percentile of all calibration activations of the layer), or
        'mse' (the clipping value minimising the expected squared quantization + clipping error).
      percentile: in (50, 100], used by 'percentile'.
      histogram_bins: resolution of the activation histograms behind 'percentile' and 'mse'.
      equalize: cross-layer equalization before quantizing (`clq.quant.equalize`): makes per-layer weight
        scales hold on networks whose folded channels have very different ranges (on by default: without it some
        networks event 0 trains from scratch fall to chance level, docs/quantization.md).
      bias_correction: correct each layer's bias for the mean shift of its quantized weights, measured on the
        calibration images (`clq.quant.equalize.bias_correction`).
    """

    bits: int = 8
    weight_granularity: str = "per_layer"
    weight_mode: str = "asymmetric"
    activation_range: str = "minmax"
    percentile: float = 99.99
    histogram_bins: int = 2048
    equalize: bool = True
    bias_correction: bool = False

    def __post_init__(self):
        check_bits(self.bits, "quant.frozen_bits", lo=2, hi=8, allow_none=False)
        check_choice(self.weight_granularity, "quant.weight_granularity", WEIGHT_GRANULARITIES)
        check_choice(self.weight_mode, "quant.weight_mode", WEIGHT_MODES)
        check_choice(self.activation_range, "quant.activation_range", ACTIVATION_RANGES)
        check_number(self.percentile, "quant.percentile", 50.0, 100.0, lo_open=True)
        check_int(self.histogram_bins, "quant.histogram_bins", 64, 65536)
        for field in ("equalize", "bias_correction"):
            check_flag(getattr(self, field), f"quant.{field}")


class LayerQuant(NamedTuple):
    """Quantization of one frozen layer: everything the integer kernel of the device needs.

    Per-channel quantities have shape (C_out,) and broadcast over the last (output-channel) axis; per-layer
    ones are 0-d. Pooling layers have empty weights/bias and keep their input's scale.

    Fields:
      w_codes: int32 `spec.weight_shape` (empty for pooling): weight codes, 0..2^Q-1 (asymmetric) or
        -(2^(Q-1)-1)..2^(Q-1)-1 (symmetric).
      w_scale: float32 () or (C_out,), S_w.
      w_zero: int32 () or (C_out,), weight zero point z_w (0 when symmetric).
      b_codes: int32 (C_out,), bias codes at scale S_in * S_w (empty for pooling).
      in_scale: float32 (), scale of the input codes.
      out_scale: float32 (), S_a of the output codes (zero point 0, unsigned).
      multiplier: int32 () or (C_out,), fixed-point M0 in [2^30, 2^31) with S_in*S_w/S_out ~= M0 * 2^-shift.
      shift: int32 () or (C_out,), right shift 1..62 (0 for pooling).
      act_min: int32 (), lowest output code (0: ReLU).
      act_max: int32 () or (C_out,), highest output code (2^Q-1, lower for ReLU6 when 6 < a_max); per channel
        when cross-layer equalization gave ReLU6 a per-channel bound (`clq.quant.equalize`).
    """

    w_codes: np.ndarray
    w_scale: np.ndarray
    w_zero: np.ndarray
    b_codes: np.ndarray
    in_scale: np.ndarray
    out_scale: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    act_min: np.ndarray
    act_max: np.ndarray


def frozen_forward_fp32(specs: Sequence[LayerSpec], params: Sequence[dict], x: jax.Array) -> list[jax.Array]:
    """FP32 folded forward returning every layer's output (for calibration and error analysis).

    Args:
      x: float32 [B, H, W, C] in [0, 1].
    Returns:
      list of float32 [B, *spec.out_shape], one per spec.
    """
    outs = []
    for spec, p in zip(specs, params):
        x = forward((spec,), (p,), x)
        outs.append(x)
    return outs


# Module-level jitted helpers with the specs static and the parameters as arguments: one compilation per
# architecture and batch shape, shared by every calibration of that architecture.
@persistent_jit("frozen.layer_max", static_argnums=1)
def _layer_max(specs, params, x):
    return jnp.stack([jnp.max(o) for o in frozen_forward_fp32(specs, params, x)])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _layer_hist(specs, bins, params, x, amax):
    out = []
    for i, o in enumerate(frozen_forward_fp32(specs, params, x)):
        o = o.reshape(-1)
        idx = jnp.where(o > 0, jnp.clip((o * (bins / amax[i])).astype(jnp.int32), 0, bins - 1), bins)
        out.append(jnp.bincount(idx, length=bins + 1))
    return jnp.stack(out)


def activation_histograms(
    specs: Sequence[LayerSpec], params: Sequence[dict], batches: Sequence[np.ndarray], bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer maxima, zero counts and histograms of the FP32 activations over calibration batches.

    Two passes: the first finds each layer's max, the second histograms the positive values over
    ``(0, max]`` in `bins` equal bins (exact zeros, half of a ReLU output, are counted apart since they
    quantize without error).

    Args:
      batches: float32 [B, H, W, C] batches in [0, 1].
    Returns:
      (a_max float64 [L], zeros int64 [L], hist int64 [L, bins]).
    """
    specs, params = tuple(specs), tuple(params)
    with jax.default_matmul_precision("highest"):  # FP32 activations on accelerators too (no TF32)
        a_max = np.max([np.asarray(_layer_max(specs, params, jnp.asarray(xb))) for xb in batches], axis=0)
        a_max = np.maximum(a_max.astype(np.float64), 1e-8)
        amax32 = jnp.asarray(a_max, jnp.float32)
        counts = sum(np.asarray(_layer_hist(specs, bins, params, jnp.asarray(xb), amax32), np.int64) for xb in batches)
    return a_max, counts[:, bins], counts[:, :bins]


def _percentile_from_hist(a_max: float, zeros: int, hist: np.ndarray, q: float) -> float:
    """q-th percentile (0..100) of all values (zeros included), linear inside the histogram bin."""
    total = zeros + hist.sum()
    rank = q / 100.0 * total
    if rank <= zeros:
        return 0.0
    cum = zeros + np.cumsum(hist)
    b = int(np.searchsorted(cum, rank))
    b = min(b, len(hist) - 1)
    before = cum[b] - hist[b]
    frac = (rank - before) / max(hist[b], 1)
    return float(a_max * (b + frac) / len(hist))


def _rounding_error_integral(u: np.ndarray) -> np.ndarray:
    """``H(u) = integral_{-1/2}^{u} (v - round(v))^2 dv`` (the squared rounding error accumulated up to u)."""
    k = np.floor(u + 0.5)
    t = u - k  # in [-1/2, 1/2)
    return k / 12.0 + (t**3 + 0.125) / 3.0


def _mse_optimal_from_hist(a_max: float, hist: np.ndarray, bits: int) -> float:
    """Clipping value a minimising the expected squared quantization + clipping error over the histogram.

    Values are taken uniform inside each bin [l, r). Below the clip a (step ``s = a / (2^Q-1)``) a bin
    contributes its exact mean squared rounding error ``s^3 / (r - l) * (H(r/s) - H(l/s))`` (see
    `_rounding_error_integral`; this matters when most values sit in the first quantization steps), above it
    the clipping error ``((r-a)^3 - (l-a)^3) / (3 (r - l))``. Exact zeros contribute nothing. The candidates
    are bin edges: a coarse search over 128 of them, then every edge around the coarse optimum.

    Args:
      a_max: the largest value (upper edge of the last bin).
      hist: int [bins], counts of the positive values over (0, a_max].
      bits: Q.
    Returns:
      the MSE-optimal a (float, 0 < a <= a_max).
    """
    nb = len(hist)
    width = a_max / nb
    used = np.flatnonzero(hist)
    if used.size == 0:
        return float(a_max)
    n = hist[used].astype(np.float64)
    left, right = used * width, (used + 1) * width

    def mse(edge_idx: np.ndarray) -> np.ndarray:
        a = edge_idx[:, None] * width  # [A, 1]
        s = a / (2**bits - 1)
        inside = s**3 / width * (_rounding_error_integral(right / s) - _rounding_error_integral(left / s))
        clipped = ((right - a) ** 3 - (left - a) ** 3) / (3.0 * width)
        return np.sum(n * np.where(used[None, :] < edge_idx[:, None], inside, clipped), axis=1)

    step = max(nb // 128, 1)
    coarse = np.unique(np.append(np.arange(step, nb + 1, step), nb))
    best = int(coarse[np.argmin(mse(coarse))])
    fine = np.arange(max(best - step, 1), min(best + step, nb) + 1)
    return float(fine[np.argmin(mse(fine))] * width)


def calibrate_activation_max(
    specs: Sequence[LayerSpec], params: Sequence[dict], batches: Iterable[np.ndarray], config: QuantConfig
) -> np.ndarray:
    """a_max of every layer's output over the calibration images (the first experience).

    Args:
      specs, params: the frozen stage in folded form.
      batches: float32 image batches [B, H, W, C] in [0, 1] (iterated twice for 'percentile' and 'mse').
      config: `config.activation_range` picks the max (paper), the `config.percentile`-th percentile of all
        activations of the layer, or the MSE-optimal clipping value for `config.bits`.
    Returns:
      float32 [len(specs)], each > 0.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("calibration needs at least one batch of first-experience images")
    specs, params = tuple(specs), tuple(params)
    if config.activation_range == "minmax":
        # A short last batch is filled up with copies of its first image, which leave its maximum as it is: one
        # batch shape, one program to trace and load (the first experience is rarely a multiple of the batch).
        size = max(len(xb) for xb in batches)
        batches = [xb if len(xb) == size else np.concatenate([xb, np.repeat(xb[:1], size - len(xb), axis=0)])
                   for xb in batches]
        with jax.default_matmul_precision("highest"):  # FP32 activations on accelerators too (no TF32)
            per_batch = [np.asarray(_layer_max(specs, params, jnp.asarray(xb)), np.float64) for xb in batches]
        a_max = np.max(per_batch, axis=0)
    else:
        peak, zeros, hist = activation_histograms(specs, params, batches, config.histogram_bins)
        if config.activation_range == "percentile":
            a_max = [_percentile_from_hist(p, z, h, config.percentile) for p, z, h in zip(peak, zeros, hist)]
        else:
            a_max = [_mse_optimal_from_hist(p, h, config.bits) for p, h in zip(peak, hist)]
    return np.maximum(np.asarray(a_max, np.float64), 1e-8).astype(np.float32)


def _quantize_weights(w: np.ndarray, b: np.ndarray, in_scale: float, config: QuantConfig):
    """Weight codes, scale, zero point and int32 bias codes of one layer (see `LayerQuant`)."""
    per_channel = config.weight_granularity == "per_channel"
    axes = tuple(range(w.ndim - 1)) if per_channel else None
    bits = config.bits
    w64 = w.astype(np.float64)
    if config.weight_mode == "asymmetric":
        # The range always contains 0 so that the zero point is an exact integer code.
        w_min = np.minimum(w64.min(axis=axes), 0.0)
        w_max = np.maximum(w64.max(axis=axes), 0.0)
        scale = (w_max - w_min) / (2**bits - 1)
        lo, hi = code_range(bits)
    else:
        w_min = None
        scale = np.abs(w64).max(axis=axes) / (2 ** (bits - 1) - 1)
        lo, hi = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1  # narrow range: symmetric around 0
    # Floor the scale so that every bias code fits in +-2^30 (an all-zero channel would otherwise get a
    # zero scale and an unrepresentable bias); real layers never reach this floor.
    b_limit = np.abs(b.astype(np.float64)) / (in_scale * _BIAS_CODE_LIMIT)
    if not per_channel:
        b_limit = b_limit.max()
    scale = np.maximum(np.maximum(scale, b_limit), 1e-12).astype(np.float32)
    scale64 = scale.astype(np.float64)
    zero = np.round(-w_min / scale64) if w_min is not None else np.zeros_like(scale64)
    zero = np.clip(zero, lo, hi)
    codes = np.clip(np.round(w64 / scale64) + zero, lo, hi)
    b_codes = np.round(b.astype(np.float64) / (in_scale * scale64))
    b_codes = np.clip(b_codes, -_BIAS_CODE_LIMIT, _BIAS_CODE_LIMIT)
    return codes.astype(np.int32), scale, zero.astype(np.int32), b_codes.astype(np.int32)


def _act_max_code(spec: LayerSpec, out_scale: float, qmax: int, clip=None) -> np.ndarray:
    """int32 () (or (C,) with a per-channel ReLU6 bound `clip`): the code of the activation's upper bound."""
    if spec.activation == "relu6":
        bound = np.float64(6.0) if clip is None else np.asarray(clip, np.float64)
        code = np.minimum(qmax, np.floor(bound / np.float64(out_scale) + 0.5)).astype(np.int32)
        # One bound shared by every channel is stored 0-d, the paper's per-layer clamp.
        return np.int32(code.flat[0]) if code.size == 1 or np.all(code == code.flat[0]) else code
    return np.int32(qmax)


def pool_layer_quant(in_scale, out_scale, act_min, act_max) -> LayerQuant:
    """The `LayerQuant` of an average-pooling layer: no weights, bias, multiplier or shift, only its scales and
    output clamp (the integer kernel divides the code sum with rounding, `_pool_codes`)."""
    empty = np.zeros((0,), np.int32)
    return LayerQuant(empty, np.float32(1), np.int32(0), empty, in_scale, out_scale, np.int32(0), np.int32(0),
                      act_min, act_max)


def input_scales(specs: Sequence[LayerSpec], a_max: np.ndarray, bits: int) -> list[np.float32]:
    """The scale of each layer's input codes: the image's 1/255, then each weight layer's ``a_max / (2^Q - 1)``
    (a pooling layer keeps its input's scale)."""
    scales, s = [], np.float32(INPUT_SCALE)
    for spec, amax in zip(specs, a_max):
        scales.append(s)
        if spec.kind != "pool":
            s = np.float32(float(amax) / (2**bits - 1))
    return scales


def quantize_layer(spec: LayerSpec, p: dict, in_scale, amax, config: QuantConfig) -> LayerQuant:
    """One layer of `quantize_frozen_stage`: its `LayerQuant` given its input codes' scale and its a_max."""
    qmax = 2**config.bits - 1
    if spec.kind == "pool":
        # Averaging keeps the scale: the integer kernel divides the code sum with rounding.
        return pool_layer_quant(in_scale, in_scale, np.int32(0), np.int32(qmax))
    if spec.activation not in ("relu", "relu6"):
        raise ValueError(
            f"layer {spec.index} ({spec.name}) has activation {spec.activation!r}: a frozen layer must end "
            "in relu or relu6 so that its output codes are unsigned"
        )
    w_codes, w_scale, w_zero, b_codes = _quantize_weights(
        np.asarray(p["w"], np.float32), np.asarray(p["b"], np.float32), float(in_scale), config
    )
    out_scale = np.float32(float(amax) / qmax)
    m = np.float64(in_scale) * w_scale.astype(np.float64) / np.float64(out_scale)
    multiplier, shift = quantize_multiplier(m)
    act_max = _act_max_code(spec, out_scale, qmax, p.get("clip"))
    return LayerQuant(w_codes, w_scale, w_zero, b_codes, in_scale, out_scale, multiplier, shift, np.int32(0),
                      act_max)


def quantize_frozen_stage(
    specs: Sequence[LayerSpec], params: Sequence[dict], a_max: np.ndarray, config: QuantConfig
) -> tuple[LayerQuant, ...]:
    """Quantize the folded frozen-stage parameters with calibrated activation maxima.

    Args:
      specs, params: the frozen stage (layers 0..l) in folded form. Every layer with weights must end in a
        ReLU or ReLU6 (the frozen stage's activations are unsigned).
      a_max: float32 [len(specs)] from `calibrate_activation_max` (ignored for pooling, which keeps the
        scale of its input).
      config: the quantization choices.
    Returns:
      one `LayerQuant` per spec (`quantize_layer` of each).
    """
    if len(a_max) != len(specs):
        raise ValueError(f"a_max has {len(a_max)} entries for {len(specs)} layers")
    scales = input_scales(specs, a_max, config.bits)
    return tuple(quantize_layer(*a, config) for a in zip(specs, params, scales, a_max))


def dequantized_weights(layers: Sequence[LayerQuant]) -> list:
    """Per layer the float weights the integer kernel effectively applies, ``S_w (q_w - z_w)`` (float64, the
    layer's weight shape; None for pooling)."""
    out = []
    for lq in layers:
        if lq.w_codes.size == 0:
            out.append(None)
            continue
        out.append((lq.w_codes.astype(np.float64) - lq.w_zero) * np.asarray(lq.w_scale, np.float64))
    return out


def exact_chunks(w_eff, qmax_in: int) -> list[tuple[int, int]]:
    """Split the reduction axis of a [K, C_out] integer weight matrix into float32-exact chunks.

    A chunk [k0, k1) is exact in float32 when ``qmax_in * max_c sum_{k0<=k<k1} |w[k, c]| <= 2^24``
    (every partial sum is then an integer float32 represents). With concrete weights the chunks are as long
    as the actual codes allow (usually one chunk); traced weights get the worst case.

    Args:
      w_eff: int [K, C_out] effective weight codes ``q_w - z_w`` (NumPy, or a tracer).
      qmax_in: largest input code.
    Returns:
      list of (k0, k1) covering 0..K.
    """
    k = w_eff.shape[0]
    if isinstance(w_eff, jax.core.Tracer):
        per_term = qmax_in * 255  # |q_w - z_w| <= 255 for codes of <= 8 bits
        step = max(EXACT_F32_LIMIT // per_term, 1)
        return [(k0, min(k0 + step, k)) for k0 in range(0, k, step)]
    cum = np.concatenate([np.zeros((1, w_eff.shape[1]), np.int64), np.cumsum(np.abs(w_eff), axis=0, dtype=np.int64)])
    chunks, k0 = [], 0
    while k0 < k:
        worst = (cum[k0 + 1 :] - cum[k0]).max(axis=1) * qmax_in  # non-decreasing in k1
        k1 = k0 + max(int(np.searchsorted(worst, EXACT_F32_LIMIT, side="right")), 1)
        if (cum[k1] - cum[k0]).max() * qmax_in > EXACT_F32_LIMIT:
            raise ValueError("a single weight times the largest input code exceeds 2^24")
        chunks.append((k0, k1))
        k0 = k1
    return chunks


def _exact_matmul(x: jax.Array, w_eff, qmax_in: int, chunks=None) -> jax.Array:
    """int32 ``x @ w_eff`` for integer-valued float32 x [..., K] and integer w_eff [K, C], exactly (`chunks`:
    `exact_chunks` of the concrete weights, when `w_eff` is traced)."""
    xp = np if not isinstance(w_eff, jax.core.Tracer) else jnp
    acc = None
    for k0, k1 in (exact_chunks(w_eff, qmax_in) if chunks is None else chunks):
        wc = xp.asarray(w_eff[k0:k1]).astype(xp.float32)
        part = jnp.einsum("...k,kc->...c", x[..., k0:k1], wc, precision=jax.lax.Precision.HIGHEST)
        part = part.astype(jnp.int32)
        acc = part if acc is None else acc + part
    return acc


def _concrete(a):
    return a if isinstance(a, jax.core.Tracer) else np.asarray(a)


def _check_depthwise(spec: LayerSpec, bound) -> None:
    """A depthwise layer's largest accumulator `bound` must be exact in float32."""
    if bound > EXACT_F32_LIMIT:
        raise ValueError(f"layer {spec.index}: depthwise weights too large for an exact float32 accumulator")


def _accumulate(spec: LayerSpec, lq: LayerQuant, q: jax.Array, qmax_in: int, plan: "LayerPlan | None" = None):
    """int32 accumulator ``sum q_in (q_w - z_w) + q_b`` of a conv/dw/pw layer. q: float32 codes [B,H,W,C].
    `plan`: the layer's `LayerPlan`, which stands for its concrete weights when they are traced."""
    xp = jnp if isinstance(lq.w_codes, jax.core.Tracer) else np
    w_eff = _concrete(lq.w_codes).astype(xp.int32) - _concrete(lq.w_zero).astype(xp.int32)
    chunks = None if plan is None else plan.chunks
    if spec.kind == "dw":
        # K*K products per output (9 of <= 255 * 255 for 8-bit codes): far below 2^24, exact in any order (so also
        # pixel by pixel, the faster form at 2x2). A plan checked the concrete weights; traced ones without a plan
        # are checked for the worst case.
        if plan is None:
            _check_depthwise(spec, qmax_in * spec.kernel**2 * 255)
        acc = linear_op(spec, xp.asarray(w_eff).astype(xp.float32), q, per_pixel=True).astype(jnp.int32)
    elif spec.kind == "pw":
        acc = _exact_matmul(q, w_eff, qmax_in, chunks)
    elif spec.kind == "conv":
        patches = im2col(q, spec.kernel, spec.stride)
        acc = _exact_matmul(patches, w_eff.reshape(-1, spec.out_channels), qmax_in, chunks)
    else:
        raise ValueError(f"layer kind {spec.kind!r} cannot be in the frozen stage")
    return acc + jnp.asarray(lq.b_codes, jnp.int32)


def _pool_codes(spec: LayerSpec, q: jax.Array) -> jax.Array:
    """Integer average pool: ``(sum + N//2) // N`` over the window (global: all H*W positions)."""
    n = q.shape[1] * q.shape[2]
    if 255 * n > EXACT_F32_LIMIT:
        raise ValueError(f"layer {spec.index}: {n} pooled positions overflow an exact float32 sum")
    s = jnp.sum(q, axis=(1, 2), keepdims=True).astype(jnp.int32)  # <= 255 * H * W: exact in float32
    return (s + n // 2) // n


class LayerPlan(NamedTuple):
    """What `frozen_forward_codes` decides from a layer's concrete integers, so that the integers themselves can
    be arguments of the compiled program (`frozen_stage_plan`).

    Fields:
      chunks: `exact_chunks` of a conv/pw layer's weights (None otherwise).
      qmax_out: the largest code the layer outputs (the next layer's `qmax_in`).
      large_shifts: every requantization shift is > 32 (`requantize_jax`'s fast path).
    """

    chunks: tuple | None
    qmax_out: int
    large_shifts: bool


def frozen_stage_plan(specs: Sequence[LayerSpec], layers: Sequence[LayerQuant], bits: int = 8) -> tuple:
    """Per layer the `LayerPlan` of concrete `layers` (None for pooling), after checking that every accumulator is
    exact in float32: the decisions `frozen_forward_codes` makes for concrete layers. With it,
    ``frozen_forward_codes(specs, traced_layers, pixels, bits, plan=plan)`` computes bit for bit what it computes
    on the concrete layers, in a program that every network with the same plan shares: a new seed's frozen stage
    is no new program to compile."""
    qmax, qmax_in, plan = 2**bits - 1, 255, []
    for spec, lq in zip(specs, layers):
        if spec.kind == "pool":
            plan.append(None)
            continue
        w_eff = np.asarray(lq.w_codes).astype(np.int32) - np.asarray(lq.w_zero).astype(np.int32)
        if spec.kind == "dw":
            _check_depthwise(spec, qmax_in * np.abs(w_eff).reshape(-1, spec.out_channels).sum(0).max())
            chunks = None
        else:
            chunks = tuple(exact_chunks(w_eff.reshape(-1, spec.out_channels), qmax_in))
        qmax_out = int(np.minimum(np.asarray(lq.act_max), qmax).max())
        plan.append(LayerPlan(chunks, qmax_out, bool(np.all(np.asarray(lq.shift) > 32))))
        qmax_in = qmax_out
    return tuple(plan)


def frozen_forward_codes(
    specs: Sequence[LayerSpec],
    layers: Sequence[LayerQuant],
    pixels: jax.Array,
    bits: int = 8,
    return_all: bool = False,
    plan: Sequence[LayerPlan | None] | None = None,
):
    """Fake-quantized frozen stage: uint8 pixels -> output codes, bit-exact with the integer reference.

    Args:
      specs: the frozen stage's layer specs.
      layers: their `LayerQuant` (from `quantize_frozen_stage` or `clq.quant.export.load_frozen_stage`).
      pixels: uint8 [B, H, W, C] images (codes at scale `INPUT_SCALE`).
      bits: frozen-stage bits (the output codes are also clamped to 0..2^bits-1).
      return_all: return every layer's codes instead of the last one's.
      plan: `frozen_stage_plan(specs, concrete layers, bits)`, when `layers` are traced (without it, traced
        layers get worst-case chunks and the general requantization); concrete layers make their own.
    Returns:
      float32 [B, *specs[-1].out_shape] integer-valued codes in 0..2^bits-1 (multiply by
      ``layers[-1].out_scale`` for real values), or a list of those for every layer when `return_all`.
    """
    if plan is None and not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(tuple(layers))):
        plan = frozen_stage_plan(specs, layers, bits)  # one place decides, for concrete and traced layers alike
    qmax = 2**bits - 1
    q = pixels.astype(jnp.float32)
    qmax_in = 255  # uint8 pixels
    outs = []
    for i, (spec, lq) in enumerate(zip(specs, layers)):
        if spec.kind == "pool":
            codes = _pool_codes(spec, q)
        else:
            p = None if plan is None else plan[i]
            acc = _accumulate(spec, lq, q, qmax_in, p)
            if isinstance(lq.act_max, jax.core.Tracer):
                hi = jnp.minimum(lq.act_max, qmax)
            else:
                hi = np.minimum(np.asarray(lq.act_max), qmax).astype(np.int32)  # () or per channel (C,)
                hi = int(hi) if hi.ndim == 0 else hi
            qmax_in = qmax if p is None else p.qmax_out
            codes = requantize_jax(acc, _concrete(lq.multiplier), _concrete(lq.shift), hi,
                                   None if p is None else p.large_shifts)
        q = codes.astype(jnp.float32)
        outs.append(q)
    return outs if return_all else q


#: `frozen_forward_codes` compiled once per architecture (`specs`, a tuple), `bits`, `return_all` and `plan`, with the
#: layers' integers an argument: the frozen stage of every seed, each layer of a bias correction and every
#: calibration of the same network share a program, instead of compiling their integers as constants (then a new
#: program each time: ~1.2 s for the default model's frozen stage, ~0.35 s per layer op by op). Integer arithmetic:
#: the codes are those of the program with the integers as constants.
frozen_codes = jax.jit(frozen_forward_codes, static_argnames=("specs", "bits", "return_all", "plan"))
