"""The frozen stage as a batched, jitted image -> latent executor (FP32 or fake-quantized 8-bit), and the check
that its quantization did not break event 0's network."""

from __future__ import annotations

import functools
from typing import Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.batching import padded_batches
from clq.model.forward import forward
from clq.model.specs import LayerSpec
from clq.programs import persistent, persistent_jit
from clq.quant.frozen import (
    INPUT_SCALE,
    QuantConfig,
    calibrate_activation_max,
    frozen_codes,
    frozen_stage_plan,
)
from clq.quant.ptq import calibrate_and_quantize

__all__ = ["FrozenStage", "make_frozen_stage", "latents_ahead", "check_quantization", "QUANT_DROP_WARN",
           "AHEAD_BYTES"]

#: Accuracy on the first experience that the quantized frozen stage may lose against FP32 before the run warns
#: (0.10 = 10 points). A healthy 8-bit stage loses well under a point there; a broken one falls towards chance.
QUANT_DROP_WARN = 0.10


class FrozenStage(NamedTuple):
    """A frozen stage ready to produce latents.

    Fields:
      latents(pixels uint8 [N,H,W,C]) -> codes [N, *latent_shape]: uint8 codes (quantized stage) or float32
        values (FP32 stage); real latents are ``codes * scale``.
      scale: float32 scalar, the latent's scale (1.0 for FP32).
      a_max: float, calibrated maximum of the latent layer's output (sets the LR codec's range).
      layers: the per-layer quantization (empty tuple for FP32).
      config: the quantization choices it was built with (None for FP32); `bits` is its ``bits``.
    """

    latents: object
    scale: np.float32
    a_max: float
    layers: tuple
    config: QuantConfig | None

    @property
    def bits(self) -> int | None:
        """Frozen-stage bits, or None for FP32."""
        return None if self.config is None else self.config.bits


def make_frozen_stage(
    frozen_specs: Sequence[LayerSpec],
    frozen_params: Sequence[dict],
    calibration_images: np.ndarray,
    config: QuantConfig | None,
    batch_size: int = 256,
) -> FrozenStage:
    """Calibrate (on the first experience) and build the frozen stage.

    Args:
      calibration_images: uint8 [N,H,W,C], the first experience's training images.
      config: quantization choices, or None for an FP32 frozen stage.
      batch_size: images per compiled call; the last batch is padded so one shape compiles once.
    """
    cal = [calibration_images[i : i + batch_size].astype(np.float32) * INPUT_SCALE
           for i in range(0, len(calibration_images), batch_size)]
    if config is None:
        a_max = float(calibrate_activation_max(frozen_specs, frozen_params, cal, QuantConfig())[-1])
        fn = jax.jit(lambda px: forward(frozen_specs, frozen_params, px.astype(jnp.float32) * INPUT_SCALE))
        layers, scale, out_dtype = (), np.float32(1.0), np.float32
    else:
        layers, _, _ = calibrate_and_quantize(frozen_specs, frozen_params, cal, config)
        # The layers' integers are arguments and what they decide is a static plan: as constants they made every
        # seed's frozen stage a new program to compile (~1.2 s on the default model).
        plan = frozen_stage_plan(frozen_specs, layers, config.bits)
        fn = functools.partial(_codes_program(tuple(frozen_specs), config.bits, plan), jax.device_put(tuple(layers)))
        scale, out_dtype = np.float32(layers[-1].out_scale), np.uint8
        # The LR codec must see the range the codes really span, so that lr_bits == frozen bits keeps the
        # frozen stage's codes unchanged (the pool layer inherits its input's scale).
        a_max = float(scale) * (2**config.bits - 1)

    def latents(pixels: np.ndarray) -> np.ndarray:
        return _batched(fn, pixels, frozen_specs[-1].out_shape, out_dtype, batch_size)

    return FrozenStage(latents, scale, a_max, tuple(layers), config)


@functools.lru_cache(maxsize=8)
def _codes_program(specs: tuple[LayerSpec, ...], bits: int, plan) -> Callable:
    """``fn(layers, pixels) -> codes``: the quantized frozen stage `frozen_codes` of one architecture, bit-width and
    plan, kept on disk traced (`clq.programs`)."""
    return persistent(jax.jit(functools.partial(frozen_codes, specs, bits=bits, plan=plan)), "frozen.codes",
                      (specs, bits, plan))


#: Bytes of pixels and codes that `latents_ahead` holds for one call of the frozen stage: the default
#: experiment's 75 learning events (25,500 images of 3,072 bytes, latents of 1,024) are one call; a CORe50 stream
#: at 128 px (49,152 bytes an image) takes about nine of its 300-image events per call.
AHEAD_BYTES = 128 << 20


