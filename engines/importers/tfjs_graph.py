"""Read a TensorFlow.js graph model (``model.json`` plus ``.bin`` shards) without TensorFlow.

A graph model is a frozen TensorFlow ``GraphDef`` written as JSON: ``modelTopology.node`` lists
every op with its inputs and attributes, and ``weightsManifest`` says how the concatenated
``.bin`` shards split into the ``Const`` tensors (name, shape, dtype, optional quantisation).
This module returns the nodes and the dequantised float32 (or int32/bool) weights, so a
converter can walk the topology from the input and map each weight to the layer that uses it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("bool"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
}


class TfjsGraphError(Exception):
    """The files are not a TF.js graph model this reader understands; the message says why."""


@dataclass
class TfjsNode:
    """One op of the graph: its name, op type, data inputs (control inputs dropped) and attributes."""

    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def input_names(self) -> list[str]:
        """Inputs as node names (``node:1`` output suffixes removed)."""
        return [strip_output_index(i) for i in self.inputs]


@dataclass
class TfjsGraph:
    """A parsed graph model: nodes in file order, weights by ``Const`` name, the signature."""

    nodes: dict[str, TfjsNode]
    weights: dict[str, np.ndarray]
    signature: dict[str, Any]
    metadata: dict[str, Any]

    def node(self, name: str) -> TfjsNode:
        return self.nodes[strip_output_index(name)]

    def consumers(self, name: str) -> list[TfjsNode]:
        """The nodes that take ``name`` (any of its outputs) as a data input."""
        name = strip_output_index(name)
        return [n for n in self.nodes.values() if name in n.input_names()]

    def const(self, name: str) -> np.ndarray:
        """The weight tensor behind a ``Const`` node (or ``Identity`` of one)."""
        node = self.node(name)
        while node.op == "Identity" and node.name not in self.weights:
            node = self.node(node.inputs[0])
        if node.name not in self.weights:
            raise KeyError(f"{name} is a {node.op} node, not a stored constant")
        return self.weights[node.name]


def strip_output_index(name: str) -> str:
    """``"conv:1"`` -> ``"conv"``; TF names a node's extra outputs with a colon suffix."""
    name = name.lstrip("^")
    head, sep, tail = name.rpartition(":")
    return head if sep and tail.isdigit() else name


def _attr_value(value: dict[str, Any]) -> Any:
    """Turn a JSON ``AttrValue`` into plain Python: ints, floats, strings, lists, dtypes, shapes."""
    if "list" in value:
        lst = value["list"]
        for key in ("i", "f", "s", "b", "type"):
            if key in lst:
                return [_attr_value({key: v}) for v in lst[key]]
        return []
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "s" in value:
        # Protobuf JSON stores bytes as base64 ("SAME" is "U0FNRQ==").
        try:
            return base64.b64decode(value["s"]).decode()
        except (ValueError, UnicodeDecodeError):
            return value["s"]
    if "type" in value:
        return value["type"]
    if "shape" in value:
        return [int(d.get("size", -1)) for d in value["shape"].get("dim", [])]
    if "tensor" in value:
        return value["tensor"]
    return value


def _dequantise(raw: bytes, spec: dict[str, Any]) -> np.ndarray:
    """Decode one manifest entry's bytes into its declared dtype, undoing any quantisation."""
    shape = tuple(int(s) for s in spec["shape"])
    dtype = spec["dtype"]
    quant = spec.get("quantization")
    if quant is None:
        return np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(shape).copy()
    qtype = quant["dtype"]
    q = np.frombuffer(raw, dtype=_DTYPES[qtype]).reshape(shape)
    if qtype == "float16":
        return q.astype(np.float32)
    if qtype not in ("uint8", "uint16"):
        raise TfjsGraphError(f"{spec['name']}: unknown quantisation dtype {qtype}")
    # Affine quantisation: value = q * scale + min, computed in double and rounded once, as TF.js
    # does; int32 weights are rounded half up (JavaScript's Math.round).
    value = q.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
    if dtype == "int32":
        return np.floor(value + 0.5).astype(np.int32)
    return value.astype(np.float32)


