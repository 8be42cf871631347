"""The authors' Caffe net definitions, rebuilt here by structure, and a Caffe forward pass to check against.

``attention_net`` follows yangyi02/segmentation_attention's
``exper/voc10_part/config/vgg128_noup_pool3_20M_largewin_attention47/test.prototxt`` layer for
layer (templated ``${EXP}``/``${NUM_LABELS}`` names, ``hole``, ``param { name }`` sharing, the
``shrink_data05``/``shrink_data075`` Interps, fc7/fc8 brought back by Interp, Concat → att_conv1 →
ReLU → Dropout → att_fc → Softmax → Slice → SpatialProduct → Eltwise SUM → ``fc8_interp``);
``max_net`` is its ``…attention30`` variant (Eltwise MAX over the fc8 copies); ``largefov_v1``
is DeepLab v1's released LargeFOV test net in the V1 ``layers`` format with ``pool5a``.

From one description this module writes the prototxt text, the binary .caffemodel (with
Caffe's field numbers, encoded by hand so a wrong number in the importer's caffe.proto cannot
cancel out) and runs the net with Caffe's layer definitions (``caffe_forward``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from engines.importers.caffe import VGG_CONVS

EXP, NUM_LABELS = "voc10_part", 7  # what the authors' run script fills in for PASCAL-Person-Part
MEAN_BGR = (104.008, 116.669, 122.675)
FC = 32  # fc6/fc7 width (1024 in the released models; narrow keeps files small)
ATT = 16  # att_conv1 width (512 in the released models)


@dataclass
class Layer:
    name: str
    type: str
    bottom: list[str]
    top: list[str]
    params: dict = field(default_factory=dict)  # e.g. {"convolution_param": {"num_output": 64, ...}}
    shared: tuple[str, ...] = ()  # param { name } of its blobs (weights shared across scales)
    include_test: bool = False


# --- the nets -----------------------------------------------------------------------------------


def _conv(name, bottom, top, out, kernel, pad=0, hole=1, shared=()) -> Layer:
    param = {"num_output": out, "kernel_size": kernel}
    if pad:
        param["pad"] = pad
    if hole != 1:
        param["hole"] = hole  # DeepLab's name for dilation
    return Layer(name, "Convolution", [bottom], [top], {"convolution_param": param}, shared)


def _inplace(name, kind, blob, **params) -> Layer:
    return Layer(name, kind, [blob], [blob], params)


def _pool(name, bottom, top, stride, method="MAX") -> Layer:
    return Layer(name, "Pooling", [bottom], [top],
                 {"pooling_param": {"pool": method, "kernel_size": 3, "stride": stride, "pad": 1}})


def _interp(name, bottom, top, **factors) -> Layer:
    return Layer(name, "Interp", [bottom], [top], {"interp_param": {**factors, "pad_beg": 0, "pad_end": 0}})


def _data() -> Layer:
    return Layer("data", "ImageSegData", [], ["data"], {
        "image_data_param": {"root_folder": "${DATA_ROOT}", "source": "${EXP}/list/${TEST_SET}.txt", "batch_size": 1},
        "transform_param": {"mean_value": list(MEAN_BGR), "crop_size": 513, "mirror": False}}, include_test=True)


def vgg_trunk(suffix: str, data: str, *, pool5a: bool = False, share: bool = True) -> list[Layer]:
    """conv1_1 … fc7 (+ ReLU, Dropout) of one scale copy, with the released prototxt's names."""
    layers, blob = [], data
    pools = {"conv1_2": 2, "conv2_2": 2, "conv3_3": 2, "conv4_3": 1, "conv5_3": 1}
    for name, _, out, _ in VGG_CONVS:
        hole = 2 if name.startswith("conv5") else 1
        shared = (f"{name}_w", f"{name}_b") if share else ()
        layers.append(_conv(name + suffix, blob, name + suffix, out, 3, pad=hole, hole=hole, shared=shared))
        layers.append(_inplace(f"relu{name[4:]}{suffix}", "ReLU", name + suffix))
        blob = name + suffix
        if name in pools:
            pool = f"pool{name[4]}{suffix}"
            layers.append(_pool(pool, blob, pool, pools[name]))
            blob = pool
    if pool5a:
        layers.append(_pool("pool5a" + suffix, blob, "pool5a" + suffix, 1, "AVE"))
        blob = "pool5a" + suffix
    for name, bottom, kernel, pad, hole in (("fc6", blob, 3, 12, 12), ("fc7", "fc6" + suffix, 1, 0, 1)):
        shared = (f"{name}_w", f"{name}_b") if share else ()
        layers.append(_conv(name + suffix, bottom, name + suffix, FC, kernel, pad=pad, hole=hole, shared=shared))
        layers.append(_inplace(f"relu{name[2]}{suffix}", "ReLU", name + suffix))
        layers.append(_inplace(f"drop{name[2]}{suffix}", "Dropout", name + suffix,
                               dropout_param={"dropout_ratio": 0.5}))
    return layers


