"""Import the paper's released Caffe models (DeepLab-LargeFOV, with or without attention to scale).

A ``.caffemodel`` is a binary ``NetParameter``: every layer with its name, its connections and
its weight blobs. This module reads one with protobuf (no Caffe needed), maps the VGG-16
DeepLab-LargeFOV layers and the attention or max-over-scales merge onto PartCam's
``vgg16_largefov`` model and writes a PartCam checkpoint that records Caffe's preprocessing
(BGR, mean subtraction only), its resizing (DeepLab's Interp) and its padding (mean colour).

The structure (which copy of the shared network runs at which scale, how the scales merge,
pool5a) is read from the graph: a .prototxt if given, else the layers and parameters Caffe
saved in the .caffemodel itself. The authors' definitions are templates (``fc8_${EXP}``,
``num_output: ${NUM_LABELS}``); they parse as they are, and the placeholders are filled from
the .caffemodel's layer names or from ``defines``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import DecodeError

from ..checkpoint import metadata_for, save_checkpoint
from ..model import DEFAULT_SCALES, MultiScaleSegmenter, build_model
from ..preprocessing import CAFFE_VGG, Preprocessing
from ..tasks import TASKS, get_task
from . import caffe_pb
from .caffe_forward import chain_for_scale

# Caffe's VGG-16 layer names and where each lands in VGG16LargeFOV.features (torchvision indices).
VGG_CONVS: tuple[tuple[str, int, int, int], ...] = (
    ("conv1_1", 0, 64, 3), ("conv1_2", 2, 64, 64),
    ("conv2_1", 5, 128, 64), ("conv2_2", 7, 128, 128),
    ("conv3_1", 10, 256, 128), ("conv3_2", 12, 256, 256), ("conv3_3", 14, 256, 256),
    ("conv4_1", 17, 512, 256), ("conv4_2", 19, 512, 512), ("conv4_3", 21, 512, 512),
    ("conv5_1", 24, 512, 512), ("conv5_2", 26, 512, 512), ("conv5_3", 28, 512, 512),
)
ATTENTION_LAYERS = ("att_conv1", "att_fc")
LARGEFOV_FC_CHANNELS = 1024
CAFFE_TEST_CROP = 513  # the authors test at a 513×513 crop (transform_param crop_size in test.prototxt)
_SCALE_SUFFIX = re.compile(r"_res(\d+)")
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


class CaffeImportError(Exception):
    """The Caffe model cannot become a PartCam checkpoint; the message says why, in one line."""


@dataclass
class CaffeLayer:
    """One layer as stored in the .caffemodel: connections plus weight blobs (as float32 arrays)."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    blobs: list[np.ndarray]
    params: dict = field(default_factory=dict)  # a prototxt entry's other fields (interp_param, ...)


@dataclass
class ImportResult:
    """What an import produced, for the command line to print and the tests to check."""

    checkpoint: Path | None
    model: MultiScaleSegmenter
    layer_format: str  # "layer" (current Caffe) or "layers" (V1, before 2015)
    task: str
    merge: str
    scales: list[float]
    num_classes: int
    fc8_layer: str
    fc_channels: int
    attention_width: int | None
    preprocessing: Preprocessing
    input_size: int = CAFFE_TEST_CROP
    inference: dict = field(default_factory=dict)  # what the checkpoint records for the engines
    pool5a: bool = False
    warnings: list[str] = field(default_factory=list)
    ignored_layers: list[str] = field(default_factory=list)
    sha256: str = ""


# --- reading ---------------------------------------------------------------------------------

def blob_to_array(blob, where: str) -> np.ndarray:
    """A BlobProto as a float32 array with its shape (``shape`` or the legacy num/channels/height/width)."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width))
    if len(blob.data):
        values = np.array(blob.data, dtype=np.float32)
    elif len(blob.double_data):
        values = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        raise CaffeImportError(f"{where}: blob has no data (a net definition rather than trained weights?)")
    expected = int(np.prod(shape)) if shape else 0
    if expected != values.size:
        raise CaffeImportError(f"{where}: blob holds {values.size} values but its shape {shape} needs {expected}")
    return values.reshape(shape)


_CONNECTIONS = {"name", "type", "bottom", "top", "blobs"}


def _message_dict(message) -> dict[str, list]:
    """A parsed message as the prototxt reader's nested dicts of string lists (enums by name)."""
    entries: dict[str, list] = {}
    for descriptor, value in message.ListFields():
        if descriptor.name in _CONNECTIONS:
            continue
        values = list(value) if descriptor.is_repeated else [value]
        if descriptor.type == descriptor.TYPE_MESSAGE:
            entries[descriptor.name] = [_message_dict(v) for v in values]
        elif descriptor.type == descriptor.TYPE_ENUM:
            entries[descriptor.name] = [descriptor.enum_type.values_by_number[v].name
                                        if v in descriptor.enum_type.values_by_number else str(v) for v in values]
        elif descriptor.type == descriptor.TYPE_BOOL:
            entries[descriptor.name] = ["true" if v else "false" for v in values]
        else:
            entries[descriptor.name] = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return entries


