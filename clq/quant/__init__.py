"""Quantization: uniform primitives, the fake-quantized frozen stage, latent-replay codecs."""

from clq.quant.frozen import (
    INPUT_SCALE,
    LayerQuant,
    QuantConfig,
    calibrate_activation_max,
    frozen_forward_codes,
    frozen_forward_fp32,
    quantize_frozen_stage,
)
from clq.quant.latent import LatentCodec, make_latent_codec
from clq.quant.uniform import check_bits, code_range, dequantize, fake_quant, quantize, storage_dtype

__all__ = [
    "INPUT_SCALE", "LayerQuant", "QuantConfig", "calibrate_activation_max", "frozen_forward_codes",
    "frozen_forward_fp32", "quantize_frozen_stage", "LatentCodec", "make_latent_codec", "check_bits",
    "code_range", "dequantize", "fake_quant", "quantize", "storage_dtype",
]
