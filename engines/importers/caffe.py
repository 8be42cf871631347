"""Import the paper's released Caffe models (DeepLab-LargeFOV, with or without attention to scale).

A ``.caffemodel`` is a binary ``NetParameter``: every layer with its name, its connections and
its weight blobs. This module reads one with protobuf (no Caffe needed), maps the VGG-16
DeepLab-LargeFOV layers and the attention layers onto PartCam's ``vgg16_largefov`` model and
writes a PartCam checkpoint that records Caffe's preprocessing (BGR, mean subtraction only).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import DecodeError

from ..checkpoint import save_checkpoint
from ..model import DEFAULT_SCALES, MultiScaleSegmenter, build_model
from ..preprocessing import CAFFE_VGG, Preprocessing
from ..tasks import TASKS, get_task
from . import caffe_pb

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
_SCALE_SUFFIX = re.compile(r"_res(\d+)")


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


def read_caffemodel(path: str | Path) -> tuple[str, list[CaffeLayer]]:
    """Parse a binary .caffemodel into its layers; returns (layer format, layers)."""
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
                             [blob_to_array(b, f"{path}: layer {layer.name}") for b in layer.blobs])
                  for layer in net.layer]
    elif len(net.layers):
        layer_format = "layers"
        type_names = caffe_pb.V1LayerParameter.LayerType
        layers = []
        for layer in net.layers:
            kind = type_names.Name(layer.type) if layer.type in type_names.values() else str(layer.type)
            layers.append(CaffeLayer(layer.name, kind, list(layer.bottom), list(layer.top),
                                     [blob_to_array(b, f"{path}: layer {layer.name}") for b in layer.blobs]))
    else:
        raise CaffeImportError(f"{path}: not a Caffe .caffemodel (no layers found)")
    if not any(layer.name for layer in layers):
        raise CaffeImportError(f"{path}: not a Caffe .caffemodel (its layers have no names)")
    return layer_format, layers


# --- prototxt (text format), read minimally ----------------------------------------------------

_PROTOTXT_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}:]|[^\s{}:"\']+')


def parse_prototxt(text: str) -> dict[str, list]:
    """Protobuf text format as nested dicts of lists: ``{"layer": [{"name": ["fc7"], ...}, ...]}``.

    Types are not checked: numbers stay strings except where the caller converts them.
    """
    text = re.sub(r"#[^\n]*", "", text)
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


def layers_from_prototxt(path: str | Path) -> list[CaffeLayer]:
    """The layers (names, types, connections; no weights) of a .prototxt, in either layer format."""
    try:
        net = parse_prototxt(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CaffeImportError(f"{path}: cannot read prototxt ({exc})") from None
    layers = []
    for entry in net.get("layer", []) + net.get("layers", []):
        if not isinstance(entry, dict):
            continue
        layers.append(CaffeLayer(entry.get("name", [""])[0], entry.get("type", [""])[0],
                                 list(entry.get("bottom", [])), list(entry.get("top", [])), [], entry))
    if not layers:
        raise CaffeImportError(f"{path}: no layers in this prototxt")
    return layers


# --- mapping -----------------------------------------------------------------------------------

def scale_from_suffix(digits: str) -> float:
    """DeepLab's scale suffixes: ``res075`` → 0.75, ``res05`` → 0.5, ``res1`` → 1, ``res125`` → 1.25."""
    return float(f"{digits[0]}.{digits[1:]}") if len(digits) > 1 else float(digits)


def split_scale(name: str) -> tuple[str, float]:
    """``fc7_res075`` → (``fc7``, 0.75); names without a suffix are the scale-1 copy."""
    match = _SCALE_SUFFIX.search(name)
    if not match or match.end() != len(name):
        return name, 1.0
    return name[: match.start()], scale_from_suffix(match.group(1))


def _blob_scale(blob: str) -> float | None:
    match = _SCALE_SUFFIX.search(blob)
    return scale_from_suffix(match.group(1)) if match else None


