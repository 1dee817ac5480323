"""Pure-function forward pass of a layer-spec list, with and without batch norm.

Parameters are a tuple aligned with the spec tuple, one dict per layer:

* BN form (training the whole network on the first experience): conv/dw/pw layers hold
  ``{'w', 'gamma', 'beta'}`` and a separate BN-statistics tuple holds ``{'mean', 'var'}``;
  the classifier holds ``{'w', 'b'}``; pooling holds ``{}``.
* Folded form (after the first experience): every layer with parameters holds ``{'w', 'b'}`` with the
  batch norm folded in, ``w' = w * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``.
  The frozen stage and the adaptive stage are slices of this tuple; gradients are only ever taken with
  respect to the adaptive slice.

Activations are NHWC float32. Padding is TF 'SAME' so that TF-slim ImageNet weights apply unchanged.
"""

from __future__ import annotations

import functools
import operator
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.model.native import depthwise_weight_grad_native, native_available
from clq.model.specs import LayerSpec

__all__ = [
    "BN_EPS",
    "init_params",
    "linear_op",
    "activation",
    "same_padding",
    "im2col",
    "im2col_taps",
    "depthwise_weight_grad",
    "forward_bn",
    "batch_norm_train",
    "forward_norm",
    "batch_renorm",
    "forward",
    "fold_batch_norm",
]

#: Batch-norm epsilon (TF-slim MobileNet-V1 uses 1e-3).
BN_EPS = 1e-3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def init_params(specs: Sequence[LayerSpec], key: jax.Array) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """He-normal initialised parameters in BN form, and unit BN statistics.

    Returns:
      (params, bn_stats): tuples aligned with `specs`. Weights float32 of `spec.weight_shape`;
      gamma/beta/mean/var float32 of shape (C_out,).
    """
    return _init_params(tuple(specs), key)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(specs: tuple[LayerSpec, ...], key: jax.Array):
    # Layer i's weights are `normal(split(key)[i], weight_shape)`. Drawn op by op, every weight shape compiled
    # its own threefry+normal program (~20 compilations, 5-10 s at the start of every run on the 2-core
    # machine); one vmapped draw of the longest size compiles once. With partitionable threefry (JAX's
    # default) element j of a draw depends only on (key, j), so the first prod(shape) values of the long draw
    # are exactly `normal(k, shape)` (checked in tests/model/test_forward.py).
    n_max = max((int(np.prod(s.weight_shape)) for s in specs if s.has_params), default=1)
    keys = jax.random.split(key, len(specs))
    draws = jax.vmap(lambda k: jax.random.normal(k, (n_max,), jnp.float32))(keys)
    params, stats = [], []
    for i, spec in enumerate(specs):
        if not spec.has_params:
            params.append({})
            stats.append({})
            continue
        shape = spec.weight_shape
        fan_in = int(np.prod(shape[:-1])) if spec.kind != "dw" else spec.kernel * spec.kernel
        w = draws[i, : int(np.prod(shape))].reshape(shape) * np.sqrt(2.0 / fan_in)
        c = spec.out_channels
        if spec.batch_norm:
            params.append({"w": w, "gamma": jnp.ones(c), "beta": jnp.zeros(c)})
            stats.append({"mean": jnp.zeros(c), "var": jnp.ones(c)})
        else:
            # The barrier keeps XLA from folding the two scalings into one (a different rounding than the
            # op-by-op form these weights have always had).
            params.append({"w": jax.lax.optimization_barrier(w) * np.sqrt(0.5), "b": jnp.zeros(c)})
            stats.append({})
    return tuple(params), tuple(stats)


