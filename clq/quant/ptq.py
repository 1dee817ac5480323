"""Post-training quantization of a frozen stage as one pipeline: equalize, calibrate, quantize, correct biases.

It composes `clq.quant.equalize` (which reads the integer stage of `clq.quant.frozen`) with the calibration and
quantization of `clq.quant.frozen`; it lives apart from both so that neither imports the other in a circle.
The run's frozen stage (`clq.train.frozen_stage`) and `clq-quant-report` call the same function.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clq.model.specs import LayerSpec
from clq.quant.equalize import bias_correction, equalize
from clq.quant.frozen import (
    LayerQuant,
    QuantConfig,
    calibrate_activation_max,
    input_scales,
    quantize_frozen_stage,
    quantize_layer,
)

__all__ = ["calibrate_and_quantize"]


def calibrate_and_quantize(
    specs: Sequence[LayerSpec], params: Sequence[dict], batches: Sequence[np.ndarray], config: QuantConfig
) -> tuple[tuple[LayerQuant, ...], np.ndarray, tuple[dict, ...]]:
    """The whole post-training quantization of a frozen stage: equalize, calibrate, quantize, correct biases.

    1. `config.equalize`: cross-layer equalization (`clq.quant.equalize.equalize`), same function;
    2. activation ranges calibrated on `batches` (`calibrate_activation_max`);
    3. weights, biases and requantization (`quantize_frozen_stage`);
    4. `config.bias_correction`: layer by layer, biases corrected for the quantization's mean shift on `batches`
       and the layer quantized with its corrected bias (`clq.quant.equalize.bias_correction`).

    Args:
      specs, params: the frozen stage (layers 0..l) in folded form.
      batches: float32 [B, H, W, C] calibration images in [0, 1] (the first experience's).
      config: the quantization choices.
    Returns:
      (layers, a_max, reference): one `LayerQuant` per spec; the calibrated float32 [len(specs)] activation
      maxima; and the FP32 parameters whose layer outputs the codes approximate (`params` equalized, without
      bias correction: the same function as `params`, but intermediate channels in equalized units), the
      reference for per-layer errors. The last layer's output is never rescaled.
    """
    batches = list(batches)
    specs, params = tuple(specs), tuple(params)
    if config.equalize:
        params = equalize(specs, params)
    a_max = calibrate_activation_max(specs, params, batches, config)
    if not config.bias_correction:
        return quantize_frozen_stage(specs, params, a_max, config), a_max, params
    scales = input_scales(specs, a_max, config.bits)
    pixels = np.concatenate([np.round(np.asarray(b, np.float32) * 255.0).astype(np.uint8) for b in batches])
    _, layers = bias_correction(specs, params, lambda i, p: quantize_layer(specs[i], p, scales[i], a_max[i], config),
                                pixels)
    return layers, a_max, params