def read_caffemodel(path: str | Path) -> tuple[str, list[CaffeLayer]]:
    """Parse a binary .caffemodel into its layers; returns (layer format, layers).

    Each layer keeps the parameters Caffe saved with it (interp_param, pooling_param, ...), so
    the net's structure is known without its prototxt.
    """
    path = Path(path)
    if not path.is_file():
        raise CaffeImportError(f"{path}: file not found")
    data = path.read_bytes()
    net = caffe_pb.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError:
        raise CaffeImportError(f"{path}: not a Caffe .caffemodel (it does not parse as a binary "
                               "NetParameter)") from None
    if len(net.layer):
        layer_format = "layer"
        layers = [CaffeLayer(layer.name, layer.type, list(layer.bottom), list(layer.top),
                             [blob_to_array(b, f"{path}: layer {layer.name}") for b in layer.blobs],
                             _message_dict(layer))
                  for layer in net.layer]
    elif len(net.layers):
        layer_format = "layers"
        type_names = caffe_pb.V1LayerParameter.LayerType
        layers = []
        for layer in net.layers:
            kind = type_names.Name(layer.type) if layer.type in type_names.values() else str(layer.type)
            layers.append(CaffeLayer(layer.name, kind, list(layer.bottom), list(layer.top),
                                     [blob_to_array(b, f"{path}: layer {layer.name}") for b in layer.blobs],
                                     _message_dict(layer)))
    else:
        raise CaffeImportError(f"{path}: not a Caffe .caffemodel (no layers found)")
    if not any(layer.name for layer in layers):
        raise CaffeImportError(f"{path}: not a Caffe .caffemodel (its layers have no names)")
    return layer_format, layers


# --- prototxt (text format), read minimally ----------------------------------------------------