SCALES = (("", "data"), ("_res05", "shrink_data05"), ("_res075", "shrink_data075"))
BACK_UP = {"_res05": {"zoom_factor": 2}, "_res075": {"zoom_factor": 4, "shrink_factor": 3}}


def _multiscale_trunks() -> list[Layer]:
    layers = [_data(), _interp("shrink_data05", "data", "shrink_data05", shrink_factor=2),
              _interp("shrink_data075", "data", "shrink_data075", shrink_factor=4, zoom_factor=3)]
    for suffix, data in SCALES:
        layers += vgg_trunk(suffix, data)
    for suffix, _ in SCALES:
        fc8 = f"fc8_${{EXP}}{suffix}"
        layers.append(_conv(fc8, "fc7" + suffix, fc8, "${NUM_LABELS}", 1, shared=("fc8_w", "fc8_b")))
    return layers


def _output(bottom: str) -> list[Layer]:
    return [_interp("fc8_interp", bottom, "fc8_interp", zoom_factor=8),
            Layer("fc8_mat", "MatWrite", ["fc8_interp"], [], {"mat_write_param": {
                "prefix": "${FEATURE_DIR}/${TEST_SET}/fc8/", "source": "${EXP}/list/${TEST_SET}_id.txt"}},
                include_test=True)]


def attention_net(pairing: tuple[str, str, str] = ("", "_res075", "_res05")) -> list[Layer]:
    """The attention model (attention47). ``pairing``: the scale each attention slice multiplies
    (the released file pairs them in the Concat's order)."""
    layers = _multiscale_trunks()
    for suffix in ("_res05", "_res075"):
        layers.append(_interp(f"fc7{suffix}_interp", "fc7" + suffix, f"fc7{suffix}_interp", **BACK_UP[suffix]))
    for suffix in ("_res05", "_res075"):
        layers.append(_interp(f"fc8_${{EXP}}{suffix}_interp", f"fc8_${{EXP}}{suffix}", f"fc8_${{EXP}}{suffix}_interp",
                              **BACK_UP[suffix]))
    layers += [
        Layer("fc7_concat", "Concat", ["fc7", "fc7_res075_interp", "fc7_res05_interp"], ["fc7_concat"],
              {"concat_param": {"axis": 1}}),
        _conv("att_conv1", "fc7_concat", "att_conv1", ATT, 3, pad=1),
        _inplace("relu_att_conv1", "ReLU", "att_conv1"),
        _inplace("drop_att_conv1", "Dropout", "att_conv1", dropout_param={"dropout_ratio": 0.5}),
        _conv("att_fc", "att_conv1", "att_fc", 3, 1),
        Layer("attention", "Softmax", ["att_fc"], ["attention"]),
        Layer("slice_attention", "Slice", ["attention"], ["attention1", "attention2", "attention3"],
              {"slice_param": {"axis": 1, "slice_point": [1, 2]}}),
    ]
    products = []
    for index, suffix in enumerate(pairing):
        scores = "fc8_${EXP}" + (f"{suffix}_interp" if suffix else "")
        product = f"fc8{suffix}_product"
        layers.append(Layer(product, "SpatialProduct", [scores, f"attention{index + 1}"], [product]))
        products.append(product)
    layers.append(Layer("fc8_fusion", "Eltwise", products, ["fc8_fusion"], {"eltwise_param": {"operation": "SUM"}}))
    return layers + _output("fc8_fusion")