def im2col_taps(x, kernel: int, stride: int, xp=jnp) -> Iterator:
    """The K*K shifted slices of an NHWC tensor under TF 'SAME' padding (zeros), for any array module `xp`.

    A generator, so that a consumer that uses each slice at once (`_depthwise`) traces slice, use, slice,
    use, ... as it always has.

    Args:
      x: [B, H, W, C].
    Yields:
      K*K arrays [B, H', W', C], ordered (kh, kw) like the rows of an HWIO weight.
    """
    _, h, w, _ = x.shape
    ph, pw = same_padding(h, kernel, stride), same_padding(w, kernel, stride)
    xp_ = xp.pad(x, ((0, 0), ph, pw, (0, 0)))
    ho, wo = -(-h // stride), -(-w // stride)
    for i in range(kernel):
        for j in range(kernel):
            yield xp_[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]


def im2col(x, kernel: int, stride: int, xp=jnp):
    """KxK patches of an NHWC tensor under TF 'SAME' padding (zeros), for any array module `xp`.

    Args:
      x: [B, H, W, C].
    Returns:
      [B, H', W', K*K*C], ordered (kh, kw, c) like the rows of an HWIO weight reshaped to (K*K*C, C_out).
    """
    return xp.concatenate(list(im2col_taps(x, kernel, stride, xp)), axis=-1)


def _depthwise_taps(x: jax.Array, w: jax.Array, stride: int, per_pixel: bool = False) -> jax.Array:
    """KxK depthwise conv as K*K shifted multiply-adds over the padded input (the forward pass of `_depthwise`).

    Each slice is multiplied as [B*H'*W', C] rows: at 2x2 and 1x1 resolution XLA cuts the slices of the
    padded input down to [B, 1, 1, C] pieces, and a reduction over axis 0 of such a piece is much slower on
    XLA's CPU backend (YNNPACK) than the same reduction over [B, C] rows (see `_linear_op_flat`). The values
    are the same: the multiply-adds are elementwise.

    per_pixel: compute an output grid of at most `PER_PIXEL_MAX_OUTPUTS` pixels pixel by pixel
      (`_depthwise_per_pixel`): faster there, with the same values where its callers use it.
    """
    k = w.shape[0]
    ho, wo = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    if per_pixel and ho * wo <= PER_PIXEL_MAX_OUTPUTS and x.shape[1] * x.shape[2] > 1:
        return _depthwise_per_pixel(x, w, stride, ho, wo)
    out = _sum_in_order(sl.reshape(-1, sl.shape[-1]) * w[t // k, t % k, 0]
                        for t, sl in enumerate(im2col_taps(x, k, stride)))
    return out.reshape(x.shape[0], ho, wo, x.shape[3])


def _sum_in_order(terms: Iterator[jax.Array]) -> jax.Array:
    """``((t0 + t1) + t2) + ...``: the depthwise forms' one summation order (their values depend on it)."""
    return functools.reduce(operator.add, terms)


#: Largest output grid (pixels) that `_depthwise_taps` computes pixel by pixel when asked (`_depthwise_per_pixel`).
PER_PIXEL_MAX_OUTPUTS = 4


def _depthwise_per_pixel(x: jax.Array, w: jax.Array, stride: int, ho: int, wo: int) -> jax.Array:
    """`_depthwise_taps` of a small output grid `ho` x `wo` (2x2, 4x4/2 -> 2x2, 2x2/2 -> 1x1): every output pixel as
    the K*K multiply-adds of [B, C] rows, in the order of the taps, with a zero row where a tap reads padding.

    These are the padded slices' IEEE operations in their order, zeros times the weight included, without the
    4-D pad, slices and reshapes that XLA's CPU backend runs slowly at 2x2 pixels: the conv with its bias and
    ReLU alone, B = 1000 and C = 256, 2.3-3.2x faster at 2x2 and 2.8-4x at 4x4/2 (at 1x1, where 8 of the 9
    taps read padding, the slices stay). Whether XLA rounds the result as it rounds the slices depends on what
    it fuses the conv with (where it contracts products into fused multiply-adds): in the learning step and the
    evaluation the values are the same bit for bit (`tests/model/test_forward.py`; the default experiment and
    the ImageNet preset end with the same numbers), and the integer frozen stage is exact in any order; in event
    0's programs (batch norm in training mode) and in calibration's FP32 pass they are not, so those keep the
    slices and their numbers.
    """
    k = w.shape[0]
    b, h, wd, c = x.shape
    (pt, _), (pl, _) = same_padding(h, k, stride), same_padding(wd, k, stride)
    zero = jnp.zeros((b, c), x.dtype)

    def row(p, q):  # input pixel (p, q) as [B, C] rows, zeros in the padding
        return x[:, p, q, :] if 0 <= p < h and 0 <= q < wd else zero

    pixels = [_sum_in_order(row(i * stride + t // k - pt, j * stride + t % k - pl) * w[t // k, t % k, 0]
                            for t in range(k * k))
              for i in range(ho) for j in range(wo)]
    return jnp.stack(pixels, axis=1).reshape(b, ho, wo, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x: jax.Array, w: jax.Array, stride: int, per_pixel: bool = False) -> jax.Array:
    """KxK depthwise conv: x [B, H, W, C], w [K, K, 1, C] -> [B, H', W', C] (TF 'SAME', `_depthwise_taps`).

    XLA's CPU backend runs a grouped convolution (`feature_group_count=C`) ~10x slower than shifted
    multiply-adds (../shared/reference/perf-notes.md). The backward pass is written out (`_depthwise_bwd`):
    autodiff of the shifted slices sums K*K zero-padded copies of the output gradient per input pixel, and XLA
    fuses them with the ops that produce that gradient, recomputing those K*K times; for stride 1 the input
    gradient is the same depthwise conv of the output gradient with the flipped kernel (measured in
    docs/performance.md, "What got the adaptive step there"); otherwise (strided) it is summed phase by phase
    (`_phase_transpose`). The weight gradient is clq's native CPU kernel where available
    (`depthwise_weight_grad`). `per_pixel`: see `_depthwise_taps` (forward pass and stride-1 input gradient).
    """
    return _depthwise_taps(x, w, stride, per_pixel)


def _depthwise_fwd(x, w, stride, per_pixel):
    return _depthwise_taps(x, w, stride, per_pixel), (x, w)


def _depthwise_bwd(stride, per_pixel, res, g):
    x, w = res
    k = w.shape[0]
    _, h, wd, _ = x.shape
    dw = depthwise_weight_grad(x, g, k, stride)  # one pass (native kernel) where available
    if stride == 1 and k % 2 == 1:
        # 'SAME' padding of an odd kernel at stride 1 is symmetric: the transpose is a correlation with the
        # kernel flipped in both spatial axes, under the same padding.
        return _depthwise_taps(g, w[::-1, ::-1], 1, per_pixel), dw
    return _phase_transpose(g, w, stride, h, wd), dw


def depthwise_weight_grad(x: jax.Array, g: jax.Array, k: int, stride: int) -> jax.Array:
    """Weight gradient of a KxK depthwise conv under TF 'SAME' padding.

    ``dw[kh, kw, 0, c] = sum_{b, i, j} x_pad[b, i*stride + kh, j*stride + kw, c] * g[b, i, j, c]``.

    Args:
      x: float32 [B, H, W, C], the conv's input; g: float32 [B, H', W', C], the gradient of its output.
      k: kernel size; stride: 1 or 2.
    Returns:
      float32 [K, K, 1, C]: clq's native CPU kernel where available (`clq.model.native`: one pass over x and g),
      else, and on other platforms, XLA's K*K products of [B*H'*W', C] rows and their sums. The same values up
      to float32 summation order.
    """
    c = x.shape[-1]

    def xla(x, g):
        g_rows = g.reshape(-1, c)
        taps = [jnp.sum(sl.reshape(-1, c) * g_rows, axis=0) for sl in im2col_taps(x, k, stride)]
        return jnp.stack(taps).reshape(k, k, 1, c)

    if not native_available():
        return xla(x, g)
    pad_top, pad_left = same_padding(x.shape[1], k, stride)[0], same_padding(x.shape[2], k, stride)[0]
    return jax.lax.platform_dependent(
        x, g, cpu=lambda x, g: depthwise_weight_grad_native(x, g, k, stride, pad_top, pad_left), default=xla)


def _shifted(a: jax.Array, d: int, size: int, axis: int) -> jax.Array:
    """``out[m] = a[m - d]`` along `axis` where ``0 <= m - d < a.shape[axis]``, else 0, for m in [0, size)."""
    start = max(-d, 0)
    a = jax.lax.slice_in_dim(a, start, max(min(a.shape[axis], size - d), start), axis=axis)
    lo = min(max(d, 0), size)
    pads = [(0, 0)] * a.ndim
    pads[axis] = (lo, size - lo - a.shape[axis])
    return jnp.pad(a, pads)


def _phase_transpose(g: jax.Array, w: jax.Array, stride: int, h: int, wd: int) -> jax.Array:
    """Input gradient [B, h, wd, C] of a depthwise conv (TF 'SAME') from its output gradient g [B, H', W', C],
    computed phase by phase.

    Tap (kh, kw) sends output pixel o to input pixel ``stride * o + kh - pad_top``: it reaches only the input
    pixels of phase ``((kh - pad_top) mod stride, ...)``, shifted by ``floor((kh - pad_top) / stride)``. So each
    phase sums only the taps that reach it (at stride 2 with a 3x3 kernel: 4, 2, 2 and 1 of them, 9 products
    per output pixel in all), and the phases interleave into the input grid. A scatter onto the padded input
    grid instead evaluates all K*K taps at every input pixel, most of them on zeros: event 0's whole-network
    step is ~0.87x as long this way (bench/profile_event0.py, ``previous``).
    """
    k, s = w.shape[0], stride
    (pt, _), (pl, _) = same_padding(h, k, s), same_padding(wd, k, s)
    rows, cols = [-(-(h - p) // s) for p in range(s)], [-(-(wd - p) // s) for p in range(s)]
    phases = {}
    for t in range(k * k):
        i, j = t // k, t % k
        (di, pi), (dj, pj) = divmod(i - pt, s), divmod(j - pl, s)
        term = _shifted(_shifted(g * w[i, j, 0], di, rows[pi], 1), dj, cols[pj], 2)
        phases[pi, pj] = phases[pi, pj] + term if (pi, pj) in phases else term
    b, c = g.shape[0], g.shape[-1]
    grid = [jnp.stack([jnp.pad(phases.get((pi, pj), jnp.zeros((b, rows[pi], cols[pj], c), g.dtype)),
                               ((0, 0), (0, rows[0] - rows[pi]), (0, cols[0] - cols[pj]), (0, 0)))
                       for pj in range(s)], axis=3) for pi in range(s)]
    dx = jnp.stack(grid, axis=2).reshape(b, rows[0] * s, cols[0] * s, c)  # [B, rows, s, cols, s, C]
    return dx[:, :h, :wd, :]


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _conv_im2col(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """KxK dense conv as one matmul over K*K shifted slices (im2col): [B,H',W',K*K*C_in] @ [K*K*C_in, C_out].

    Inside a `lax.scan` (every compiled training loop in clq) XLA's CPU backend runs the weight gradient of
    `lax.conv_general_dilated` ~40x slower than outside one (conv1 of MobileNet-V1 0.5/32 px, batch 64:
    38 ms vs 0.9 ms per step, bench/bench_e2e.py notes); the im2col form is a plain dot in both places
    (0.7 ms) and gives the same values up to float32 summation order.
    """
    k, c = w.shape[0], x.shape[-1]
    return _pixel_matmul(im2col(x, k, stride), w.reshape(k * k * c, -1))


@jax.custom_vjp
def _pixel_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """Every pixel's features times a matrix: x [B, H, W, K] @ w [K, D] -> [B, H, W, D] (pointwise convs, im2col).

    The backward pass is written out on [B*H*W, K] rows (`_pixel_matmul_bwd`). Autodiff of the 4-D einsum
    gives XLA's CPU backend a weight-gradient dot that contracts the batch and spatial axes of 4-D operands;
    its layout assignment then fuses a transpose of the output gradient into the kernel that produces it
    (batch norm's backward pass), which writes [D, B*H*W] with strided stores. On rows the dots read the
    gradient as it is: event 0's whole-network step takes 1/1.18 of the time on the default model and 1/1.48
    at 64 and 128 px, the adaptive step at l = 19 of the 128 px model 147 instead of 187 ms, with the same values
    (bench/profile_event0.py ``previous``, bench/bench_adaptive.py; docs/performance.md).
    """
    return jnp.einsum("bhwk,kd->bhwd", x, w)


def _pixel_matmul_fwd(x, w):
    return _pixel_matmul(x, w), (x, w)


def _pixel_matmul_bwd(res, g):
    x, w = res
    g_rows, x_rows = g.reshape(-1, w.shape[1]), x.reshape(-1, w.shape[0])
    return (g_rows @ w.T).reshape(x.shape), x_rows.T @ g_rows


_pixel_matmul.defvjp(_pixel_matmul_fwd, _pixel_matmul_bwd)


def linear_op(spec: LayerSpec, w: jax.Array | None, x: jax.Array, per_pixel: bool = False) -> jax.Array:
    """The linear part of a layer (no bias, no activation).

    Args:
      spec: the layer.
      w: weights of shape `spec.weight_shape` (ignored for pooling).
      x: input, float32 [B, H, W, C_in] (the classifier also accepts [B, C_in]).
      per_pixel: a depthwise layer with a small output grid is computed pixel by pixel (`_depthwise_per_pixel`):
        faster; the same values in the learning step and the evaluation (`forward`) and in integer arithmetic.
    Returns:
      float32 [B, H', W', C_out] (classifier: [B, num_classes]).
    """
    if x.ndim == 2 and spec.kind in ("dw", "pw", "pool"):
        return _linear_op_flat(spec, w, x)
    if spec.kind == "conv":
        return _conv_im2col(x, w, spec.stride)
    if spec.kind == "dw":
        return _depthwise(x, w, spec.stride, per_pixel)
    if spec.kind == "pw":
        return _pixel_matmul(x, w)
    if spec.kind == "pool":
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    if spec.kind == "linear":
        return x.reshape(x.shape[0], -1) @ w
    raise ValueError(f"unknown layer kind {spec.kind!r}")


def _linear_op_flat(spec: LayerSpec, w: jax.Array | None, x: jax.Array) -> jax.Array:
    """`linear_op` of a layer whose input is 1x1 spatially, on [B, C] rows instead of [B, 1, 1, C].

    Same values: a 1x1 depthwise conv under TF 'SAME' padding only ever reads its centre tap (the others
    multiply zero padding), the mean over one pixel is the pixel, and a pointwise conv is the same dot.
    Why: in the 4-D form the backward pass reduces [B, 1, 1, C] over axis 0 (bias and depthwise-weight
    gradients, batch-norm statistics), which XLA's CPU backend hands to a YNNPACK reduction far slower than
    the same reduction over [B, C] (`reduction_layouts_us` in bench/results/adaptive.json, written by
    bench/bench_adaptive.py).
    """
    if spec.kind == "pw":
        return x @ w
    if spec.kind == "dw":
        c = same_padding(1, w.shape[0], spec.stride)[0]
        return x * w[c, c, 0]
    return x  # pool over one pixel


def _maybe_flat(x: jax.Array) -> jax.Array:
    """[B, 1, 1, C] -> [B, C] (see `_linear_op_flat`); anything else unchanged."""
    return x.reshape(x.shape[0], x.shape[-1]) if x.ndim == 4 and x.shape[1:3] == (1, 1) else x


def _restore(specs: Sequence[LayerSpec], x: jax.Array) -> jax.Array:
    """The last layer's output in its spec shape [B, *out_shape] (flattened rows back to [B, 1, 1, C])."""
    last = specs[-1] if len(specs) else None
    if last is None or last.kind == "linear" or x.ndim == 4:
        return x
    return x.reshape(x.shape[0], *last.out_shape)


def activation(spec: LayerSpec, y: jax.Array, clip=None) -> jax.Array:
    """The layer's activation. `clip` (float32 [C], optional) replaces ReLU6's upper bound 6 per channel:
    cross-layer equalization (`clq.quant.equalize`) rescales channel c by 1/s_c, and ReLU6 then clips it at
    6/s_c, so the equalized network computes the same function."""
    if spec.activation == "relu":
        return jax.nn.relu(y)
    if spec.activation == "relu6":
        return jnp.clip(y, 0.0, 6.0 if clip is None else clip)
    return y


@jax.custom_vjp
def batch_norm_train(y: jax.Array, gamma: jax.Array, beta: jax.Array):
    """Batch norm in training mode over every axis of y [..., C] but the last.

    Returns:
      (normalized y [..., C], batch mean [C], batch variance [C]), float32.

    The backward pass is written out: with x_hat = (y - mean) / sigma, the input gradient is
    ``gamma / sigma * (g - mean(g) - x_hat * mean(g * x_hat))``, two reductions per layer, where autodiff of the
    forward pass reads the activations in more passes. Event 0's whole-network step is ~0.92x as long this way
    on the default model (bench/profile_event0.py, ``previous``). The cotangents of the returned statistics are
    added too, so the function is differentiable as a whole.
    """
    return _batch_norm_train_fwd(y, gamma, beta)[0]


def _batch_norm_train_fwd(y, gamma, beta):
    axes = tuple(range(y.ndim - 1))
    mean, var = jnp.mean(y, axis=axes), jnp.var(y, axis=axes)
    inv = jax.lax.rsqrt(var + BN_EPS)
    return ((y - mean) * (gamma * inv) + beta, mean, var), (y, mean, inv, gamma)


def _batch_norm_train_bwd(res, cts):
    y, mean, inv, gamma = res
    g, g_mean, g_var = cts
    axes = tuple(range(y.ndim - 1))
    n = y.size // y.shape[-1]
    x_hat = (y - mean) * inv
    d_beta, d_gamma = jnp.sum(g, axis=axes), jnp.sum(g * x_hat, axis=axes)
    dy = (gamma * inv / n) * (n * g - d_beta - x_hat * d_gamma)
    return dy + (g_mean + 2.0 * g_var * (y - mean)) / n, d_gamma, d_beta


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def forward_bn(
    specs: Sequence[LayerSpec],
    params: Sequence[dict],
    bn_stats: Sequence[dict],
    x: jax.Array,
    train: bool,
) -> tuple[jax.Array, tuple[dict, ...]]:
    """Forward pass in BN form.

    Args:
      train: use batch statistics (and return them) instead of `bn_stats`.
    Returns:
      (output of the last layer of `specs`, per-layer batch statistics {'mean','var'} ({} where no BN)).
    """
    batch_stats = []
    for spec, p, s in zip(specs, params, bn_stats):
        y = _maybe_flat(linear_op(spec, p.get("w"), _maybe_flat(x)))
        if spec.batch_norm:
            if train:
                y, mean, var = batch_norm_train(y, p["gamma"], p["beta"])
                batch_stats.append({"mean": mean, "var": var})
            else:
                batch_stats.append({})
                y = (y - s["mean"]) * (p["gamma"] * jax.lax.rsqrt(s["var"] + BN_EPS)) + p["beta"]
        else:
            if "b" in p:
                y = y + p["b"]
            batch_stats.append({})
        x = activation(spec, y)
    return _restore(specs, x), tuple(batch_stats)


def batch_renorm(y: jax.Array, running: dict, frozen: bool, momentum, r_max, d_max, eps: float = BN_EPS):
    """Batch renormalization (Ioffe 2017) of pre-BN activations, as AR1 trains; returns (x_hat, running').

    With running statistics mu, var, sigma = sqrt(var + eps) and the batch's m_B, v_B, s_B = sqrt(v_B + eps)
    (over all axes but channels):

        r = clip(s_B / sigma, 1/r_max, r_max),  d = clip((m_B - mu) / sigma, -d_max, d_max)   (no gradient)
        x_hat = (y - m_B) / s_B * r + d
        mu <- mu + momentum (m_B - mu),  var <- var + momentum (v_B - var)

    r_max = 1, d_max = 0 is plain batch norm in training mode. `frozen` uses the running statistics instead,
    ``x_hat = (y - mu) / sigma``, and leaves them unchanged (BN in inference mode). Avalanche's BatchRenorm2D
    keeps a running sigma instead of a running variance; at AR1's momenta the two differ by O(momentum^2).

    Args:
      y: float32 [..., C]; running: {'mean': [C], 'var': [C]} float32 (BN form statistics).
    """
    if frozen:
        return (y - running["mean"]) * jax.lax.rsqrt(running["var"] + eps), running
    axes = tuple(range(y.ndim - 1))
    m_b = jnp.mean(y, axis=axes)
    v_b = jnp.var(y, axis=axes)
    inv_sigma = jax.lax.rsqrt(running["var"] + eps)
    s_b = jnp.sqrt(v_b + eps)
    r = jax.lax.stop_gradient(jnp.clip(s_b * inv_sigma, 1.0 / r_max, r_max))
    d = jax.lax.stop_gradient(jnp.clip((m_b - running["mean"]) * inv_sigma, -d_max, d_max))
    x_hat = (y - m_b) / s_b * r + d
    upd = {"mean": running["mean"] + momentum * jax.lax.stop_gradient(m_b - running["mean"]),
           "var": running["var"] + momentum * jax.lax.stop_gradient(v_b - running["var"])}
    return x_hat, upd


def forward_norm(
    specs: Sequence[LayerSpec],
    params: Sequence[dict],
    running: Sequence[dict],
    x: jax.Array,
    frozen: Sequence[bool],
    momentum,
    r_max,
    d_max,
) -> tuple[jax.Array, tuple[dict, ...]]:
    """Forward pass in BN form with running statistics, each BN layer either frozen or renormalizing.

    This is the training forward of AR1 (Avalanche's BatchRenorm2D; Pellegrini et al. 2020) and, with
    r_max = 1, d_max = 0, of plain batch norm with running statistics (`batch_renorm`).

    Args:
      params: per layer {'w', 'gamma', 'beta'} (BN layers), {'w'[, 'b']} (classifier), {} (pool).
      running: per layer {'mean', 'var'} float32 [C_out] where BN follows, {} elsewhere (BN-form statistics;
        `fold_batch_norm` folds params with them).
      frozen: per layer, True = BN in inference mode with `running` (statistics neither used from the batch
        nor updated).
      momentum, r_max, d_max: float32 scalars (traced or not), see `batch_renorm`.
    Returns:
      (output of the last layer, updated running statistics aligned with `specs`).
    """
    out = []
    for spec, p, s, fz in zip(specs, params, running, frozen):
        y = _maybe_flat(linear_op(spec, p.get("w"), _maybe_flat(x)))
        if spec.batch_norm:
            y, s = batch_renorm(y, s, fz, momentum, r_max, d_max)
            y = y * p["gamma"] + p["beta"]
        elif "b" in p:
            y = y + p["b"]
        out.append(s)
        x = activation(spec, y)
    return _restore(specs, x), tuple(out)


def forward(specs: Sequence[LayerSpec], params: Sequence[dict], x: jax.Array, per_pixel: bool = False) -> jax.Array:
    """Forward pass in folded form (FP32): the output of the last layer of `specs`.

    Args:
      specs: a contiguous slice of the network (whole net, frozen stage or adaptive stage).
      params: folded parameters aligned with `specs`.
      x: float32 input of shape [B, *specs[0].in_shape].
      per_pixel: depthwise layers with a small output grid pixel by pixel (`_depthwise_taps`): the learning
        step and the evaluation, whose values it keeps bit for bit (tests/model/test_forward.py); elsewhere
        (calibration, whose fusions round it otherwise) the slices.
    """
    for spec, p in zip(specs, params):
        y = _maybe_flat(linear_op(spec, p.get("w"), _maybe_flat(x), per_pixel))
        if "b" in p:
            y = y + p["b"]
        x = activation(spec, y, p.get("clip"))
    return _restore(specs, x)


def fold_batch_norm(
    specs: Sequence[LayerSpec], params: Sequence[dict], bn_stats: Sequence[dict], eps: float = BN_EPS
) -> tuple[dict, ...]:
    """Fold BN into the preceding convolution: returns folded params ``{'w', 'b'}`` per layer."""
    return _fold_batch_norm(tuple(specs), tuple(params), tuple(bn_stats), eps)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _fold_batch_norm(specs, params, bn_stats, eps):
    # Jitted for the same reason as `init_params`: one compilation instead of one per op and shape.
    out = []
    for spec, p, s in zip(specs, params, bn_stats):
        if not spec.has_params:
            out.append({})
        elif spec.batch_norm:
            g = p["gamma"] * jax.lax.rsqrt(s["var"] + eps)  # [C_out], broadcasts over the last axis
            out.append({"w": p["w"] * g, "b": p["beta"] - s["mean"] * g})
        else:
            out.append({k: p[k] for k in ("w", "b") if k in p})  # a classifier may have no bias (AR1's)
    return tuple(out)