def latents_ahead(latents: Callable[[np.ndarray], np.ndarray], images, experiences: Sequence[np.ndarray],
                  latent_bytes: int, budget: int = AHEAD_BYTES) -> Iterator[np.ndarray]:
    """The latents of `experiences`, one array per experience in order, computed ahead in large calls.

    The frozen stage is fixed after event 0, so the latents of later events can be computed before they arrive.
    One call per event wasted most of its work on padding: 300 images are two padded batches of 256, 512 images
    computed for 300. A call for a run of consecutive events fills every batch but the last, and holds
    `budget` bytes of decoded pixels and codes at most (at least one event), so memory stays bounded on long
    streams and lazily decoded images (CORe50) are decoded one window of events at a time.

    The codes are those of one call per event, bit for bit: every batch has the same compiled shape, and the
    quantized stage computes each image on its own in exact integer arithmetic (an FP32 stage too: no
    operation mixes the images of a batch).

    Args:
      latents: `FrozenStage.latents` (maybe wrapped by the latent cache): pixels -> codes [N, *latent_shape].
      images: the stream's images [N, H, W, C], indexable by an int array (`Stream.train_images`, maybe lazily
        decoded; its ``shape`` and ``dtype`` give the bytes of one decoded image).
      experiences: int arrays of image indices, one per event.
      latent_bytes: bytes of one image's codes.
      budget: bytes of pixels and codes one call may hold.
    Yields:
      codes [len(experiences[i]), *latent_shape] for i = 0, 1, ...
    """
    row_bytes = int(np.prod(images.shape[1:])) * np.dtype(images.dtype).itemsize + latent_bytes
    i, n = 0, len(experiences)
    while i < n:
        j, count = i + 1, len(experiences[i])
        while j < n and (count + len(experiences[j])) * row_bytes <= budget:
            count += len(experiences[j])
            j += 1
        codes = latents(images[np.concatenate(experiences[i:j])])
        s = 0
        for e in experiences[i:j]:
            yield codes[s : s + len(e)]
            s += len(e)
        i = j


def _batched(fn, pixels: np.ndarray, out_shape, out_dtype, batch_size: int) -> np.ndarray:
    """`fn` over `pixels` in padded batches of `batch_size` (one compiled shape), as [N, *out_shape] `out_dtype`."""
    out = np.empty((len(pixels), *out_shape), out_dtype)
    for s, chunk, m in padded_batches(pixels, batch_size):
        out[s : s + m] = np.asarray(fn(jnp.asarray(chunk)))[:m].astype(out_dtype)
    return out


@persistent_jit("frozen.top1", static_argnums=1)
def _top1(specs, params, x, scale):
    """Predicted class [B] of the folded layers `specs` (FP32) on inputs ``x * scale`` (uint8 pixels or codes)."""
    return jnp.argmax(forward(specs, params, x.astype(jnp.float32) * scale).reshape(x.shape[0], -1), axis=-1)


def _accuracy(specs, params, inputs: np.ndarray, scale, labels: np.ndarray, batch_size: int) -> float:
    """Top-1 accuracy of the folded layers `specs` on `inputs` * `scale`, in padded batches. The parameters are
    arguments of one compiled program, not constants in it, so the compilation cache serves every run."""
    params, scale = tuple(params), jnp.float32(scale)
    preds = _batched(lambda x: _top1(tuple(specs), params, x, scale), inputs, (), np.int32, batch_size)
    return float(np.mean(preds == labels))


def check_quantization(
    specs: Sequence[LayerSpec], latent_layer: int, folded: Sequence[dict], frozen: FrozenStage, images: np.ndarray,
    labels: np.ndarray, codes: np.ndarray | None = None, batch_size: int = 256,
) -> tuple[dict | None, str | None]:
    """What quantizing the frozen stage cost event 0's network, on the first experience's training images.

    Per-layer 8-bit weights (the paper's) do not hold up on every network event 0 can produce: one channel with
    a wide folded range takes the layer's whole scale, and the network can fall to chance level before any
    learning event (docs/quantization.md, "When quantization breaks event 0's network"). The run measures that
    drop once, right after quantizing (two forward passes over the first experience, ~0.1 s on the default
    experiment), instead of leaving it to show as a diverged learning event.

    Args:
      folded: the whole network's folded parameters (event 0's network); `frozen`: its layers 0..latent_layer.
      images: uint8 [N,H,W,C] and labels int32 [N] of the first experience.
      codes: the frozen stage's latents of `images`, when the caller has them already.
    Returns:
      (results.json's ``quantization_check`` record, a warning when more than `QUANT_DROP_WARN` is lost, else
      None); (None, None) for an FP32 frozen stage.
    """
    if frozen.bits is None:
        return None, None
    fp32 = _accuracy(specs, folded, images, INPUT_SCALE, labels, batch_size)
    codes = frozen.latents(images) if codes is None else codes
    quantized = _accuracy(specs[latent_layer + 1 :], folded[latent_layer + 1 :], codes, frozen.scale, labels,
                          batch_size)
    drop = fp32 - quantized
    record = {"images": "first experience (training)", "fp32_accuracy": round(fp32, 4),
              "quantized_accuracy": round(quantized, 4), "drop_points": round(100 * drop, 2)}
    if drop <= QUANT_DROP_WARN:
        return record, None
    q = frozen.config
    fixes = [f for f, off in (("quant.equalize=true", not q.equalize),
                              ("quant.weight_granularity=per_channel", q.weight_granularity != "per_channel"),
                              ("quant.frozen_bits=8", q.bits < 8)) if off]
    return record, (f"the {q.bits}-bit frozen stage scores {100 * quantized:.1f} % on the first experience's images "
                    f"against {100 * fp32:.1f} % in FP32 ({100 * drop:.1f} points lost): quantization broke event 0's "
                    "network, and the learning events start from it" + (f"; try {' or '.join(fixes)}" if fixes else ""))