def max_net() -> list[Layer]:
    """The max-over-scales model (attention30): Eltwise MAX over the fc8 copies on the scale-1 grid."""
    layers = _multiscale_trunks()
    for suffix in ("_res05", "_res075"):
        layers.append(_interp(f"fc8_${{EXP}}{suffix}_interp", f"fc8_${{EXP}}{suffix}", f"fc8_${{EXP}}{suffix}_interp",
                              **BACK_UP[suffix]))
    layers.append(Layer("fc8_fusion", "Eltwise", ["fc8_${EXP}", "fc8_${EXP}_res075_interp", "fc8_${EXP}_res05_interp"],
                        ["fc8_fusion"], {"eltwise_param": {"operation": "MAX"}}))
    return layers + _output("fc8_fusion")


def largefov_v1() -> list[Layer]:
    """DeepLab v1's released LargeFOV test net: one scale, pool5a before fc6, no weight sharing."""
    layers = [_data(), *vgg_trunk("", "data", pool5a=True, share=False),
              _conv("fc8_${EXP}", "fc7", "fc8_${EXP}", "${NUM_LABELS}", 1)]
    return layers + _output("fc8_${EXP}")


# --- prototxt text ------------------------------------------------------------------------------

V1_NAMES = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "Pooling": "POOLING", "Dropout": "DROPOUT",
            "Interp": "INTERP", "ImageSegData": "IMAGE_SEG_DATA", "MatWrite": "MAT_WRITE", "Concat": "CONCAT",
            "Softmax": "SOFTMAX", "Slice": "SLICE", "Eltwise": "ELTWISE", "SpatialProduct": "SPATIAL_PRODUCT"}


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value not in ("MAX", "AVE", "SUM", "${NUM_LABELS}"):
        return f'"{value}"'
    return str(value)


def to_prototxt(layers: list[Layer], *, v1: bool = False) -> str:
    """The net as the authors' text files write it (``layer {}`` or V1 ``layers {}``)."""
    lines = ['name: "${NET_ID}"', ""]
    for layer in layers:
        kind = f"type: {V1_NAMES[layer.type]}" if v1 else f'type: "{layer.type}"'
        lines += ["layers {" if v1 else "layer {", f'  name: "{layer.name}"', f"  {kind}"]
        lines += [f'  bottom: "{b}"' for b in layer.bottom] + [f'  top: "{t}"' for t in layer.top]
        for name in layer.shared:
            lines.append(f'  param: "{name}"' if v1 else f'  param {{\n    name: "{name}"\n    lr_mult: 1\n  }}')
        for block, values in layer.params.items():
            lines.append(f"  {block} {{")
            if "hole" in values:  # as in the released files, which kept the old settings as comments
                lines.append("    #pad: 1")
            for key, value in values.items():
                for item in value if isinstance(value, list) else [value]:
                    lines.append(f"    {key}: {_value(item)}")
            lines.append("  }")
        if layer.include_test:
            lines.append("  include: { phase: TEST }")
        lines.append("}")
    return "\n".join(lines) + "\n"


def fill(text: str) -> str:
    return text.replace("${EXP}", EXP).replace("${NUM_LABELS}", str(NUM_LABELS))


