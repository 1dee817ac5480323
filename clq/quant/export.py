"""Export of the quantized frozen stage for the device: ``<name>.npz`` (integer tensors), ``<name>.json``
(manifest) and ``<name>.h`` (the same tensors as a C header, `clq.quant.c_header`).

The JSON manifest is the table of contents: format and version, the quantization config, the input and
requantization conventions, and per layer its `LayerSpec` (the network's single source of truth, so the
device code generator reads the same layer list as clq) and the name, dtype and shape of every tensor it
owns in the ``.npz``. Nothing is pickled: `load_frozen_stage` opens the archive with
``allow_pickle=False`` and checks it against the manifest (SHA-256, dtypes, shapes).

The export is deterministic: the same tensors give byte-identical files (the ``.npz`` members carry a fixed
date), so ``npz_sha256`` identifies the content. ``tensors_sha256`` hashes the tensors themselves (names,
dtypes, shapes, little-endian bytes; `tensors_sha256`), independently of the container. Every file is
written atomically and the manifest last, so a manifest always describes complete files.

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
| act_min, act_max | int32 | () / (C,) | output clamp (ReLU: 0..2^Q-1; ReLU6: upper code of 6) |
| in_scale, out_scale | float32 | () | S_in, S_out of the codes (zero points 0) |

Shapes are taken from the arrays and recorded in the manifest. Pooling layers store only
act_min/act_max/in_scale/out_scale: ``y = (sum + N//2) // N`` over the window,
scale unchanged. Per layer: ``acc = bias + sum q_in * (q_w - z_w)`` in int32, then requantize and clamp
(`clq.quant.integer.integer_forward` is the executable specification).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from clq.atomic import atomic_file
from clq.model.specs import LayerSpec
from clq.quant.c_header import c_header_source, check_c_prefix
from clq.quant.frozen import INPUT_SCALE, LayerQuant, QuantConfig, pool_layer_quant

__all__ = ["FORMAT", "VERSION", "ExportedStage", "export_frozen_stage", "frozen_stage_tensors", "load_frozen_stage",
           "tensors_sha256", "EXPORT_DIR", "EXPORT_NAME", "write_export"]

FORMAT = "clq-frozen-stage"
#: 2: tensors_sha256, the C header, deterministic .npz, per-channel act_min/act_max allowed.
VERSION = 2
#: Where a run keeps its export, relative to the run dir, and the files' stem.
EXPORT_DIR = "export"
EXPORT_NAME = "frozen_stage"

_FIELDS = ("weights", "weight_zero_point", "weight_scale", "bias", "multiplier", "shift",
           "act_min", "act_max", "in_scale", "out_scale")
_POOL_FIELDS = ("act_min", "act_max", "in_scale", "out_scale")
#: dtype of every field but the weights (uint8 asymmetric / int8 symmetric).
_DTYPES = {"weight_zero_point": "int32", "weight_scale": "float32", "bias": "int32", "multiplier": "int32",
           "shift": "int32", "act_min": "int32", "act_max": "int32", "in_scale": "float32", "out_scale": "float32"}
#: Fields that are per layer (shape ()) or per output channel (shape (C,)).
_PER_LAYER_OR_CHANNEL = ("weight_zero_point", "weight_scale", "multiplier", "shift", "act_min", "act_max")
#: Date of every .npz member, so that the same tensors give the same bytes (the earliest a zip can hold).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


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
    stem = p.with_suffix("") if p.suffix in (".npz", ".json", ".h") else p
    return stem.parent / (stem.name + ".npz"), stem.parent / (stem.name + ".json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensors_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the tensors themselves: per name in sorted order, the name, dtype, shape and C-order
    little-endian bytes. Equal for equal tensors whatever file holds them."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        a = np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
        h.update(f"{name}\0{a.dtype.name}\0{list(a.shape)}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """What `np.savez` writes (uncompressed ``<name>.npy`` members), but with a fixed date on every member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, a in arrays.items():
            with zf.open(zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE), "w", force_zip64=True) as m:
                np.lib.format.write_array(m, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> str:
    """Write `data` to `path` atomically; returns its SHA-256."""
    with atomic_file(str(path)) as f:
        f.write(data)
    return _sha256(data)


def _check_tensors(spec: LayerSpec, t: Mapping[str, np.ndarray], config: QuantConfig) -> None:
    """Raise ValueError unless layer `spec`'s tensors are exactly the table's fields, dtypes and shapes."""
    expected = _POOL_FIELDS if spec.kind == "pool" else _FIELDS
    if set(t) != set(expected):
        raise ValueError(f"layer {spec.index}: tensors {sorted(t)} != {sorted(expected)}")
    wdtype = "uint8" if config.weight_mode == "asymmetric" else "int8"
    c = spec.out_channels
    for field, arr in t.items():
        if field in _PER_LAYER_OR_CHANNEL:
            shapes = ((), (c,))
        else:
            shapes = {"weights": (spec.weight_shape,), "bias": ((c,),)}.get(field, ((),))
        dtype = _DTYPES.get(field, wdtype)
        if arr.dtype.name != dtype or arr.shape not in shapes:
            raise ValueError(f"layer {spec.index} ({spec.name}): {field} is {arr.dtype.name}{arr.shape}, expected "
                             f"{dtype} of shape {' or '.join(map(str, shapes))}")


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


def frozen_stage_tensors(
    specs: Sequence[LayerSpec], layers: Sequence[LayerQuant], config: QuantConfig
) -> dict[str, np.ndarray]:
    """The export's tensors by ``.npz`` name (``layerNN.<field>``), layer by layer in the table's field order."""
    if len(specs) != len(layers):
        raise ValueError(f"{len(specs)} specs but {len(layers)} quantized layers")
    arrays = {}
    for spec, lq in zip(specs, layers):
        tensors = _layer_tensors(spec, lq, config)
        _check_tensors(spec, tensors, config)
        arrays.update({f"layer{spec.index:02d}.{k}": v for k, v in tensors.items()})
    return arrays


def export_frozen_stage(
    path: str | Path, specs: Sequence[LayerSpec], layers: Sequence[LayerQuant], config: QuantConfig,
    c_header: bool = True, c_prefix: str = "clq",
) -> tuple[Path, Path]:
    """Write ``<path>.npz``, ``<path>.h`` and ``<path>.json`` (a trailing .npz/.json/.h in `path` is ignored).

    Args:
      specs: the frozen stage's layer specs (0..l).
      layers: their quantization, from `quantize_frozen_stage`.
      config: the config they were quantized with.
      c_header: also write the C header (`clq.quant.c_header`); its name and SHA-256 go into the manifest.
      c_prefix: the C header's identifier prefix.
    Returns:
      (npz path, json path); the header, if written, is the json path with suffix ``.h``.
    """
    check_c_prefix(c_prefix)
    arrays = frozen_stage_tensors(specs, layers, config)
    npz_path, json_path = _paths(path)
    entries = [{
        "spec": {**spec._asdict()},
        "tensors": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in arrays.items()
                    if k.startswith(f"layer{spec.index:02d}.")},
    } for spec in specs]
    npz_sha256 = _write(npz_path, _npz_bytes(arrays))
    h, w, c = specs[0].in_shape
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "npz": npz_path.name,
        "npz_sha256": npz_sha256,
        "tensors_sha256": tensors_sha256(arrays),
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
        "c_header": None,
    }
    if c_header:
        h_path = json_path.with_suffix(".h")
        h_sha256 = _write(h_path, c_header_source(manifest, arrays, c_prefix).encode("ascii"))
        manifest["c_header"] = {"file": h_path.name, "sha256": h_sha256, "prefix": c_prefix}
    _write(json_path, (json.dumps(manifest, indent=1) + "\n").encode())
    return npz_path, json_path


