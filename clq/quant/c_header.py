"""C header form of an exported frozen stage: the `.npz`'s tensors as ``static const`` arrays plus ``#define``s.

`c_header_source(manifest, arrays)` turns what `clq.quant.export.export_frozen_stage` writes (the manifest and
the tensors of the ``.npz``) into one self-contained C99 header, so firmware compiles the frozen stage in
without a loader. The header is a function of the export only (no dates, no paths): the same export gives
the same bytes.

For layer i (two digits, the paper's index) and each tensor field of the manifest (``weights``, ``bias``,
``multiplier``, ``shift``, ``act_min``, ``act_max``, ...), with ``P`` the upper-case prefix (default ``CLQ``):

* ``static const <type> <prefix>_layerII_<field>[P_LAYERII_<FIELD>_LEN]``: the values in C order
  (``uint8_t``/``int8_t`` weights, ``int32_t`` integers, ``float`` scales). A 0-d tensor is an array of one.
* ``P_LAYERII_<FIELD>_LEN``, ``_RANK`` and ``_DIM0..``: its shape, taken from the array (a per-layer value
  has rank 0 and length 1, a per-channel one rank 1 and length C). Kernels index a per-layer-or-per-channel
  field as ``x[P_LAYERII_X_LEN == 1 ? 0 : c]``.
* the layer spec: ``_KIND`` (``P_KIND_CONV/DW/PW/POOL``), ``_KERNEL``, ``_STRIDE``, ``_IN_H/W/C``,
  ``_OUT_H/W/C``, ``_ACTIVATION``; ``_ACT_MIN``/``_ACT_MAX`` as plain numbers when they are per layer.

Globals: ``P_NUM_LAYERS``, ``P_LATENT_LAYER``, ``P_BITS``, the weight format, the input convention (uint8
NHWC, scale ``P_INPUT_SCALE_NUM / P_INPUT_SCALE_DEN`` = 1/255, zero point 0), the latent's shape and scale,
and the rounding convention: ``P_ROUNDING_SINGLE`` and ``<prefix>_requantize``, the single-rounding
requantization of `clq.quant.requant.requantize` in portable C (64-bit product, floor shift, clamp).
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

__all__ = ["C_TYPES", "c_header_source", "check_c_prefix"]

#: C type of each exported dtype.
C_TYPES = {"uint8": "uint8_t", "int8": "int8_t", "int32": "int32_t", "float32": "float"}

_KINDS = ("conv", "dw", "pw", "pool")
_ACTIVATIONS = ("none", "relu", "relu6")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_c_prefix(prefix: str) -> str:
    """Return `prefix` if it starts C identifiers legally (letters, digits, underscores; not a digit first)."""
    if not isinstance(prefix, str) or not _IDENTIFIER.match(prefix):
        raise ValueError(f"C prefix must be a C identifier ([A-Za-z_][A-Za-z0-9_]*), got {prefix!r}")
    return prefix


def _c_value(dtype: str, v) -> str:
    if dtype == "float32":
        x = np.float32(v)
        if not np.isfinite(x):
            raise ValueError(f"non-finite float32 {x} cannot be written as a C literal")
        # The shortest decimal that reads back as this float32 (C compilers round float literals correctly).
        return np.format_float_scientific(x, unique=True, trim="0") + "f"
    v = int(v)
    return "INT32_MIN" if v == -(2**31) else str(v)


def _array(ctype: str, name: str, length_macro: str, dtype: str, values: np.ndarray, per_line: int = 16) -> list[str]:
    flat = [_c_value(dtype, v) for v in values.reshape(-1).tolist()]
    rows = [", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
    return [f"static const {ctype} {name}[{length_macro}] = {{", *(f"    {r}," for r in rows), "};"]


def c_header_source(manifest: Mapping, arrays: Mapping[str, np.ndarray], prefix: str = "clq") -> str:
    """The C header of an export.

    Args:
      manifest: the export's manifest (`clq.quant.export`): its layer specs, tensor names/dtypes/shapes,
        quantization config, input convention and checksums.
      arrays: the ``.npz``'s tensors by name (``layerNN.<field>``).
      prefix: start of every identifier (lower case for arrays and functions, upper case for macros).
    Returns:
      the header's text (ASCII, ``\\n`` line ends).
    Raises:
      ValueError: a tensor missing or disagreeing with the manifest, an unknown dtype, a bad prefix.
    """
    prefix = check_c_prefix(prefix)
    lo, up = prefix.lower(), prefix.upper()
    cfg, inp, layers = manifest["quant_config"], manifest["input"], manifest["layers"]
    if not layers:
        raise ValueError("the export has no layers")
    scale_den = round(1.0 / inp["scale"])
    if not np.isclose(1.0 / scale_den, inp["scale"], rtol=1e-12, atol=0):
        raise ValueError(f"input scale {inp['scale']} is not 1/n")
    specs = [entry["spec"] for entry in layers]
    last = specs[-1]
    guard = f"{up}_FROZEN_STAGE_H"
    head = f"static inline int32_t {lo}_requantize("
    signed = cfg["weight_mode"] == "symmetric"
    out = [
        f"/* Quantized frozen stage (layers {specs[0]['index']}..{last['index']}) exported by clq: "
        f"{manifest['format']} v{manifest['version']}.",
        " * Generated from the export's .npz and manifest; do not edit.",
        f" *   npz SHA-256:     {manifest['npz_sha256']}",
        f" *   tensors SHA-256: {manifest['tensors_sha256']}",
        f" * Quantization: {cfg['bits']} bit, {cfg['weight_granularity']} {cfg['weight_mode']} weights, "
        f"{cfg['activation_range']} activation ranges.",
        " *",
        f" * Input: uint8 {inp['layout']} [{']['.join(str(d) for d in inp['shape'])}], real value = code / "
        f"{scale_den}, zero point {inp['zero_point']}.",
        " * Activations: unsigned codes, zero point 0; padding TF 'SAME' with code 0.",
        " * Per conv/dw/pw layer, output channel c (fields of per-layer values have LEN 1, use index 0):",
        " *   acc = bias[c] + sum_k q_in[k] * (weights[k][c] - weight_zero_point[c])          (int32)",
        " *   q_out = clamp((acc * multiplier[c] + 2^(shift[c]-1)) >> shift[c], act_min[c], act_max[c])",
        f" *   with a 64-bit product and one rounding (half up): {lo}_requantize below. This is TFLite's",
        " *   MultiplyByQuantizedMultiplier built with TFLITE_SINGLE_ROUNDING and CMSIS-NN's arm_nn_requantize",
        " *   with CMSIS_NN_USE_SINGLE_ROUNDING (their shift = 31 - shift); the default double rounding differs.",
        " * Average pool: q_out = (sum + N/2) / N over the window (N = H*W), scale unchanged.",
        " * Weight layouts (C order): conv HWIO [K][K][Cin][C], dw [K][K][1][C], pw [Cin][C].",
        " * in_scale/out_scale/weight_scale: real scales of the codes (documentation; kernels do not need them).",
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stdint.h>",
        "",
        f"#define {up}_FORMAT_VERSION {manifest['version']}",
        f"#define {up}_NUM_LAYERS {len(layers)}",
        f"#define {up}_FIRST_LAYER {specs[0]['index']}",
        f"#define {up}_LATENT_LAYER {last['index']}",
        f"#define {up}_BITS {cfg['bits']}",
        f"#define {up}_WEIGHTS_SIGNED {int(signed)}  /* 0: uint8 codes and zero points, 1: int8 codes, zero point 0 */",
        f"#define {up}_WEIGHTS_PER_CHANNEL {int(cfg['weight_granularity'] == 'per_channel')}",
        f"#define {up}_INPUT_H {inp['shape'][0]}",
        f"#define {up}_INPUT_W {inp['shape'][1]}",
        f"#define {up}_INPUT_C {inp['shape'][2]}",
        f"#define {up}_INPUT_SCALE_NUM 1",
        f"#define {up}_INPUT_SCALE_DEN {scale_den}",
        f"#define {up}_INPUT_ZERO_POINT {inp['zero_point']}",
        f"#define {up}_ACT_ZERO_POINT 0",
        f"#define {up}_LATENT_H {last['out_shape'][0]}",
        f"#define {up}_LATENT_W {last['out_shape'][1]}",
        f"#define {up}_LATENT_C {last['out_shape'][2]}",
        f"#define {up}_ROUNDING_SINGLE 1  /* requantization rounds once, half up ({lo}_requantize) */",
        *(f"#define {up}_KIND_{k.upper()} {i}" for i, k in enumerate(_KINDS)),
        *(f"#define {up}_ACTIVATION_{a.upper()} {i}" for i, a in enumerate(_ACTIVATIONS)),
        "",
        "/* floor((acc * multiplier + 2^(shift-1)) / 2^shift) clamped to [act_min, act_max]; shift in 1..62.",
        "   |acc * multiplier| < 2^62, so the 64-bit sum cannot overflow; the floor is written out because >> of a",
        "   negative value is implementation-defined in C. */",
        f"{head}int32_t acc, int32_t multiplier, int32_t shift,",
        f"{' ' * len(head)}int32_t act_min, int32_t act_max) {{",
        "    int64_t v = (int64_t)acc * (int64_t)multiplier + ((int64_t)1 << (shift - 1));",
        "    int64_t y = v >= 0 ? (v >> shift) : -((-v - 1) >> shift) - 1;",
        "    return y < act_min ? act_min : (y > act_max ? act_max : (int32_t)y);",
        "}",
    ]
    for entry, spec in zip(layers, specs):
        ii = f"{spec['index']:02d}"
        L = f"{up}_LAYER{ii}"
        if spec["kind"] not in _KINDS or spec["activation"] not in _ACTIVATIONS:
            raise ValueError(f"layer {spec['index']}: kind {spec['kind']!r} / activation {spec['activation']!r} "
                             "has no C form")
        (ih, iw, ic), (oh, ow, oc) = spec["in_shape"], spec["out_shape"]
        out += [
            "",
            f"/* layer {spec['index']}: {spec['name']} ({spec['kind']}, {spec['kernel']}x{spec['kernel']}, "
            f"stride {spec['stride']}, {ih}x{iw}x{ic} -> {oh}x{ow}x{oc}, {spec['activation']}) */",
            f"#define {L}_KIND {up}_KIND_{spec['kind'].upper()}",
            f"#define {L}_KERNEL {spec['kernel']}",
            f"#define {L}_STRIDE {spec['stride']}",
            *(f"#define {L}_{io}_{d} {n}" for io, shape in (("IN", spec["in_shape"]), ("OUT", spec["out_shape"]))
              for d, n in zip("HWC", shape)),
            f"#define {L}_ACTIVATION {up}_ACTIVATION_{spec['activation'].upper()}",
        ]
        for key, meta in entry["tensors"].items():
            field = key.split(".", 1)[1]
            arr = np.asarray(arrays[key])
            if arr.dtype.name != meta["dtype"] or list(arr.shape) != list(meta["shape"]):
                raise ValueError(f"{key}: {arr.dtype}{arr.shape} but the manifest says {meta}")
            if meta["dtype"] not in C_TYPES or arr.size == 0:
                raise ValueError(f"{key}: {meta['dtype']}{tuple(arr.shape)} has no C form (dtypes {list(C_TYPES)}, "
                                 "non-empty)")
            F = f"{L}_{field.upper()}"
            if field in ("act_min", "act_max") and arr.ndim == 0:
                out.append(f"#define {F} {int(arr)}")
            out += [f"#define {F}_RANK {arr.ndim}", *(f"#define {F}_DIM{d} {n}" for d, n in enumerate(arr.shape)),
                    f"#define {F}_LEN {arr.size}"]
            out += _array(C_TYPES[meta["dtype"]], f"{lo}_layer{ii}_{field}", f"{F}_LEN", meta["dtype"], arr)
    out += ["", f"#endif /* {guard} */", ""]
    return "\n".join(out)