# --- binary .caffemodel --------------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def integer(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def blob_bytes(array: np.ndarray, *, legacy: bool = False, double: bool = False) -> bytes:
    """BlobProto: shape = 7 (BlobShape.dim = 1, packed) or num/channels/height/width = 1..4;
    data = 5, double_data = 8."""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        header = b"".join(integer(number, dim) for number, dim in zip((1, 2, 3, 4), dims))
    else:
        header = delimited(7, delimited(1, b"".join(varint(d) for d in array.shape)))
    values = array.astype("<f8" if double else "<f4").tobytes()
    return header + delimited(8 if double else 5, values)


# Caffe's (DeepLab's) field numbers: block → (LayerParameter field, V1LayerParameter field, {key: number}).
ENUMS = {"MAX": 0, "AVE": 1, "PROD": 0, "SUM": 1}
PARAM_FIELDS = {
    "convolution_param": (106, 10, {"num_output": 1, "pad": 3, "kernel_size": 4, "hole": 17}),
    "pooling_param": (121, 19, {"pool": 1, "kernel_size": 2, "stride": 3, "pad": 4}),
    "eltwise_param": (110, 24, {"operation": 1}),
    "slice_param": (126, 31, {"axis": 3, "slice_point": 2}),
    "interp_param": (138, None, {"zoom_factor": 3, "shrink_factor": 4, "pad_beg": 5, "pad_end": 6}),
    "transform_param": (100, 36, {"mean_value": 5, "crop_size": 3, "mirror": 2}),
}
V1_TYPES = {"Convolution": 4, "ReLU": 18, "Pooling": 17, "Dropout": 6, "Concat": 3, "Softmax": 20, "Slice": 33,
            "Eltwise": 25, "Data": 5}
EltwiseOp = {"MAX": 2, "SUM": 1, "PROD": 0}


def _param_bytes(block: str, values: dict, v1: bool) -> bytes:
    if block == "eltwise_param" and isinstance(values.get("operation"), str):
        values = {**values, "operation": EltwiseOp[values["operation"]]}
    if block not in PARAM_FIELDS:
        return b""
    layer_number, v1_number, numbers = PARAM_FIELDS[block]
    number = v1_number if v1 else layer_number
    if number is None:
        return b""
    body = b""
    for key, value in values.items():
        for item in value if isinstance(value, list) else [value]:
            if key not in numbers or (isinstance(item, str) and item not in ENUMS):
                continue  # ${NUM_LABELS}: Caffe stores the filled number; not needed for the structure
            if key == "mean_value":
                body += varint(numbers[key] << 3 | 5) + np.float32(item).tobytes()
            else:
                body += integer(numbers[key], ENUMS[item] if isinstance(item, str) else int(item))
    return delimited(number, body)


def layer_bytes(layer: Layer, blobs: list[bytes], *, v1: bool = False) -> bytes:
    """One entry of NetParameter.layer (= 100) or, with ``v1``, of NetParameter.layers (= 2)."""
    name = fill(layer.name)
    bottoms, tops = [fill(b) for b in layer.bottom], [fill(t) for t in layer.top]
    params = b"".join(_param_bytes(block, values, v1) for block, values in layer.params.items())
    if v1:  # V1LayerParameter: bottom = 2, top = 3, name = 4, type = 5 (enum), blobs = 6, param = 1001
        body = [*(delimited(2, b.encode()) for b in bottoms), *(delimited(3, t.encode()) for t in tops),
                delimited(4, name.encode()), integer(5, V1_TYPES.get(layer.type, 0)),
                *(delimited(6, b) for b in blobs), *(delimited(1001, s.encode()) for s in layer.shared), params]
        return delimited(2, b"".join(body))
    # LayerParameter: name = 1, type = 2, bottom = 3, top = 4, param = 6 (ParamSpec.name = 1), blobs = 7
    body = [delimited(1, name.encode()), delimited(2, layer.type.encode()),
            *(delimited(3, b.encode()) for b in bottoms), *(delimited(4, t.encode()) for t in tops),
            *(delimited(6, delimited(1, s.encode())) for s in layer.shared), *(delimited(7, b) for b in blobs), params]
    return delimited(100, b"".join(body))


