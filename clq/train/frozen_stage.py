"""The frozen stage as a batched, jitted image -> latent executor (FP32 or fake-quantized 8-bit)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.batching import padded_batches
from clq.model.forward import forward
from clq.model.specs import LayerSpec
from clq.quant.frozen import (
    INPUT_SCALE,
    QuantConfig,
    calibrate_activation_max,
    frozen_forward_codes,
)
from clq.quant.ptq import calibrate_and_quantize

__all__ = ["FrozenStage", "make_frozen_stage"]


class FrozenStage(NamedTuple):
    """A frozen stage ready to produce latents.

    Fields:
      latents(pixels uint8 [N,H,W,C]) -> codes [N, *latent_shape]: uint8 codes (quantized stage) or float32
        values (FP32 stage); real latents are ``codes * scale``.
      scale: float32 scalar, the latent's scale (1.0 for FP32).
      a_max: float, calibrated maximum of the latent layer's output (sets the LR codec's range).
      layers: the per-layer quantization (empty tuple for FP32).
      bits: frozen-stage bits, or None for FP32.
    """

    latents: object
    scale: np.float32
    a_max: float
    layers: tuple
    bits: int | None


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
        fn = jax.jit(lambda px: frozen_forward_codes(frozen_specs, layers, px, config.bits))
        scale, out_dtype = np.float32(layers[-1].out_scale), np.uint8
        # The LR codec must see the range the codes really span, so that lr_bits == frozen bits keeps the
        # frozen stage's codes unchanged (the pool layer inherits its input's scale).
        a_max = float(scale) * (2**config.bits - 1)

    def latents(pixels: np.ndarray) -> np.ndarray:
        n = len(pixels)
        out = np.empty((n, *frozen_specs[-1].out_shape), out_dtype)
        for s, chunk, m in padded_batches(pixels, batch_size):
            out[s : s + m] = np.asarray(fn(jnp.asarray(chunk)))[:m].astype(out_dtype)
        return out

    return FrozenStage(latents, scale, a_max, tuple(layers), None if config is None else config.bits)
