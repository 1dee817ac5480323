"""ImageNet MobileNet-V1 1.0 weights from a frozen TF-slim GraphDef, without TensorFlow.

The file is ``nudity/files/retrained_graph.pb`` of the PyPI sdist ``nudity==0.2.3`` (paper.md §8), fetched and
checked by ``scripts/fetch_weights.sh`` into ``.cache/weights/``. It holds the complete TF-slim
``MobilenetV1`` (1.0, 224) backbone as constants: ``MobilenetV1/Conv2d_N[_depthwise|_pointwise]/weights``
(``depthwise_weights``) with unfolded BatchNorm ``gamma/beta/moving_mean/moving_variance`` (eps 1e-3), ReLU6,
TF 'SAME' padding, and the 1001-way ImageNet logits ``MobilenetV1/Logits/Conv2d_1c_1x1`` (index 0 =
background). Its ``final_training_ops`` head is ignored.

A GraphDef is a protobuf message; `read_graphdef` decodes the few message types it needs (GraphDef,
NodeDef, AttrValue, TensorProto, TensorShapeProto) straight from the wire format.

Mapping onto clq's numbering (paper.md §2): ``Conv2d_0`` -> layer 0 (conv1); ``Conv2d_{b}_depthwise`` /
``Conv2d_{b}_pointwise`` -> layers ``2b-1`` / ``2b`` for b = 1..13; the global average pool -> 27;
``Logits/Conv2d_1c_1x1`` -> the classifier (28).

Input convention: TF-slim expects ``x_tf = 2 * pixel/255 - 1`` in [-1, 1]; clq feeds ``x = pixel/255``
(so that the integer frozen stage takes raw uint8 pixels with scale 1/255 and zero point 0). The affine map
is folded into conv1 at import: ``conv(2x - 1, W) = conv(x, 2W) - sum(W)``, i.e. ``w <- 2w`` and
``moving_mean <- moving_mean + sum_{kh,kw,c_in} W`` (BN form has no bias, and ``(y - mean)`` absorbs the
constant). This is exact wherever the 3x3 window lies inside the image. TF 'SAME' padding pads ``x_tf``
with 0 (mid grey), the folded layer pads ``x`` with 0 (black, ``x_tf = -1``); at stride 2 and even input
size only the bottom row and right column of conv1's output read padding (TF pads (0, 1)), so those
border outputs differ from TF's. Pass ``fold_input=False`` to get the unmodified TF parameters (then feed
``2x - 1``); tests/quant/test_imagenet.py measures that the two agree on the top-1 class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clq.model.forward import BN_EPS, init_params
from clq.model.specs import CLASSIFIER_INDEX, LayerSpec, mobilenet_v1_specs

__all__ = [
    "GraphNode",
    "read_graphdef",
    "graph_constants",
    "default_weights_path",
    "WEIGHTS_SHA256",
    "WEIGHTS_FILENAME",
    "tf_layer_name",
    "load_imagenet_mobilenet_v1",
    "IMAGENET_CLASSES_OF_INTEREST",
]

#: SHA-256 of nudity-0.2.3/nudity/files/retrained_graph.pb (checked by scripts/fetch_weights.sh).
WEIGHTS_SHA256 = "3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735"
WEIGHTS_FILENAME = "mobilenet_v1_1.0_224_retrained_graph.pb"

#: A few ImageNet indices in the 1001-way (background = 0) output, for tests and reports.
IMAGENET_CLASSES_OF_INTEREST = {
    282: "tabby cat",
    283: "tiger cat",
    286: "Egyptian cat",
    968: "espresso",
    969: "cup",
}

# TensorFlow DataType enum values this reader decodes.
_DT_FLOAT, _DT_INT32 = 1, 3


class GraphNode(NamedTuple):
    """One NodeDef: name, op, inputs, and decoded attributes.

    Attribute values: TensorProto -> np.ndarray; s -> bytes; i -> int; f -> float; b -> bool;
    type -> int (DataType enum); list -> dict of lists ({'i': [...], 's': [...], 'f': [...]});
    shape -> list of dims (-1 unknown).
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict


# --- protobuf wire format -------------------------------------------------------------------------------