def weight_name(layer: Layer) -> str:
    """The key of a layer's weights: shared copies use their scale-1 name."""
    name = fill(layer.name)
    for suffix, _ in SCALES[1:]:
        if layer.shared and name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def random_weights(layers: list[Layer], seed: int = 7) -> dict[str, list[np.ndarray]]:
    """He-initialised weights for every convolution (shapes follow the connections)."""
    rng = np.random.default_rng(seed)
    channels = {"data": 3}
    for layer in layers:  # propagate channel counts to size each convolution
        if layer.type == "Convolution":
            out = layer.params["convolution_param"]["num_output"]
            out = NUM_LABELS if out == "${NUM_LABELS}" else out
            channels[layer.top[0]] = out
        elif layer.type == "Concat":
            channels[layer.top[0]] = sum(channels[b] for b in layer.bottom)
        elif layer.type == "Slice":
            channels.update({t: 1 for t in layer.top})
        elif layer.bottom and layer.top and layer.top[0] not in channels:
            channels[layer.top[0]] = channels.get(layer.bottom[0], 1)
    weights = {}
    for layer in layers:
        if layer.type != "Convolution" or weight_name(layer) in weights:
            continue
        kernel = layer.params["convolution_param"]["kernel_size"]
        shape = (channels[layer.top[0]], channels[layer.bottom[0]], kernel, kernel)
        scale = np.sqrt(2.0 / np.prod(shape[1:]))
        weights[weight_name(layer)] = [(rng.standard_normal(shape) * scale).astype(np.float32),
                                       (rng.standard_normal(shape[0]) * 0.1).astype(np.float32)]
    return weights


def to_caffemodel(layers: list[Layer], weights: dict, *, v1: bool = False, all_copies: tuple[str, ...] = ("fc",)
                  ) -> bytes:
    """The trained net as Caffe saves it: every layer with its parameters, weights as blobs.

    Caffe writes the shared blobs once per copy; to keep files small only the copies of layers
    whose name starts with one of ``all_copies`` carry them (the importer reads either).
    """
    parts = []
    for layer in layers:
        if layer.type == "MatWrite" or (v1 and layer.type not in V1_TYPES):
            continue
        blobs = []
        if layer.type == "Convolution":
            key = weight_name(layer)
            if fill(layer.name) == key or key.startswith(all_copies):
                blobs = [blob_bytes(b, legacy=v1, double=v1 and key == "fc7") for b in weights[key]]
        parts.append(layer_bytes(layer, blobs, v1=v1))
    return b"".join(parts)


# --- Caffe's forward pass, from its layer definitions ---------------------------------------------