def load_frozen_stage(path: str | Path) -> ExportedStage:
    """Load and check an export written by `export_frozen_stage` (no pickle).

    Raises:
      ValueError: wrong format/version, checksum mismatch (the ``.npz``, its tensors, the C header when it is
        there), or a tensor whose dtype/shape disagrees with the manifest or with its layer spec.
    """
    npz_path, json_path = _paths(path)
    manifest = json.loads(json_path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{json_path}: not a {FORMAT} v{VERSION} manifest")
    npz_path = json_path.parent / manifest["npz"]
    if _sha256(npz_path.read_bytes()) != manifest["npz_sha256"]:
        raise ValueError(f"{npz_path}: SHA-256 does not match the manifest")
    header = manifest.get("c_header")
    if header and (json_path.parent / header["file"]).exists():
        if _sha256((json_path.parent / header["file"]).read_bytes()) != header["sha256"]:
            raise ValueError(f"{json_path.parent / header['file']}: SHA-256 does not match the manifest")
    config = QuantConfig(**manifest["quant_config"])
    specs, layers, arrays = [], [], {}
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
                t[key.split(".", 1)[1]] = arrays[key] = arr
            _check_tensors(spec, t, config)
            if spec.kind == "pool":
                lq = pool_layer_quant(t["in_scale"][()], t["out_scale"][()], t["act_min"][()], t["act_max"][()])
            else:
                lq = LayerQuant(t["weights"].astype(np.int32), t["weight_scale"], t["weight_zero_point"],
                                t["bias"], t["in_scale"][()], t["out_scale"][()], t["multiplier"], t["shift"],
                                t["act_min"][()], t["act_max"][()])
            specs.append(spec)
            layers.append(lq)
    if tensors_sha256(arrays) != manifest["tensors_sha256"]:
        raise ValueError(f"{npz_path}: tensors SHA-256 does not match the manifest")
    return ExportedStage(tuple(specs), tuple(layers), config, manifest)


def write_export(out_dir: str | Path, frozen_specs, layers, config, c_prefix: str = "clq") -> dict:
    """Write ``<out_dir>/frozen_stage.{npz,json,h}`` (a run's export, `EXPORT_DIR` in its run dir).

    Args:
      frozen_specs: layer specs 0..l; layers: their `LayerQuant` (`FrozenStage.layers`); config: the QuantConfig.
    Returns:
      JSON-able record: the three paths and the npz / tensors / C header SHA-256s.
    """
    npz, js = export_frozen_stage(Path(out_dir) / EXPORT_NAME, frozen_specs, layers, config, c_prefix=c_prefix)
    manifest = json.loads(js.read_text())
    header = js.parent / manifest["c_header"]["file"]
    return {"npz": str(npz), "json": str(js), "c_header": str(header), "npz_sha256": manifest["npz_sha256"],
            "tensors_sha256": manifest["tensors_sha256"], "c_header_sha256": manifest["c_header"]["sha256"]}
