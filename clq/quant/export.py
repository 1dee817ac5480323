"""Export of the quantized frozen stage for the device: ``<name>.npz`` (integer tensors) + ``<name>.json``.

The JSON manifest is the table of contents: format and version, the quantization config, the input and
requantization conventions, and per layer its `LayerSpec` (the network's single source of truth, so the
device code generator reads the same layer list as clq) and the name, dtype and shape of every tensor it
owns in the ``.npz``. Nothing is pickled: `load_frozen_stage` opens the archive with
``allow_pickle=False`` and checks it against the manifest (SHA-256, dtypes, shapes).

Tensors of layer i (``layer{i:02d}.<field>`` in the ``.npz``), C = output channels, "()/(C,)" = per layer
or per channel:

| field | dtype | shape | meaning |
|---|---|---|---|
| weights | uint8 (asymmetric) / int8 (symmetric) | conv (K,K,Cin,C) HWIO, dw (K,K,1,C), pw (Cin,C) | weight codes q_w |
| weight_zero_point | int32 | () / (C,) | z_w (0 when symmetric) |
| weight_scale | float32 | () / (C,) | S_w (documentation; not needed by integer kernels) |
| bias | int32 | (C,) | q_b = round(b / (S_in S_w)) |
| multiplier | int32 | () / (C,) | M0 in [2^30, 2^31) |
| shift | int32 | () / (C,) | n in 1..62: y = (acc * M0 + 2^(n-1)) >> n |
| act_min, act_max | int32 | () | output clamp (ReLU: 0..2^Q-1; ReLU6: upper code of 6) |
| in_scale, out_scale | float32 | () | S_in, S_out of the codes (zero points 0) |

Pooling layers store only act_min/act_max/in_scale/out_scale: ``y = (sum + N//2) // N`` over the window,
scale unchanged. Per layer: ``acc = bias + sum q_in * (q_w - z_w)`` in int32, then requantize and clamp
(`clq.quant.integer.integer_forward` is the executable specification).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from clq.model.specs import LayerSpec
from clq.quant.frozen import INPUT_SCALE, LayerQuant, QuantConfig, pool_layer_quant

__all__ = ["FORMAT", "VERSION", "ExportedStage", "export_frozen_stage", "load_frozen_stage"]

FORMAT = "clq-frozen-stage"
VERSION = 1

_FIELDS = ("weights", "weight_zero_point", "weight_scale", "bias", "multiplier", "shift",
           "act_min", "act_max", "in_scale", "out_scale")
_POOL_FIELDS = ("act_min", "act_max", "in_scale", "out_scale")


class ExportedStage(NamedTuple):
    """A loaded export: `specs` and `layers` feed `integer_forward` / `frozen_forward_codes` directly.

    Fields:
      specs: tuple of LayerSpec (layers 0..l).
      layers: tuple of LayerQuant.
      config: the QuantConfig it was quantized with.
      manifest: the parsed JSON manifest.
    """

    specs: tuple
    layers: tuple
    config: QuantConfig
    manifest: dict


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    return stem.parent / (stem.name + ".npz"), stem.parent / (stem.name + ".json")


def _layer_tensors(spec: LayerSpec, lq: LayerQuant, config: QuantConfig) -> dict[str, np.ndarray]:
    common = {
        "act_min": np.asarray(lq.act_min, np.int32), "act_max": np.asarray(lq.act_max, np.int32),
        "in_scale": np.asarray(lq.in_scale, np.float32), "out_scale": np.asarray(lq.out_scale, np.float32),
    }
    if spec.kind == "pool":
        return common
    wdtype = np.uint8 if config.weight_mode == "asymmetric" else np.int8
    w = np.asarray(lq.w_codes)
    if w.min() < np.iinfo(wdtype).min or w.max() > np.iinfo(wdtype).max:
        raise ValueError(f"layer {spec.index}: weight codes do not fit in {np.dtype(wdtype).name}")
    return {
        "weights": w.astype(wdtype),
        "weight_zero_point": np.asarray(lq.w_zero, np.int32),
        "weight_scale": np.asarray(lq.w_scale, np.float32),
        "bias": np.asarray(lq.b_codes, np.int32),
        "multiplier": np.asarray(lq.multiplier, np.int32),
        "shift": np.asarray(lq.shift, np.int32),
        **common,
    }


def export_frozen_stage(
    path: str | Path, specs: Sequence[LayerSpec], layers: Sequence[LayerQuant], config: QuantConfig
) -> tuple[Path, Path]:
    """Write ``<path>.npz`` and ``<path>.json`` (a trailing .npz/.json in `path` is ignored).

    Args:
      specs: the frozen stage's layer specs (0..l).
      layers: their quantization, from `quantize_frozen_stage`.
      config: the config they were quantized with.
    Returns:
      (npz path, json path).
    """
    if len(specs) != len(layers):
        raise ValueError(f"{len(specs)} specs but {len(layers)} quantized layers")
    npz_path, json_path = _paths(path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    arrays, entries = {}, []
    for spec, lq in zip(specs, layers):
        tensors = _layer_tensors(spec, lq, config)
        prefix = f"layer{spec.index:02d}."
        arrays.update({prefix + k: v for k, v in tensors.items()})
        entries.append({
            "spec": {**spec._asdict()},
            "tensors": {prefix + k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in tensors.items()},
        })
    np.savez(npz_path, **arrays)
    h, w, c = specs[0].in_shape
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "npz": npz_path.name,
        "npz_sha256": hashlib.sha256(npz_path.read_bytes()).hexdigest(),
        "quant_config": dataclasses.asdict(config),
        "input": {"dtype": "uint8", "layout": "NHWC", "shape": [h, w, c], "scale": INPUT_SCALE, "zero_point": 0},
        "activations": {"dtype": "uint8", "zero_point": 0, "padding": "TF SAME, pad code 0"},
        "accumulator": "int32: bias + sum q_in * (q_w - weight_zero_point)",
        "requantization": "single rounding: y = clamp((acc * multiplier + 2^(shift-1)) >> shift, act_min, "
                          "act_max), 64-bit product (TFLite/CMSIS-NN single-rounding MultiplyByQuantizedMultiplier "
                          "with their shift = 31 - shift)",
        "pooling": "y = (sum + N//2) // N over the window (N = H*W), scale unchanged",
        "weight_layouts": {"conv": "HWIO", "dw": "HW1C", "pw": "IO (Cin, Cout)"},
        "layers": entries,
    }
    json_path.write_text(json.dumps(manifest, indent=1))
    return npz_path, json_path


def load_frozen_stage(path: str | Path) -> ExportedStage:
    """Load and check an export written by `export_frozen_stage` (no pickle).

    Raises:
      ValueError: wrong format/version, checksum mismatch, or a tensor whose dtype/shape disagrees with the
        manifest or with its layer spec.
    """
    npz_path, json_path = _paths(path)
    manifest = json.loads(json_path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{json_path}: not a {FORMAT} v{VERSION} manifest")
    npz_path = json_path.parent / manifest["npz"]
    if hashlib.sha256(npz_path.read_bytes()).hexdigest() != manifest["npz_sha256"]:
        raise ValueError(f"{npz_path}: SHA-256 does not match the manifest")
    config = QuantConfig(**manifest["quant_config"])
    specs, layers = [], []
    with np.load(npz_path, allow_pickle=False) as npz:
        for entry in manifest["layers"]:
            s = dict(entry["spec"])
            s["in_shape"], s["out_shape"] = tuple(s["in_shape"]), tuple(s["out_shape"])
            spec = LayerSpec(**s)
            t = {}
            for key, meta in entry["tensors"].items():
                arr = npz[key]
                if arr.dtype.name != meta["dtype"] or list(arr.shape) != meta["shape"]:
                    raise ValueError(f"{key}: {arr.dtype}{arr.shape} but the manifest says {meta}")
                t[key.split(".", 1)[1]] = arr
            expected = _POOL_FIELDS if spec.kind == "pool" else _FIELDS
            if set(t) != set(expected):
                raise ValueError(f"layer {spec.index}: tensors {sorted(t)} != {sorted(expected)}")
            if spec.kind == "pool":
                lq = pool_layer_quant(t["in_scale"][()], t["out_scale"][()], t["act_min"][()], t["act_max"][()])
            else:
                if t["weights"].shape != spec.weight_shape or t["bias"].shape != (spec.out_channels,):
                    raise ValueError(f"layer {spec.index}: tensor shapes do not match its spec {spec}")
                lq = LayerQuant(t["weights"].astype(np.int32), t["weight_scale"], t["weight_zero_point"],
                                t["bias"], t["in_scale"][()], t["out_scale"][()], t["multiplier"], t["shift"],
                                t["act_min"][()], t["act_max"][()])
            specs.append(spec)
            layers.append(lq)
    return ExportedStage(tuple(specs), tuple(layers), config, manifest)