def caffe_interp(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """caffe_cpu_interp2: rheight = (H1 − 1)/(H2 − 1) in float, h1 = ⌊rheight·h2⌋, the next row unless last."""
    def axis(size_in: int, size_out: int):
        ratio = np.float32(size_in - 1) / np.float32(size_out - 1) if size_out > 1 else np.float32(0)
        real = ratio * np.arange(size_out, dtype=np.float32)
        index = real.astype(np.int64)
        step = (index < size_in - 1).astype(np.int64)
        return torch.from_numpy(index), torch.from_numpy(step), torch.from_numpy(real - index).to(x.dtype)

    if (height, width) == tuple(x.shape[-2:]):
        return x.clone()
    h, hp, hl = axis(x.shape[-2], height)
    w, wp, wl = axis(x.shape[-1], width)
    top = x[..., h, :]
    bottom = x[..., h + hp, :]
    rows = top * (1 - hl)[:, None] + bottom * hl[:, None]
    return rows[..., w] * (1 - wl) + rows[..., w + wp] * wl


def _interp_size(length: int, param: dict) -> int:
    shrink, zoom = param.get("shrink_factor"), param.get("zoom_factor")
    if shrink:
        length = (length - 1) // shrink + 1
    if zoom:
        length = length + (length - 1) * (zoom - 1)
    return length


def caffe_pool(x: torch.Tensor, param: dict) -> torch.Tensor:
    """Caffe's PoolingLayer: out = ⌈(H + 2p − k)/s⌉ + 1 (trimmed if the last window starts in the padding);
    MAX over the window clipped to the image, AVE divided by the window clipped to the padded image."""
    kernel, stride, pad = param["kernel_size"], param.get("stride", 1), param.get("pad", 0)
    height, width = x.shape[-2:]

    def size(length):
        out = -(-(length + 2 * pad - kernel) // stride) + 1
        return out - 1 if (out - 1) * stride >= length + pad else out

    out_h, out_w = size(height), size(width)
    extra_h = (out_h - 1) * stride + kernel - height - pad
    extra_w = (out_w - 1) * stride + kernel - width - pad
    fill = float("-inf") if param.get("pool", "MAX") == "MAX" else 0.0
    padded = F.pad(x, (pad, max(extra_w, 0), pad, max(extra_h, 0)), value=fill)
    windows = torch.stack([padded[..., i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
                           for i in range(kernel) for j in range(kernel)])
    if param.get("pool", "MAX") == "MAX":
        return windows.amax(dim=0)

    def counts(out, length):
        start = np.arange(out) * stride - pad
        return np.minimum(start + kernel, length + pad) - start

    area = torch.from_numpy(np.outer(counts(out_h, height), counts(out_w, width))).to(x.dtype)
    return windows.sum(dim=0) / area


def caffe_forward(layers: list[Layer], weights: dict, bgr: np.ndarray, crop: int, output: str = "fc8_interp"
                  ) -> torch.Tensor:
    """Run the net as Caffe's test phase does on an H×W×3 BGR image (0–255): the data layer pads it
    bottom-right with the mean to crop×crop and subtracts the mean; Dropout passes through."""
    height, width = bgr.shape[:2]
    image = np.empty((crop, crop, 3), np.float64)
    image[:] = MEAN_BGR
    image[:height, :width] = bgr
    blobs = {"data": torch.from_numpy((image - MEAN_BGR).transpose(2, 0, 1)[None].astype(np.float32))}
    for layer in layers:
        kind, params = layer.type, layer.params
        inputs = [blobs[b] for b in layer.bottom]
        if kind == "Convolution":
            param = params["convolution_param"]
            weight, bias = (torch.from_numpy(w) for w in weights[weight_name(layer)])
            out = F.conv2d(inputs[0], weight, bias, padding=param.get("pad", 0), dilation=param.get("hole", 1))
        elif kind == "ReLU":
            out = inputs[0].clamp_min(0)
        elif kind == "Dropout":
            out = inputs[0]
        elif kind == "Pooling":
            out = caffe_pool(inputs[0], params["pooling_param"])
        elif kind == "Interp":
            param = params["interp_param"]
            out = caffe_interp(inputs[0], _interp_size(inputs[0].shape[-2], param),
                               _interp_size(inputs[0].shape[-1], param))
        elif kind == "Concat":
            out = torch.cat(inputs, dim=1)
        elif kind == "Softmax":
            out = torch.softmax(inputs[0], dim=1)
        elif kind == "Slice":
            points = [0, *params["slice_param"]["slice_point"], inputs[0].shape[1]]
            for top, start, end in zip(layer.top, points, points[1:]):
                blobs[top] = inputs[0][:, start:end]
            continue
        elif kind == "SpatialProduct":
            out = inputs[0] * inputs[1]
        elif kind == "Eltwise":
            operation = params["eltwise_param"]["operation"]
            out = torch.stack(inputs).amax(dim=0) if operation == "MAX" else torch.stack(inputs).sum(dim=0)
        else:  # data and output layers
            continue
        blobs[layer.top[0]] = out
    return blobs[output][0]