# A bare token may hold ``${NAME}`` placeholders (the authors' files are templates for their
# run script), whose braces are not blocks.
_PROTOTXT_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}:]|(?:\$\{\w*\}|[^\s{}:"\'])+')


def fill_template(text: str, defines: dict[str, str] | None) -> str:
    """Replace ``${NAME}`` by ``defines[NAME]``; placeholders not defined stay as they are."""
    if not defines:
        return text
    return _PLACEHOLDER.sub(lambda m: str(defines.get(m.group(1), m.group(0))), text)


def parse_prototxt(text: str, defines: dict[str, str] | None = None) -> dict[str, list]:
    """Protobuf text format as nested dicts of lists: ``{"layer": [{"name": ["fc7"], ...}, ...]}``.

    Types are not checked: numbers stay strings except where the caller converts them.
    ``defines`` fills template placeholders such as ``${EXP}`` first.
    """
    text = re.sub(r"#[^\n]*", "", fill_template(text, defines))
    tokens = _PROTOTXT_TOKEN.findall(text)
    position = 0

    def block(closing: str | None) -> dict[str, list]:
        nonlocal position
        entries: dict[str, list] = {}
        while position < len(tokens):
            key = tokens[position]
            position += 1
            if key == "}":
                if closing is None:
                    raise CaffeImportError("prototxt: unbalanced '}'")
                return entries
            if key in "{:":
                raise CaffeImportError(f"prototxt: unexpected {key!r}")
            if position < len(tokens) and tokens[position] == ":":
                position += 1
            if position >= len(tokens):
                raise CaffeImportError(f"prototxt: {key!r} has no value")
            value = tokens[position]
            position += 1
            if value == "{":
                entries.setdefault(key, []).append(block("}"))
            else:
                if value[:1] in "\"'":
                    value = value[1:-1]
                entries.setdefault(key, []).append(value)
        if closing is not None:
            raise CaffeImportError("prototxt: missing '}'")
        return entries

    return block(None)


def layers_from_prototxt(path: str | Path, defines: dict[str, str] | None = None) -> list[CaffeLayer]:
    """The layers (names, types, connections, parameters; no weights) of a .prototxt, in either format."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CaffeImportError(f"{path}: cannot read prototxt ({exc})") from None
    return _prototxt_layers(text, defines, str(path))


def _prototxt_layers(text: str, defines: dict[str, str] | None, where: str) -> list[CaffeLayer]:
    net = parse_prototxt(text, defines)
    layers = []
    for entry in net.get("layer", []) + net.get("layers", []):
        if not isinstance(entry, dict):
            continue
        layers.append(CaffeLayer(entry.get("name", [""])[0], entry.get("type", [""])[0],
                                 list(entry.get("bottom", [])), list(entry.get("top", [])), [], entry))
    if not layers:
        raise CaffeImportError(f"{where}: no layers in this prototxt")
    return layers


def template_values(template_names: list[str], names: list[str]) -> dict[str, str]:
    """Values for ``${NAME}`` placeholders that turn the template's layer names into ``names``.

    ``fc8_${EXP}`` alone fits ``fc8_voc10_part_res05`` too; the candidates of all templated
    names are intersected, so ``fc8_${EXP}_res05`` settles it.
    """
    candidates: dict[str, set[str]] = {}
    for template in template_names:
        keys = _PLACEHOLDER.findall(template)
        if not keys:
            continue
        pattern, seen = "", set()
        for index, part in enumerate(_PLACEHOLDER.split(template)):
            if index % 2 == 0:
                pattern += re.escape(part)
            else:
                pattern += f"(?P={part})" if part in seen else f"(?P<{part}>.+?)"
                seen.add(part)
        found: dict[str, set[str]] = {}
        for name in names:
            match = re.fullmatch(pattern, name)
            if match:
                for key, value in match.groupdict().items():
                    found.setdefault(key, set()).add(value)
        for key, values in found.items():
            candidates[key] = candidates[key] & values if key in candidates else values
    return {key: next(iter(values)) for key, values in candidates.items() if len(values) == 1}


def _placeholders(layers: list[CaffeLayer]) -> list[str]:
    return sorted({key for layer in layers for text in (layer.name, *layer.bottoms, *layer.tops)
                   for key in _PLACEHOLDER.findall(text)})


# --- structure ---------------------------------------------------------------------------------

def layer_kind(type_name: str) -> str:
    """A layer type in one spelling for both formats: ``Interp``/``INTERP`` → ``interp``."""
    return type_name.replace("_", "").lower()


def scale_from_suffix(digits: str) -> float:
    """DeepLab's scale suffixes: ``res075`` → 0.75, ``res05`` → 0.5, ``res1`` → 1, ``res125`` → 1.25."""
    return float(f"{digits[0]}.{digits[1:]}") if len(digits) > 1 else float(digits)


def split_scale(name: str) -> tuple[str, float]:
    """``fc7_res075`` → (``fc7``, 0.75); names without a suffix are the scale-1 copy."""
    match = _SCALE_SUFFIX.search(name)
    if not match or match.end() != len(name):
        return name, 1.0
    return name[: match.start()], scale_from_suffix(match.group(1))


def _first(layer: CaffeLayer, block: str, key: str, default: str | None = None) -> str | None:
    entries = layer.params.get(block) or [{}]
    values = entries[0].get(key) if isinstance(entries[0], dict) else None
    return values[0] if values else default


@dataclass
class Branch:
    """One copy of the shared network: the scale of its input and the Interp chain that made it."""

    suffix: str  # "" for the scale-1 copy, "_res075", ...
    scale: float
    chain: list[list[int]] | None  # [shrink, zoom] per Interp, input first; None when not known


@dataclass
class Structure:
    """What the graph says: the scale copies, how they merge, pool5a, and the test crop."""

    branches: dict[str, Branch] = field(default_factory=dict)
    merge: str | None = None  # "attention" or "max" when the graph merges scales; None otherwise
    merge_order: list[str] | None = None  # branch suffixes entering the merge (max) or att_conv1's Concat
    score_order: list[str] | None = None  # branch suffix multiplied by each att_fc channel (Slice order)
    fc8_branches: list[str] = field(default_factory=list)
    pool5a: bool = False
    crop_size: int | None = None
    warnings: list[str] = field(default_factory=list)

    def scale(self, suffix: str) -> float:
        if suffix in self.branches:
            return self.branches[suffix].scale
        match = _SCALE_SUFFIX.fullmatch(suffix)
        return scale_from_suffix(match.group(1)) if match else 1.0


class _Graph:
    """Blob producers, so that every check follows connections rather than names."""

    def __init__(self, layers: list[CaffeLayer]) -> None:
        self.layers = layers
        self.producer: dict[str, CaffeLayer] = {}
        for layer in layers:
            for top in layer.tops:
                if top not in layer.bottoms:  # in-place layers (ReLU, Dropout) keep the blob's producer
                    self.producer.setdefault(top, layer)

    def through_interps(self, blob: str) -> tuple[str, list[CaffeLayer]]:
        """Follow Interp layers back from ``blob``: (the blob they started from, the Interps input first)."""
        chain: list[CaffeLayer] = []
        while (layer := self.producer.get(blob)) is not None and layer_kind(layer.type) == "interp" \
                and layer.bottoms and layer not in chain:
            chain.append(layer)
            blob = layer.bottoms[0]
        return blob, chain[::-1]

    def branch(self, blob: str) -> str:
        """Which scale copy ``blob`` comes from, by the layer that made it (before any Interp)."""
        source, _ = self.through_interps(blob)
        layer = self.producer.get(source)
        match = _SCALE_SUFFIX.search(layer.name if layer is not None else source)
        return match.group(0) if match else ""


def _interp_step(layer: CaffeLayer) -> list[int] | None:
    """[shrink, zoom] of an Interp layer; None if its parameters are not known."""
    if "interp_param" not in layer.params:
        return None
    param = layer.params["interp_param"][0]
    if int(param.get("height", ["0"])[0]) or int(param.get("width", ["0"])[0]):
        raise CaffeImportError(f"Interp layer {layer.name} resizes to a fixed height/width; PartCam needs "
                               "shrink_factor/zoom_factor, which scale with the input")
    if int(param.get("pad_beg", ["0"])[0]) or int(param.get("pad_end", ["0"])[0]):
        raise CaffeImportError(f"Interp layer {layer.name} crops (pad_beg/pad_end); not supported")
    return [int(param.get("shrink_factor", ["1"])[0]), int(param.get("zoom_factor", ["1"])[0])]


def _factor(steps: list[list[int]]) -> float:
    return float(np.prod([zoom / shrink for shrink, zoom in steps])) if steps else 1.0


def _check_pooling(layer: CaffeLayer, method: str, stride: int) -> None:
    if "pooling_param" not in layer.params:
        return
    got = ((_first(layer, "pooling_param", "pool", "MAX") or "MAX").upper(),
           int(_first(layer, "pooling_param", "kernel_size", "0")), int(_first(layer, "pooling_param", "stride", "1")),
           int(_first(layer, "pooling_param", "pad", "0")))
    if got != (method, 3, stride, 1):
        raise CaffeImportError(f"{layer.name} is {got[0]} pooling {got[1]}×{got[1]}, stride {got[2]}, pad {got[3]}; "
                               f"DeepLab-LargeFOV's is {method} 3×3, stride {stride}, pad 1")


def _check_dilation(layer: CaffeLayer, expected: int) -> None:
    value = _first(layer, "convolution_param", "dilation") or _first(layer, "convolution_param", "hole")
    if value is not None and int(value) != expected:
        raise CaffeImportError(f"{layer.name} has dilation (hole) {value}; DeepLab-LargeFOV's is {expected}")


def analyse_structure(layers: list[CaffeLayer]) -> Structure:
    """Read scales, merge, pool5a and crop from the graph (a prototxt's layers or a caffemodel's)."""
    graph = _Graph(layers)
    found = Structure()

    # Scales by where each copy of conv1_1 reads its input: the Interp chain from the data.
    for layer in layers:
        base, named = split_scale(layer.name)
        if base != "conv1_1" or not layer.bottoms:
            continue
        suffix = layer.name[len(base):]
        _, interps = graph.through_interps(layer.bottoms[0])
        steps = [_interp_step(interp) for interp in interps]
        if any(step is None for step in steps):
            found.branches[suffix] = Branch(suffix, named, None)
            continue
        factor = _factor(steps)
        if abs(factor - named) > 1e-6:
            found.warnings.append(f"{layer.name} reads {layer.bottoms[0]}, the input resized by {factor:.4g}, "
                                  f"not {named:g} as its name says; using {factor:.4g}")
        found.branches[suffix] = Branch(suffix, factor, steps)
    if "" in found.branches and found.branches[""].scale != 1.0:
        raise CaffeImportError(f"conv1_1 reads its input resized by {found.branches[''].scale:.4g}; "
                               "the scale-1 copy must read the input as it is")

    def check_upsampling(blob: str) -> str:
        """The branch ``blob`` comes from; warns when its Interps do not bring it back to scale 1."""
        suffix = graph.branch(blob)
        _, interps = graph.through_interps(blob)
        steps = [_interp_step(interp) for interp in interps]
        if interps and all(step is not None for step in steps):
            scale, factor = found.scale(suffix), _factor(steps)
            if abs(scale * factor - 1) > 1e-6:
                found.warnings.append(f"Interp {', '.join(i.name for i in interps)} resizes scale {scale:.4g} by "
                                      f"{factor:.4g}; back to scale 1 needs {1 / scale:.4g}")
        return suffix

    def is_fc8(blob: str) -> bool:
        source, _ = graph.through_interps(blob)
        layer = graph.producer.get(source)
        return split_scale(layer.name if layer is not None else source)[0].startswith("fc8")

    # The merge: Eltwise MAX over the fc8 copies, or Slice → SpatialProduct → Eltwise SUM (attention).
    for layer in layers:
        if layer_kind(layer.type) != "eltwise" or len(layer.bottoms) < 2:
            continue
        operation = (_first(layer, "eltwise_param", "operation", "SUM") or "SUM").upper()
        producers = [graph.producer.get(b) for b in layer.bottoms]
        if all(p is not None and layer_kind(p.type) == "spatialproduct" for p in producers):
            if operation != "SUM":
                raise CaffeImportError(f"{layer.name} merges the attention products by {operation}; the paper's "
                                       "attention sums them (Eltwise SUM)")
            order: list[str | None] = [None] * len(producers)
            for product in producers:
                features, weights = product.bottoms[:2]
                piece = graph.producer.get(weights)
                if piece is None or layer_kind(piece.type) != "slice":
                    raise CaffeImportError(f"{product.name} multiplies by {weights}, which no Slice of the "
                                           "attention makes")
                index = piece.tops.index(weights)
                if index >= len(order):
                    raise CaffeImportError(f"{piece.name} has more outputs than {layer.name} has inputs")
                order[index] = check_upsampling(features)
            found.merge, found.score_order = "attention", [s or "" for s in order]
            found.fc8_branches = list(found.score_order)
        elif all(is_fc8(b) for b in layer.bottoms):
            suffixes = [check_upsampling(b) for b in layer.bottoms]
            if operation != "MAX":
                raise CaffeImportError(f"{layer.name} merges the fc8 scores of scales "
                                       f"{[found.scale(s) for s in suffixes]} by Eltwise {operation}; PartCam imports "
                                       "the attention model and Eltwise MAX (max over scales)")
            found.merge, found.merge_order, found.fc8_branches = "max", suffixes, suffixes

    # The features the attention sees: the Concat feeding att_conv1, in its order.
    attention = next((layer for layer in layers if layer.name == "att_conv1" and layer.bottoms), None)
    if attention is not None:
        concat = graph.producer.get(attention.bottoms[0])
        if concat is None:  # a partial structure: the Concat itself may be listed without a producer link
            concat = next((layer for layer in layers if attention.bottoms[0] in layer.tops
                           and layer_kind(layer.type) == "concat"), None)
        if concat is not None and layer_kind(concat.type) == "concat":
            found.merge_order = [check_upsampling(b) for b in concat.bottoms]
            found.merge = "attention"

    # pool5a (DeepLab v1 LargeFOV): an average pool between pool5 and fc6.
    layer_by_name = {layer.name: layer for layer in layers}
    for name in ("pool1", "pool2", "pool3", "pool4", "pool5"):
        if name in layer_by_name:
            _check_pooling(layer_by_name[name], "MAX", 2 if name in ("pool1", "pool2", "pool3") else 1)
    for name, expected in (("conv5_1", 2), ("conv5_2", 2), ("conv5_3", 2), ("fc6", 12)):
        if name in layer_by_name:
            _check_dilation(layer_by_name[name], expected)
    fc6 = layer_by_name.get("fc6")
    if fc6 is not None and fc6.bottoms:
        source = graph.producer.get(fc6.bottoms[0])
        if source is not None and source.name != "pool5":
            if layer_kind(source.type) != "pooling" or "pooling_param" not in source.params:
                raise CaffeImportError(f"fc6 reads {fc6.bottoms[0]} from layer {source.name} ({source.type}); "
                                       "PartCam's DeepLab-LargeFOV has pool5 → fc6 or pool5 → pool5a → fc6")
            _check_pooling(source, "AVE", 1)
            before = graph.producer.get(source.bottoms[0]) if source.bottoms else None
            if before is not None and before.name != "pool5":
                raise CaffeImportError(f"{source.name} reads {source.bottoms[0]} from {before.name}; pool5a must "
                                       "read pool5")
            found.pool5a = True

    # The test crop: the authors test at crop_size 513 (their training crop, 321, is not the test size).
    for layer in layers:
        for transform in layer.params.get("transform_param", []):
            phases = [rule.get("phase", [""])[0] for rule in layer.params.get("include", []) if isinstance(rule, dict)]
            if "crop_size" in transform and (not phases or "TEST" in phases):
                found.crop_size = int(transform["crop_size"][0])
    return found


def preprocessing_from_prototxt(layers: list[CaffeLayer]) -> Preprocessing | None:
    """Caffe's per-channel mean (BGR) from a data layer's transform_param, if the prototxt names one."""
    for layer in layers:
        for transform in layer.params.get("transform_param", []):
            means = transform.get("mean_value", [])
            if len(means) == 3:
                scale = float(transform.get("scale", ["1"])[0])
                return Preprocessing(mean=tuple(float(m) for m in means), std=(1.0 / scale,) * 3,
                                     channel_order="BGR")
    return None


# --- mapping -----------------------------------------------------------------------------------

def _shape(array: np.ndarray) -> str:
    return "×".join(str(d) for d in array.shape)


def _weight_and_bias(name: str, blobs: list[np.ndarray], shape: tuple[int, ...], what: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    if len(blobs) != 2:
        raise CaffeImportError(f"layer {name} has {len(blobs)} blobs; expected weights and bias")
    weight, bias = blobs
    if weight.shape != shape:
        raise CaffeImportError(f"layer {name} has weights {_shape(weight)}; {what} needs "
                               f"{'×'.join(map(str, shape))}")
    # Old models store a bias as 1×1×1×N.
    if bias.size != shape[0] or sum(d != 1 for d in bias.shape) > 1:
        raise CaffeImportError(f"layer {name} has bias {_shape(bias)}; {what} needs {shape[0]} values")
    return weight, bias.reshape(shape[0])


def _shared_copies(layers: list[CaffeLayer], warnings: list[str]) -> dict[str, list[np.ndarray]]:
    """Each weighted layer's blobs by base name; per-scale copies are checked against the first copy."""
    groups: dict[str, list[CaffeLayer]] = {}
    for layer in layers:
        if layer.blobs:
            base, _ = split_scale(layer.name)
            groups.setdefault(base, []).append(layer)
    shared = {}
    for base, copies in groups.items():
        first = next((layer for layer in copies if layer.name == base), copies[0])
        for other in copies:
            if other is first:
                continue
            same = len(other.blobs) == len(first.blobs) and all(
                a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first.blobs, other.blobs))
            if not same:
                warnings.append(f"{other.name} differs from {first.name}; the scales did not share weights, "
                                f"so {first.name} is used for every scale")
        shared[base] = first.blobs
    return shared


def _describe_tasks() -> str:
    return ", ".join(f"{name} ({task.num_classes})" for name, task in TASKS.items())


def _scale_layout(structure: Structure, layers: list[CaffeLayer], count: int, warnings: list[str]) -> list[str]:
    """The branch suffixes in Caffe's order when the graph does not say (old files without a Concat)."""
    copies = sorted({layer.name[len("fc7"):] for layer in layers
                     if layer.blobs and split_scale(layer.name)[0] == "fc7"}, key=structure.scale, reverse=True)
    if len(copies) == count:
        warnings.append("no Concat feeding att_conv1 found; assumed the features are concatenated as "
                        f"scales {[structure.scale(s) for s in copies]}")
        return copies
    if count == len(DEFAULT_SCALES):
        warnings.append(f"no scale layout found; assumed the paper's scales {list(DEFAULT_SCALES)}")
        return ["" if s == 1.0 else f"_res{str(s).replace('.', '')}" for s in DEFAULT_SCALES]
    raise CaffeImportError(f"att_fc weighs {count} scales but the model says nothing of which; "
                           "pass the model's --prototxt")


def convert(layers: list[CaffeLayer], *, task: str, structure: list[CaffeLayer] | None = None,
            fc8_layer: str | None = None, single_scale: bool = False
            ) -> tuple[MultiScaleSegmenter, dict]:
    """Map Caffe layers onto a ``vgg16_largefov`` model; returns the model and a description.

    ``structure`` is where connections are read from (a prototxt's layers; the caffemodel's own
    layers by default). ``single_scale`` keeps the shared network only, dropping the merge.
    """
    task_spec = get_task(task)
    warnings: list[str] = []
    weights = _shared_copies(layers, warnings)
    graph = analyse_structure(structure or layers)
    warnings += graph.warnings

    missing = [name for name, *_ in VGG_CONVS if name not in weights] + [n for n in ("fc6", "fc7") if n not in weights]
    if missing:
        found = ", ".join(sorted(weights)[:8]) or "none"
        raise CaffeImportError(f"not a VGG-16 DeepLab-LargeFOV model: no {', '.join(missing[:4])}"
                               f"{'…' if len(missing) > 4 else ''} (weighted layers found: {found})")

    state: dict[str, np.ndarray] = {}
    for name, index, out_channels, in_channels in VGG_CONVS:
        w, b = _weight_and_bias(name, weights[name], (out_channels, in_channels, 3, 3), "VGG-16")
        state[f"net.backbone.features.{index}.weight"], state[f"net.backbone.features.{index}.bias"] = w, b

    fc6_weight = weights["fc6"][0]
    if fc6_weight.ndim != 4 or fc6_weight.shape[1:] != (512, 3, 3):
        raise CaffeImportError(f"layer fc6 has weights {_shape(fc6_weight)}; DeepLab-LargeFOV's fc6 is "
                               f"{LARGEFOV_FC_CHANNELS}×512×3×3 (dilation 12); other DeepLab variants "
                               "are not supported")
    fc_channels = int(fc6_weight.shape[0])
    w, b = _weight_and_bias("fc6", weights["fc6"], (fc_channels, 512, 3, 3), "DeepLab-LargeFOV")
    state["net.backbone.fc6.weight"], state["net.backbone.fc6.bias"] = w, b
    w, b = _weight_and_bias("fc7", weights["fc7"], (fc_channels, fc_channels, 1, 1), "DeepLab-LargeFOV")
    state["net.backbone.fc7.weight"], state["net.backbone.fc7.bias"] = w, b

    fc8_names = [name for name in weights if name.startswith("fc8")]
    if fc8_layer is not None:
        if fc8_layer not in weights:
            raise CaffeImportError(f"no weighted layer {fc8_layer!r}; fc8 layers here: "
                                   f"{', '.join(fc8_names) or 'none'}")
        fc8_names = [fc8_layer]
    if not fc8_names:
        raise CaffeImportError("no fc8 classifier layer (fc8_*) with weights: this looks like an ImageNet "
                               "initialisation, not a trained segmentation model")
    if len(fc8_names) > 1:
        raise CaffeImportError(f"several fc8 classifiers ({', '.join(fc8_names)}); choose one with --fc8")
    fc8 = fc8_names[0]
    fc8_weight = weights[fc8][0]
    num_classes = int(fc8_weight.shape[0]) if fc8_weight.ndim == 4 else -1
    w, b = _weight_and_bias(fc8, weights[fc8], (max(num_classes, 1), fc_channels, 1, 1), "a classifier on fc7")
    if num_classes != task_spec.num_classes:
        fitting = [name for name, spec in TASKS.items() if spec.num_classes == num_classes]
        hint = (f"use --task {fitting[0]} if its classes are {', '.join(TASKS[fitting[0]].classes)}" if fitting else
                f"PartCam's tasks are {_describe_tasks()}; a model for another label set (e.g. PASCAL VOC's 21 "
                f"classes) has no PartCam task to display it")
        raise CaffeImportError(f"{fc8} predicts {num_classes} classes but task {task!r} has "
                               f"{task_spec.num_classes} ({', '.join(task_spec.classes)}); {hint}")
    state["net.classifier.weight"], state["net.classifier.bias"] = w, b

    has_attention = [name in weights for name in ATTENTION_LAYERS]
    if any(has_attention) and not all(has_attention):
        raise CaffeImportError(f"attention layers incomplete: found only "
                               f"{', '.join(n for n, h in zip(ATTENTION_LAYERS, has_attention) if h)}")
    if all(has_attention):
        merge = "attention"
    elif graph.merge == "attention":
        raise CaffeImportError("the net merges scales by attention but the .caffemodel has no att_conv1/att_fc "
                               "weights")
    elif graph.merge == "max":
        merge = "max"
    else:
        merge = "single"
        copies = sorted({layer.name for layer in layers if layer.blobs and split_scale(layer.name)[0] == fc8
                         and layer.name != fc8})
        if copies and not single_scale:
            raise CaffeImportError(f"{fc8} has copies at other scales ({', '.join(copies)}) but no merge PartCam "
                                   "knows joins them (attention, or Eltwise MAX); pass the model's --prototxt, "
                                   "or --single-scale to keep scale 1 only")
    if single_scale and merge != "single":
        warnings.append(f"{merge} over scales dropped: imported as a single-scale model")
        merge = "single"

    suffixes: list[str] = [""]
    attention_width: int | None = None
    if merge == "attention":
        score_weight = weights["att_fc"][0]
        conv_weight = weights["att_conv1"][0]
        if score_weight.ndim != 4 or conv_weight.ndim != 4:
            raise CaffeImportError(f"att_conv1 {_shape(conv_weight)} / att_fc {_shape(score_weight)}: expected 4-D "
                                   "convolution weights")
        num_scales, attention_width = int(score_weight.shape[0]), int(conv_weight.shape[0])
        feature_order = graph.merge_order or _scale_layout(graph, layers, num_scales, warnings)
        score_order = graph.score_order or feature_order
        caffe_scales = [graph.scale(s) for s in feature_order]
        if (len(feature_order) != num_scales or 1.0 not in caffe_scales or len(set(caffe_scales)) != num_scales
                or sorted(score_order) != sorted(feature_order)):
            raise CaffeImportError(f"att_fc weighs {num_scales} scales but the features entering att_conv1 are at "
                                   f"scales {caffe_scales}" + (f" and the attention multiplies scales "
                                   f"{[graph.scale(s) for s in score_order]}" if graph.score_order else ""))
        # PartCam runs scale 1 first; keep Caffe's order otherwise, and move att weights to match.
        first = caffe_scales.index(1.0)
        suffixes = [feature_order[first]] + [s for i, s in enumerate(feature_order) if i != first]
        feature_index = [feature_order.index(s) for s in suffixes]
        score_index = [score_order.index(s) for s in suffixes]
        w, b = _weight_and_bias("att_conv1", weights["att_conv1"],
                                (attention_width, fc_channels * num_scales, 3, 3),
                                f"attention over {num_scales} scales of {fc_channels}-channel fc7 features")
        w = w.reshape(attention_width, num_scales, fc_channels, 3, 3)[:, feature_index]
        state["merge.conv.weight"], state["merge.conv.bias"] = w.reshape(attention_width, -1, 3, 3), b
        w, b = _weight_and_bias("att_fc", weights["att_fc"], (num_scales, attention_width, 1, 1),
                                f"attention over {num_scales} scales")
        state["merge.score.weight"], state["merge.score.bias"] = w[score_index], b[score_index]
    elif merge == "max":
        merged = graph.merge_order or [""]
        caffe_scales = [graph.scale(s) for s in merged]
        if 1.0 not in caffe_scales or len(set(caffe_scales)) != len(caffe_scales):
            raise CaffeImportError(f"Eltwise MAX merges scales {caffe_scales}; PartCam needs distinct scales "
                                   "including 1")
        first = caffe_scales.index(1.0)
        suffixes = [merged[first]] + [s for i, s in enumerate(merged) if i != first]
    scales = [graph.scale(s) for s in suffixes]

    known = {name for name, *_ in VGG_CONVS} | {"fc6", "fc7", fc8, *ATTENTION_LAYERS}
    ignored = sorted(name for name in weights if name not in known)

    backbone_kwargs: dict = {}
    if fc_channels != LARGEFOV_FC_CHANNELS:
        backbone_kwargs["fc_channels"] = fc_channels
    if graph.pool5a:
        backbone_kwargs["pool5a"] = True
    model = build_model(task=task, backbone="vgg16_largefov", merge=merge, scales=scales,
                        attention_width=attention_width, backbone_kwargs=backbone_kwargs or None,
                        num_classes=num_classes)
    tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()}
    model.load_state_dict(tensors, strict=True)
    model.eval()
    chains = []
    for suffix, scale in zip(suffixes, scales):
        branch = graph.branches.get(suffix)
        chains.append(branch.chain if branch is not None and branch.chain is not None else chain_for_scale(scale))
    inference = {"resize": "caffe", "pad": "mean", "input_interp": chains}
    info = {"merge": merge, "scales": scales, "num_classes": num_classes, "fc8_layer": fc8,
            "fc_channels": fc_channels, "attention_width": attention_width, "warnings": warnings,
            "ignored_layers": ignored, "pool5a": graph.pool5a, "inference": inference,
            "crop_size": graph.crop_size}
    return model, info


def import_caffemodel(caffemodel: str | Path, *, task: str, out: str | Path | None = None,
                      prototxt: str | Path | None = None, fc8_layer: str | None = None,
                      single_scale: bool = False, input_size: int | None = None,
                      defines: dict[str, str] | None = None) -> ImportResult:
    """Read a .caffemodel (and optionally its .prototxt), convert it and, if ``out`` is given, save it.

    ``input_size`` defaults to the prototxt's test crop, else the authors' 513. ``defines`` fills
    the prototxt's ``${NAME}`` placeholders; the rest are inferred from the .caffemodel's names.
    """
    caffemodel = Path(caffemodel)
    layer_format, layers = read_caffemodel(caffemodel)
    structure = None
    filled: dict[str, str] = {}
    if prototxt is not None:
        structure = layers_from_prototxt(prototxt, defines)
        placeholders = _placeholders(structure)
        if placeholders:
            filled = template_values([n for layer in structure for n in (layer.name, *layer.tops)],
                                     [layer.name for layer in layers])
            if filled:
                structure = layers_from_prototxt(prototxt, {**filled, **(defines or {})})
    model, info = convert(layers, task=task, structure=structure, fc8_layer=fc8_layer, single_scale=single_scale)
    warnings = info["warnings"]
    if structure is not None and _placeholders(structure):
        warnings.append(f"prototxt placeholders not filled: {', '.join(_placeholders(structure))} "
                        "(give them with --define NAME=VALUE)")

    preprocessing = CAFFE_VGG
    if structure is not None:
        declared = preprocessing_from_prototxt(structure)
        if declared is not None and declared != CAFFE_VGG:
            warnings.append(f"prototxt mean {declared.mean} (BGR) differs from DeepLab's usual "
                            f"{CAFFE_VGG.mean}; using the prototxt's")
            preprocessing = declared
    size = int(input_size or info["crop_size"] or CAFFE_TEST_CROP)
    if (size - 1) % 8:
        warnings.append(f"input size {size} is not 8k + 1 (like 321 or 513): Caffe's Interp layers would not "
                        "line the scales up exactly")

    model.preprocessing = preprocessing
    inference = info["inference"]
    digest = hashlib.sha256(caffemodel.read_bytes()).hexdigest()
    notes = (f"Imported from Caffe model {caffemodel.name} (sha256 {digest[:16]}…, {layer_format!r} format), "
             f"classifier {info['fc8_layer']}, merge {info['merge']}, scales {info['scales']}"
             f"{', pool5a' if info['pool5a'] else ''}. Caffe preprocessing: BGR, mean subtraction, no std "
             f"scaling; engines resize as Caffe's Interp layers do (corners aligned) and pad frames "
             f"bottom-right with the mean colour, at {size} px as the authors tested.")
    metadata = dict(preprocessing=preprocessing, trained=True, input_size=size, inference=inference,
                    trained_on=f"the paper's released Caffe model {caffemodel.name}", notes=notes)
    model.metadata = metadata_for(model, **metadata)
    result = ImportResult(checkpoint=None, model=model, layer_format=layer_format, task=task, merge=info["merge"],
                          scales=info["scales"], num_classes=info["num_classes"], fc8_layer=info["fc8_layer"],
                          fc_channels=info["fc_channels"], attention_width=info["attention_width"],
                          preprocessing=preprocessing, input_size=size, inference=inference, pool5a=info["pool5a"],
                          warnings=warnings, ignored_layers=info["ignored_layers"], sha256=digest)
    if out is not None:
        save_checkpoint(out, model, **metadata)
        result.checkpoint = Path(out)
    return result
