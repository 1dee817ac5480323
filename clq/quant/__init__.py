"""Quantization: uniform primitives, the frozen stage (PTQ, integer-exact fake-quant forward, integer reference,
export), latent-replay codecs and the quantization error report."""

from clq.quant.c_header import c_header_source
from clq.quant.export import (
    ExportedStage,
    export_frozen_stage,
    frozen_stage_tensors,
    load_frozen_stage,
    tensors_sha256,
)
from clq.quant.frozen import (
    INPUT_SCALE,
    LayerQuant,
    QuantConfig,
    calibrate_activation_max,
    frozen_codes,
    frozen_forward_codes,
    frozen_forward_fp32,
    quantize_frozen_stage,
)
from clq.quant.integer import integer_forward
from clq.quant.ptq import calibrate_and_quantize
from clq.quant.latent import LatentCodec, make_latent_codec
from clq.quant.report import QuantReport, quant_error_report, top1_agreement
from clq.quant.requant import quantize_multiplier, requantize, requantize_jax
from clq.quant.uniform import check_bits, code_range, dequantize, fake_quant, quantize, storage_dtype

__all__ = [
    "INPUT_SCALE", "LayerQuant", "QuantConfig", "calibrate_activation_max", "frozen_codes", "frozen_forward_codes",
    "frozen_forward_fp32", "quantize_frozen_stage", "calibrate_and_quantize", "integer_forward",
    "ExportedStage", "export_frozen_stage", "load_frozen_stage", "frozen_stage_tensors", "tensors_sha256",
    "c_header_source", "quantize_multiplier", "requantize", "requantize_jax", "LatentCodec", "make_latent_codec",
    "QuantReport", "quant_error_report", "top1_agreement", "check_bits", "code_range", "dequantize", "fake_quant",
    "quantize", "storage_dtype",
]