def attention_scale_order(layers: list[CaffeLayer]) -> list[float] | None:
    """The scales in the order their fc7 features enter ``att_conv1`` (from the Concat feeding it)."""
    by_top = {top: layer for layer in layers for top in layer.tops if layer.type.lower() == "concat"}
    attention = next((layer for layer in layers if layer.name == "att_conv1" and layer.bottoms), None)
    if attention is None or attention.bottoms[0] not in by_top:
        return None
    order = []
    for bottom in by_top[attention.bottoms[0]].bottoms:
        scale = _blob_scale(bottom)
        order.append(1.0 if scale is None else scale)
    return order


def interp_scales(layers: list[CaffeLayer]) -> dict[str, float]:
    """Scale factors of DeepLab Interp layers given as zoom/shrink factors (prototxt only)."""
    scales = {}
    for layer in layers:
        if layer.type != "Interp" or "interp_param" not in layer.params:
            continue
        interp = layer.params["interp_param"][0]
        zoom = float(interp.get("zoom_factor", ["1"])[0])
        shrink = float(interp.get("shrink_factor", ["1"])[0])
        if "height" not in interp and shrink != 1:
            scales[layer.name] = zoom / shrink
    return scales


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


def convert(layers: list[CaffeLayer], *, task: str, structure: list[CaffeLayer] | None = None,
            fc8_layer: str | None = None, single_scale: bool = False
            ) -> tuple[MultiScaleSegmenter, dict]:
    """Map Caffe layers onto a ``vgg16_largefov`` model; returns the model and a description.

    ``structure`` is where connections are read from (a prototxt's layers; the caffemodel's own
    layers by default). ``single_scale`` keeps the shared network only, dropping the attention.
    """
    task_spec = get_task(task)
    warnings: list[str] = []
    weights = _shared_copies(layers, warnings)

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
    merge = "attention" if all(has_attention) and not single_scale else "single"
    scales: list[float] = [1.0]
    attention_width: int | None = None
    if merge == "attention":
        score_weight = weights["att_fc"][0]
        conv_weight = weights["att_conv1"][0]
        if score_weight.ndim != 4 or conv_weight.ndim != 4:
            raise CaffeImportError(f"att_conv1 {_shape(conv_weight)} / att_fc {_shape(score_weight)}: expected 4-D "
                                   "convolution weights")
        num_scales, attention_width = int(score_weight.shape[0]), int(conv_weight.shape[0])
        caffe_order = attention_scale_order(structure or layers)
        if caffe_order is None:
            copies = sorted({split_scale(layer.name)[1] for layer in layers if split_scale(layer.name)[0] == "fc7"},
                            reverse=True)
            if len(copies) == num_scales:
                caffe_order = copies
                warnings.append("no Concat feeding att_conv1 found; assumed the features are concatenated as "
                                f"scales {copies}")
            elif num_scales == len(DEFAULT_SCALES):
                caffe_order = list(DEFAULT_SCALES)
                warnings.append(f"no scale layout found; assumed the paper's scales {list(DEFAULT_SCALES)}")
            else:
                raise CaffeImportError(f"att_fc weighs {num_scales} scales but the model says nothing of which; "
                                       "pass the model's --prototxt")
        if len(caffe_order) != num_scales or 1.0 not in caffe_order or len(set(caffe_order)) != num_scales:
            raise CaffeImportError(f"att_fc weighs {num_scales} scales but the features entering att_conv1 are at "
                                   f"scales {caffe_order}")
        # PartCam runs scale 1 first; keep Caffe's order otherwise, and move att weights to match.
        order = [caffe_order.index(1.0)] + [i for i, s in enumerate(caffe_order) if s != 1.0]
        scales = [caffe_order[i] for i in order]
        w, b = _weight_and_bias("att_conv1", weights["att_conv1"],
                                (attention_width, fc_channels * num_scales, 3, 3),
                                f"attention over {num_scales} scales of {fc_channels}-channel fc7 features")
        w = w.reshape(attention_width, num_scales, fc_channels, 3, 3)[:, order].reshape(attention_width, -1, 3, 3)
        state["merge.conv.weight"], state["merge.conv.bias"] = w, b
        w, b = _weight_and_bias("att_fc", weights["att_fc"], (num_scales, attention_width, 1, 1),
                                f"attention over {num_scales} scales")
        state["merge.score.weight"], state["merge.score.bias"] = w[order], b[order]
    elif all(has_attention):
        warnings.append("attention layers dropped: imported as a single-scale model")

    known = {name for name, *_ in VGG_CONVS} | {"fc6", "fc7", fc8, *ATTENTION_LAYERS}
    ignored = sorted(name for name in weights if name not in known)

    model = build_model(task=task, backbone="vgg16_largefov", merge=merge, scales=scales,
                        attention_width=attention_width,
                        backbone_kwargs={"fc_channels": fc_channels} if fc_channels != LARGEFOV_FC_CHANNELS else None,
                        num_classes=num_classes)
    tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()}
    model.load_state_dict(tensors, strict=True)
    model.eval()
    info = {"merge": merge, "scales": scales, "num_classes": num_classes, "fc8_layer": fc8,
            "fc_channels": fc_channels, "attention_width": attention_width, "warnings": warnings,
            "ignored_layers": ignored}
    return model, info