def _entry_nbytes(spec: dict[str, Any]) -> int:
    count = int(np.prod([int(s) for s in spec["shape"]], dtype=np.int64))
    if spec["dtype"] == "string":
        raise TfjsGraphError(f"string weight {spec['name']} is not supported")
    quant = spec.get("quantization")
    dtype = quant["dtype"] if quant else spec["dtype"]
    return count * _DTYPES[dtype].itemsize


def read_tfjs_graph(model_json: str | Path) -> TfjsGraph:
    """Parse ``model.json`` and its weight shards (looked up beside it) into a :class:`TfjsGraph`."""
    model_json = Path(model_json)
    try:
        meta = json.loads(model_json.read_text())
    except json.JSONDecodeError as exc:
        raise TfjsGraphError(f"{model_json} is not JSON: {exc}") from exc
    if meta.get("format") not in (None, "graph-model") or "modelTopology" not in meta:
        raise TfjsGraphError(f"{model_json} is not a TF.js graph model (format={meta.get('format')!r})")

    nodes: dict[str, TfjsNode] = {}
    for raw in meta["modelTopology"].get("node", []):
        inputs = [i for i in raw.get("input", []) if not i.startswith("^")]
        attrs = {k: _attr_value(v) for k, v in raw.get("attr", {}).items()}
        nodes[raw["name"]] = TfjsNode(raw["name"], raw["op"], inputs, attrs)
    if meta["modelTopology"].get("library", {}).get("function"):
        raise TfjsGraphError("graphs with function libraries (control flow) are not supported")

    weights: dict[str, np.ndarray] = {}
    for group in meta.get("weightsManifest", []):
        # A group's shards are one byte stream cut into files; entries follow each other in it.
        blob = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            n = _entry_nbytes(spec)
            if offset + n > len(blob):
                raise TfjsGraphError(f"weight shards end before {spec['name']} ({len(blob)} bytes)")
            weights[spec["name"]] = _dequantise(blob[offset:offset + n], spec)
            offset += n
        if offset != len(blob):
            raise TfjsGraphError(f"{len(blob) - offset} bytes left over in {group['paths']}")

    # Small constants may live inline in the topology rather than in the manifest.
    for node in nodes.values():
        tensor = node.attrs.get("value")
        if node.op == "Const" and node.name not in weights and isinstance(tensor, dict):
            weights[node.name] = _inline_tensor(tensor)

    extra = {k: v for k, v in meta.items() if k not in ("modelTopology", "weightsManifest", "signature")}
    return TfjsGraph(nodes=nodes, weights=weights, signature=meta.get("signature", {}), metadata=extra)


def _inline_tensor(tensor: dict[str, Any]) -> np.ndarray:
    """A ``TensorProto`` written as JSON (used only for scalars and tiny vectors)."""
    dims = [int(d.get("size", 0)) for d in tensor.get("tensorShape", {}).get("dim", [])]
    dtype = tensor.get("dtype", "DT_FLOAT")
    if "tensorContent" in tensor:
        raw = base64.b64decode(tensor["tensorContent"])
        np_dtype = {"DT_FLOAT": "<f4", "DT_INT32": "<i4", "DT_BOOL": "bool"}[dtype]
        return np.frombuffer(raw, dtype=np_dtype).reshape(dims).copy()
    for key, np_dtype in (("floatVal", np.float32), ("intVal", np.int32), ("boolVal", bool)):
        if key in tensor:
            vals = np.asarray(tensor[key], dtype=np_dtype)
            return np.broadcast_to(vals, dims).copy() if dims else vals.reshape(()).copy()
    return np.zeros(dims, dtype=np.float32)


def fused_ops(node: TfjsNode) -> list[str]:
    """The ops a ``_Fused*`` node applies after its main op, e.g. ``["BiasAdd", "Relu6"]``."""
    return list(node.attrs.get("fused_ops", []))