def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: memoryview):
    """Yield (field_number, wire_type, value) of a message; length-delimited values are memoryviews."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {field})")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(buf: memoryview) -> list[int]:
    out, i = [], 0
    while i < len(buf):
        v, i = _varint(buf, i)
        out.append(_signed64(v))
    return out


def _shape(buf: memoryview) -> list[int]:
    dims = []
    for f, _, v in _fields(buf):
        if f == 2:  # Dim {int64 size = 1; string name = 2}
            size = 0
            for g, _, w in _fields(v):
                if g == 1:
                    size = _signed64(w)
            dims.append(size)
    return dims


def _tensor(buf: memoryview) -> np.ndarray:
    """Decode a TensorProto of float32 or int32 (tensor_content, or float_val/int_val with broadcast)."""
    dtype, shape, content, vals = None, [], None, []
    for f, wire, v in _fields(buf):
        if f == 1:
            dtype = v
        elif f == 2:
            shape = _shape(v)
        elif f == 4:
            content = bytes(v)
        elif f == 5:  # float_val, packed or not
            vals.extend(np.frombuffer(bytes(v), "<f4").tolist())
        elif f == 7:  # int_val
            vals.extend(_packed_varints(v) if wire == 2 else [_signed64(v)])
    np_dtype = {_DT_FLOAT: np.dtype("<f4"), _DT_INT32: np.dtype("<i4")}.get(dtype)
    if np_dtype is None:
        return np.zeros((0,), np.uint8)  # other dtypes are not needed here
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        arr = np.frombuffer(content, np_dtype).copy()
    elif vals:
        arr = np.asarray(vals, np_dtype)
        if arr.size == 1 and count != 1:
            arr = np.full(count, arr[0], np_dtype)  # TF: a single value fills the tensor
    else:
        arr = np.zeros(count, np_dtype)
    return arr.astype(np_dtype.newbyteorder("=")).reshape(shape)


def _attr_value(buf: memoryview):
    for f, wire, v in _fields(buf):
        if f == 1:  # ListValue
            lst: dict[str, list] = {"s": [], "i": [], "f": []}
            for g, w2, x in _fields(v):
                if g == 2:
                    lst["s"].append(bytes(x))
                elif g == 3:
                    lst["i"].extend(_packed_varints(x) if w2 == 2 else [_signed64(x)])
                elif g == 4:
                    lst["f"].extend(np.frombuffer(bytes(x), "<f4").tolist())
            return lst
        if f == 2:
            return bytes(v)
        if f == 3:
            return _signed64(v)
        if f == 4:
            return float(np.frombuffer(bytes(v), "<f4")[0])
        if f == 5:
            return bool(v)
        if f == 6:
            return int(v)
        if f == 7:
            return _shape(v)
        if f == 8:
            return _tensor(v)
    return None


def read_graphdef(path: str | os.PathLike) -> dict[str, GraphNode]:
    """Parse a binary GraphDef file into ``{node name: GraphNode}`` (no TensorFlow, no protobuf classes)."""
    buf = memoryview(Path(path).read_bytes())
    nodes = {}
    for f, _, node in _fields(buf):
        if f != 1:  # 1 = repeated NodeDef node; versions/library are not needed
            continue
        name, op, inputs, attrs = "", "", [], {}
        for g, _, v in _fields(node):
            if g == 1:
                name = bytes(v).decode()
            elif g == 2:
                op = bytes(v).decode()
            elif g == 3:
                inputs.append(bytes(v).decode())
            elif g == 5:  # map<string, AttrValue> entry
                key, val = "", None
                for h, _, x in _fields(v):
                    if h == 1:
                        key = bytes(x).decode()
                    elif h == 2:
                        val = _attr_value(x)
                attrs[key] = val
        nodes[name] = GraphNode(name, op, tuple(inputs), attrs)
    return nodes


def graph_constants(nodes: dict[str, GraphNode]) -> dict[str, np.ndarray]:
    """``{name: array}`` of every Const node."""
    return {n.name: n.attrs["value"] for n in nodes.values() if n.op == "Const" and "value" in n.attrs}


# --- mapping onto clq -----------------------------------------------------------------------------------

def default_weights_path() -> Path:
    """``$CLQ_IMAGENET_WEIGHTS`` if set, else ``<repo>/.cache/weights/`` + `WEIGHTS_FILENAME`."""
    env = os.environ.get("CLQ_IMAGENET_WEIGHTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "weights" / WEIGHTS_FILENAME


def tf_layer_name(spec: LayerSpec) -> str:
    """TF-slim scope of a clq layer: 0 -> Conv2d_0, 2b-1/2b -> Conv2d_b_depthwise/_pointwise, 28 -> Logits."""
    if spec.index == 0:
        return "Conv2d_0"
    if spec.kind in ("dw", "pw"):
        b = (spec.index + 1) // 2
        return f"Conv2d_{b}_{'depthwise' if spec.kind == 'dw' else 'pointwise'}"
    if spec.index == CLASSIFIER_INDEX:
        return "Logits/Conv2d_1c_1x1"
    if spec.kind == "pool":
        return "Logits/AvgPool_1a"
    raise ValueError(f"no TF-slim name for layer {spec.index} ({spec.name})")


def _check_graph_op(nodes: dict[str, GraphNode], spec: LayerSpec, scope: str) -> None:
    """The graph's conv op of this layer must have the spec's stride and 'SAME' padding."""
    op_name = f"MobilenetV1/MobilenetV1/{scope}/" + ("depthwise" if spec.kind == "dw" else "convolution")
    node = nodes.get(op_name)
    if node is None:
        raise ValueError(f"graph has no node {op_name!r} for layer {spec.index}")
    strides = node.attrs.get("strides", {}).get("i", [])
    if node.attrs.get("padding") != b"SAME" or list(strides) != [1, spec.stride, spec.stride, 1]:
        raise ValueError(
            f"{op_name}: padding {node.attrs.get('padding')!r} strides {strides} do not match layer {spec.index} "
            f"(stride {spec.stride}, SAME)"
        )


def load_imagenet_mobilenet_v1(
    path: str | os.PathLike | None = None,
    input_size: int = 224,
    num_classes: int = 1001,
    fold_input: bool = True,
    key: jax.Array | None = None,
) -> tuple[tuple[LayerSpec, ...], tuple[dict, ...], tuple[dict, ...]]:
    """ImageNet MobileNet-V1 1.0 in clq's BN form (ReLU6), ready for event-0 fine-tuning or freezing.

    Args:
      path: the GraphDef (default `default_weights_path()`; fetch it with scripts/fetch_weights.sh).
      input_size: square input resolution (224 as trained; 128 as in the paper works too).
      num_classes: 1001 keeps the ImageNet logits (index 0 = background); any other value gives a fresh
        classifier initialised like `clq.model.init_params` (seeded by `key`).
      fold_input: fold TF's ``x_tf = 2x - 1`` into conv1 so that the network takes ``x = pixel / 255``
        (see the module docstring); False keeps TF's parameters (feed ``2x - 1``).
      key: PRNG key for a fresh classifier (default PRNGKey(0)).
    Returns:
      (specs, params, bn_stats) as in `clq.model.forward`: specs from
      ``mobilenet_v1_specs(1.0, input_size, num_classes, activation='relu6')``; params per layer
      ``{'w', 'gamma', 'beta'}`` (conv/dw/pw; float32, `spec.weight_shape` and (C_out,)), ``{}`` (pool),
      ``{'w': (1024, num_classes), 'b': (num_classes,)}`` (classifier); bn_stats ``{'mean', 'var'}``.
    """
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet MobileNet-V1 weights not found at {path}; run scripts/fetch_weights.sh "
            "(or set CLQ_IMAGENET_WEIGHTS to the retrained_graph.pb of nudity==0.2.3)"
        )
    nodes = read_graphdef(path)
    consts = graph_constants(nodes)
    specs = mobilenet_v1_specs(1.0, input_size, num_classes, activation="relu6")

    def get(name: str) -> np.ndarray:
        if name not in consts:
            raise ValueError(f"graph has no constant {name!r}: not the TF-slim MobileNet-V1 graph")
        return np.asarray(consts[name], np.float32)

    params, stats = [], []
    for spec in specs:
        if spec.kind == "pool":
            params.append({})
            stats.append({})
            continue
        scope = tf_layer_name(spec)
        if spec.index == CLASSIFIER_INDEX:
            if num_classes == 1001:
                w = get(f"MobilenetV1/{scope}/weights").reshape(spec.weight_shape)
                params.append({"w": jnp.asarray(w), "b": jnp.asarray(get(f"MobilenetV1/{scope}/biases"))})
            else:
                fresh, _ = init_params((spec,), key if key is not None else jax.random.PRNGKey(0))
                params.append(fresh[0])
            stats.append({})
            continue
        _check_graph_op(nodes, spec, scope)
        if spec.kind == "dw":
            w = get(f"MobilenetV1/{scope}/depthwise_weights")  # [K, K, C, 1]
            w = np.transpose(w, (0, 1, 3, 2))  # -> clq's [K, K, 1, C]
        else:
            w = get(f"MobilenetV1/{scope}/weights")
        w = w.reshape(spec.weight_shape)
        bn = f"MobilenetV1/{scope}/BatchNorm/"
        gamma, beta = get(bn + "gamma"), get(bn + "beta")
        mean, var = get(bn + "moving_mean"), get(bn + "moving_variance")
        eps = consts.get(f"MobilenetV1/MobilenetV1/{scope}/BatchNorm/batchnorm/add/y")
        if eps is not None and not np.isclose(float(eps), BN_EPS):
            raise ValueError(f"{scope}: BatchNorm eps {float(eps)} != clq's BN_EPS {BN_EPS}")
        if spec.index == 0 and fold_input:
            # conv(2x - 1, W) = conv(x, 2W) - sum W (inside the image): the constant moves into the mean.
            mean = mean + w.astype(np.float64).sum(axis=(0, 1, 2)).astype(np.float32)
            w = 2.0 * w
        params.append({"w": jnp.asarray(w), "gamma": jnp.asarray(gamma), "beta": jnp.asarray(beta)})
        stats.append({"mean": jnp.asarray(mean), "var": jnp.asarray(var)})
    return specs, tuple(params), tuple(stats)