def import_caffemodel(caffemodel: str | Path, *, task: str, out: str | Path | None = None,
                      prototxt: str | Path | None = None, fc8_layer: str | None = None,
                      single_scale: bool = False, input_size: int = 321) -> ImportResult:
    """Read a .caffemodel (and optionally its .prototxt), convert it and, if ``out`` is given, save it."""
    caffemodel = Path(caffemodel)
    layer_format, layers = read_caffemodel(caffemodel)
    structure = layers_from_prototxt(prototxt) if prototxt is not None else None
    model, info = convert(layers, task=task, structure=structure, fc8_layer=fc8_layer, single_scale=single_scale)
    warnings = info["warnings"]

    preprocessing = CAFFE_VGG
    if structure is not None:
        declared = preprocessing_from_prototxt(structure)
        if declared is not None and declared != CAFFE_VGG:
            warnings.append(f"prototxt mean {declared.mean} (BGR) differs from DeepLab's usual "
                            f"{CAFFE_VGG.mean}; using the prototxt's")
            preprocessing = declared
        resampled = interp_scales(structure)
        for layer_name, factor in resampled.items():
            suffix_scale = _blob_scale(layer_name)
            if suffix_scale is not None and abs(suffix_scale - factor) > 1e-6:
                warnings.append(f"Interp layer {layer_name} resizes by {factor:g}, not {suffix_scale:g}")

    model.preprocessing = preprocessing
    digest = hashlib.sha256(caffemodel.read_bytes()).hexdigest()
    notes = (f"Imported from Caffe model {caffemodel.name} (sha256 {digest[:16]}…, {layer_format!r} format), "
             f"classifier {info['fc8_layer']}, merge {info['merge']}, scales {info['scales']}. "
             "Caffe preprocessing: BGR, mean subtraction, no std scaling. PartCam resamples with bilinear "
             "align_corners=False; Caffe's Interp layers align corners, so outputs differ slightly from Caffe's.")
    result = ImportResult(checkpoint=None, model=model, layer_format=layer_format, task=task, merge=info["merge"],
                          scales=info["scales"], num_classes=info["num_classes"], fc8_layer=info["fc8_layer"],
                          fc_channels=info["fc_channels"], attention_width=info["attention_width"],
                          preprocessing=preprocessing, warnings=warnings, ignored_layers=info["ignored_layers"],
                          sha256=digest)
    if out is not None:
        save_checkpoint(out, model, preprocessing=preprocessing, trained=True,
                        trained_on=f"the paper's released Caffe model {caffemodel.name}",
                        input_size=input_size, notes=notes)
        result.checkpoint = Path(out)
    return result
