"""The Caffe importer, on synthetic .caffemodel files written byte by byte with Caffe's field numbers.

The files are encoded here with a small protobuf writer rather than with the importer's own
messages, so a wrong field number in engines/importers/caffe.proto cannot cancel out.
VGG's conv layers have their real shapes; fc6/fc7/attention are narrow to keep files small.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from engines import create_engine, load_checkpoint, read_metadata
from engines.importers import CaffeImportError, import_caffemodel, read_caffemodel
from engines.importers.caffe import VGG_CONVS, CaffeLayer, convert, parse_prototxt
from engines.preprocessing import CAFFE_VGG
from engines.tasks import TASKS

FC = 32  # fc6/fc7 width (1024 in the released models)
ATT = 16  # att_conv1 width (512 in the released models)
SCALES = (1.0, 0.75, 0.5)
SUFFIX = {1.0: "", 0.75: "_res075", 0.5: "_res05"}
PARTS = TASKS["parts"].num_classes

# --- a minimal protobuf writer, with the field numbers of Caffe's caffe.proto ----------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def blob_bytes(array: np.ndarray, *, legacy: bool = False, double: bool = False) -> bytes:
    """BlobProto: shape = 7 (BlobShape.dim = 1, packed) or num/channels/height/width = 1..4;
    data = 5, double_data = 8."""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        header = b"".join(_int(number, dim) for number, dim in zip((1, 2, 3, 4), dims))
    else:
        header = _delimited(7, _delimited(1, b"".join(_varint(d) for d in array.shape)))
    values = array.astype("<f8" if double else "<f4").tobytes()
    return header + _delimited(8 if double else 5, values)


V1_TYPES = {"Convolution": 4, "Concat": 3, "Data": 5}


def layer_bytes(name: str, kind: str, blobs: list[bytes], *, v1: bool = False,
                bottoms: tuple[str, ...] = (), tops: tuple[str, ...] = ()) -> bytes:
    """One entry of NetParameter.layer (= 100) or, with ``v1``, of NetParameter.layers (= 2)."""
    if v1:  # V1LayerParameter: bottom = 2, top = 3, name = 4, type = 5 (enum), blobs = 6
        body = [*(_delimited(2, b.encode()) for b in bottoms), *(_delimited(3, t.encode()) for t in tops),
                _delimited(4, name.encode()), _int(5, V1_TYPES[kind]), *(_delimited(6, b) for b in blobs)]
        return _delimited(2, b"".join(body))
    # LayerParameter: name = 1, type = 2, bottom = 3, top = 4, blobs = 7
    body = [_delimited(1, name.encode()), _delimited(2, kind.encode()), *(_delimited(3, b.encode()) for b in bottoms),
            *(_delimited(4, t.encode()) for t in tops), *(_delimited(7, b) for b in blobs)]
    return _delimited(100, b"".join(body))


# --- synthetic released models ------------------------------------------------------------------


def _he(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)


@pytest.fixture(scope="module")
def weights() -> dict[str, list[np.ndarray]]:
    """Random weights with the released model's layer names; VGG convs at full size (14.7M values)."""
    rng = np.random.default_rng(7)
    shapes = {name: (out, inp, 3, 3) for name, _, out, inp in VGG_CONVS}
    shapes |= {"fc6": (FC, 512, 3, 3), "fc7": (FC, FC, 1, 1), "fc8_pascal_person_part": (PARTS, FC, 1, 1),
               "att_conv1": (ATT, FC * len(SCALES), 3, 3), "att_fc": (len(SCALES), ATT, 1, 1)}
    return {name: [_he(rng, shape), rng.standard_normal(shape[0], dtype=np.float32) * 0.1]
            for name, shape in shapes.items()}


SHARED = ("fc6", "fc7", "fc8_pascal_person_part")  # per-scale copies written to files (all convs would triple the size)


@pytest.fixture(scope="module")
def attention_caffemodel(weights, tmp_path_factory) -> Path:
    """The attention model in the current ``layer`` format, with per-scale copies and the fc7 Concat."""
    parts = []
    for name, blobs in weights.items():
        encoded = [blob_bytes(b) for b in blobs]
        copies = SCALES if name in SHARED or name.startswith("conv5") else (1.0,)
        bottoms = ("fc7_concat",) if name == "att_conv1" else ()
        parts += [layer_bytes(name + SUFFIX[s], "Convolution", encoded, bottoms=bottoms) for s in copies]
    parts.append(layer_bytes("fc7_concat", "Concat", [], bottoms=tuple("fc7" + SUFFIX[s] for s in SCALES),
                             tops=("fc7_concat",)))
    path = tmp_path_factory.mktemp("caffe") / "attention.caffemodel"
    path.write_bytes(b"".join(parts))
    return path


@pytest.fixture(scope="module")
def v1_caffemodel(weights, tmp_path_factory) -> Path:
    """Single-scale DeepLab-LargeFOV in the old ``layers`` format, legacy 4-D blobs, some in double."""
    parts = [layer_bytes("data", "Data", [], v1=True, tops=("data",))]
    for name, (weight, bias) in weights.items():
        if not name.startswith("att"):
            parts.append(layer_bytes(name, "Convolution", [blob_bytes(weight, legacy=True, double=name == "fc7"),
                                                           blob_bytes(bias, legacy=True)], v1=True))
    path = tmp_path_factory.mktemp("caffe") / "largefov_v1.caffemodel"
    path.write_bytes(b"".join(parts))
    return path


def _layers(weights, drop: tuple[str, ...] = (), **replace) -> list[CaffeLayer]:
    layers = [CaffeLayer(name, "Convolution", [], [], blobs) for name, blobs in weights.items() if name not in drop]
    return layers + [CaffeLayer(name, "Convolution", [], [], blobs) for name, blobs in replace.items()]


def _expected_state(weights) -> dict[str, np.ndarray]:
    expected = {}
    for name, index, *_ in VGG_CONVS:
        expected[f"net.backbone.features.{index}.weight"], expected[f"net.backbone.features.{index}.bias"] = \
            weights[name]
    for caffe_name, key in (("fc6", "net.backbone.fc6"), ("fc7", "net.backbone.fc7"),
                            ("fc8_pascal_person_part", "net.classifier")):
        expected[f"{key}.weight"], expected[f"{key}.bias"] = weights[caffe_name]
    return expected


# --- the tests ----------------------------------------------------------------------------------


def test_attention_model_imports_exactly(attention_caffemodel, weights, tmp_path):
    out = tmp_path / "attention.safetensors"
    result = import_caffemodel(attention_caffemodel, task="parts", out=out)
    assert (result.layer_format, result.merge, result.scales) == ("layer", "attention", list(SCALES))
    assert (result.num_classes, result.fc_channels, result.attention_width) == (PARTS, FC, ATT)
    assert result.warnings == []  # the copies were equal and the Concat gave the scale order

    model = load_checkpoint(out, task="parts")
    state = model.state_dict()
    expected = _expected_state(weights)
    expected["merge.conv.weight"], expected["merge.conv.bias"] = weights["att_conv1"]
    expected["merge.score.weight"], expected["merge.score.bias"] = weights["att_fc"]
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], torch.from_numpy(value)), key

    meta = read_metadata(out)
    assert meta.preprocessing == CAFFE_VGG.to_dict()  # BGR, 104.008/116.669/122.675, std 1
    assert meta.trained and "attention.caffemodel" in meta.trained_on and meta.scales == list(SCALES)

    engine = create_engine(out, backend="cpu", input_size=64)
    frame = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    prediction = engine.infer([frame], attention=True)[0]
    assert prediction.labels.shape == (48, 40) and prediction.labels.max() < PARTS
    assert prediction.attention.shape == (3, 48, 40)
    np.testing.assert_allclose(prediction.attention.sum(axis=0), 1.0, atol=1e-5)


def test_old_layers_format_with_legacy_blobs_imports_as_single_scale(v1_caffemodel, weights, tmp_path):
    layer_format, layers = read_caffemodel(v1_caffemodel)
    assert layer_format == "layers" and layers[0].type == "DATA" and layers[1].type == "CONVOLUTION"
    out = tmp_path / "largefov.safetensors"
    result = import_caffemodel(v1_caffemodel, task="parts", out=out)
    assert (result.merge, result.scales, result.attention_width) == ("single", [1.0], None)
    state = load_checkpoint(out).state_dict()
    for key, value in _expected_state(weights).items():
        # fc7 was stored in double precision; float32 values survive the round trip exactly
        assert torch.equal(state[key], torch.from_numpy(value)), key


def _conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, pad: int = 0, dilation: int = 1) -> np.ndarray:
    """Caffe's convolution (cross-correlation, zero padding, dilation) on C×H×W, in float64."""
    out_c, in_c, kh, kw = weight.shape
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    height = x.shape[1] - dilation * (kh - 1)
    width = x.shape[2] - dilation * (kw - 1)
    columns = np.stack([x[:, i * dilation:i * dilation + height, j * dilation:j * dilation + width]
                        for i in range(kh) for j in range(kw)], axis=1)  # C × K × H × W
    flat = weight.reshape(out_c, in_c, kh * kw).astype(np.float64).reshape(out_c, -1)
    return (flat @ columns.reshape(in_c * kh * kw, -1)).reshape(out_c, height, width) + bias[:, None, None]


def _max_pool(x: np.ndarray, stride: int) -> np.ndarray:
    """Caffe's 3×3 max pooling with pad 1: output ceil((H + 2 - 3) / s) + 1, windows clipped to the image."""
    channels, height, width = x.shape
    out_h, out_w = (-(-(height - 1) // stride) + 1, -(-(width - 1) // stride) + 1)
    padded = np.full((channels, height + 2 + stride, width + 2 + stride), -np.inf)
    padded[:, 1:height + 1, 1:width + 1] = x
    windows = [padded[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride] for i in range(3) for j in range(3)]
    return np.max(windows, axis=0)


def reference_largefov(weights, rgb: np.ndarray) -> np.ndarray:
    """DeepLab-LargeFOV as Caffe runs it: BGR minus the mean, VGG-16, pool4/5 stride 1, conv5 dilation 2,
    fc6 3×3 dilation 12, fc7, fc8. ``rgb`` is H×W×3 uint8; returns the fc8 scores C×h×w."""
    x = rgb[..., ::-1].astype(np.float64).transpose(2, 0, 1) - np.array(CAFFE_VGG.mean)[:, None, None]
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    block_ends = {"conv1_2": 2, "conv2_2": 2, "conv3_3": 2, "conv4_3": 1, "conv5_3": 1}
    for name, *_ in VGG_CONVS:
        dilation = 2 if name.startswith("conv5") else 1
        x = relu(_conv(x, *weights[name], pad=dilation, dilation=dilation))
        if name in block_ends:
            x = _max_pool(x, block_ends[name])
    x = relu(_conv(x, *weights["fc6"], pad=12, dilation=12))
    x = relu(_conv(x, *weights["fc7"]))
    return _conv(x, *weights["fc8_pascal_person_part"])


def test_imported_network_matches_a_numpy_caffe_forward_pass(v1_caffemodel, weights, tmp_path):
    """Proves the layer mapping, Caffe's preprocessing (BGR, mean) and the pooling/dilation layout.

    At 100×108 pixels the stride-8 grid is 14×15 (Caffe rounds pooling up), so fc6's taps
    12 cells away reach real features.
    """
    import_caffemodel(v1_caffemodel, task="parts", out=tmp_path / "largefov.safetensors")
    model = load_checkpoint(tmp_path / "largefov.safetensors")  # preprocessing comes from the checkpoint
    rgb = np.random.default_rng(1).integers(0, 256, (100, 108, 3), dtype=np.uint8)
    expected = reference_largefov(weights, rgb)
    with torch.inference_mode():
        pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        logits = model(model.preprocessing.normalise(pixels))["logits"][0].double().numpy()
    assert logits.shape == expected.shape == (PARTS, 14, 15)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # The same image in RGB order (the mistake the recorded preprocessing prevents) gives other scores.
    wrong = reference_largefov(weights, rgb[..., ::-1])
    assert np.abs(wrong - expected).max() > 1e-2 * np.abs(expected).max()


def _reference_attention(weights, features: dict[float, np.ndarray], logits: dict[float, np.ndarray],
                         caffe_order: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The paper's merge in Caffe's order: concat fc7 → att_conv1 → ReLU → att_fc → softmax → Σ_s w^s f^s."""
    stacked = np.concatenate([features[s] for s in caffe_order]).astype(np.float64)
    hidden = np.maximum(_conv(stacked, *weights["att_conv1"], pad=1), 0)
    scores = _conv(hidden, *weights["att_fc"])
    attention = np.exp(scores - scores.max(axis=0))
    attention /= attention.sum(axis=0)
    fused = sum(attention[i] * logits[s] for i, s in enumerate(caffe_order))
    return fused, attention


@pytest.mark.parametrize("caffe_order", [[1.0, 0.75, 0.5], [0.5, 1.0, 0.75]])
def test_attention_weights_follow_the_scale_order_of_the_caffe_concat(weights, caffe_order):
    bottoms = [f"fc7{SUFFIX[s]}_interp" if s != 1.0 else "fc7" for s in caffe_order]
    layers = [*_layers(weights), CaffeLayer("fc7_concat", "Concat", bottoms, ["fc7_concat"], []),
              CaffeLayer("att_conv1", "Convolution", ["fc7_concat"], ["att_conv1"], [])]
    model, info = convert(layers, task="parts")
    assert info["scales"][0] == 1.0 and sorted(info["scales"]) == sorted(caffe_order)
    rng = np.random.default_rng(2)
    features = {s: rng.standard_normal((FC, 5, 6)).astype(np.float32) for s in SCALES}
    logits = {s: rng.standard_normal((PARTS, 5, 6)).astype(np.float32) for s in SCALES}
    with torch.inference_mode():
        fused, attention = model.merge([torch.from_numpy(features[s])[None] for s in info["scales"]],
                                       [torch.from_numpy(logits[s])[None] for s in info["scales"]])
    expected_fused, expected_attention = _reference_attention(weights, features, logits, caffe_order)
    np.testing.assert_allclose(fused[0].numpy(), expected_fused, rtol=1e-4, atol=1e-5)
    for index, scale in enumerate(info["scales"]):
        np.testing.assert_allclose(attention[0, index].numpy(), expected_attention[caffe_order.index(scale)],
                                   rtol=1e-4, atol=1e-6)


def test_prototxt_gives_scales_and_mean(attention_caffemodel, tmp_path):
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text("""
name: "deeplab_largeFOV_attention"   # the paper's layout: shrink the input, share the net, merge
layer { name: "data" type: "ImageData" top: "data"
  transform_param { mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 } }
layer { name: "data_res075" type: "Interp" bottom: "data" top: "data_res075"
  interp_param { shrink_factor: 4 zoom_factor: 3 } }
layer { name: "data_res05" type: "Interp" bottom: "data" top: "data_res05" interp_param { shrink_factor: 2 } }
layer { name: "fc7_concat" type: "Concat" bottom: "fc7_res05" bottom: "fc7" bottom: "fc7_res075" top: "fc7_concat" }
layer { name: "att_conv1" type: "Convolution" bottom: "fc7_concat" top: "att_conv1"
  param { lr_mult: 1 } convolution_param { num_output: 512 kernel_size: 3 pad: 1 } }
""")
    assert parse_prototxt(prototxt.read_text())["layer"][1]["interp_param"][0]["shrink_factor"] == ["4"]
    result = import_caffemodel(attention_caffemodel, task="parts", prototxt=prototxt)
    assert result.scales == [1.0, 0.5, 0.75]  # the prototxt's Concat overrides the caffemodel's
    assert result.preprocessing == CAFFE_VGG and result.warnings == []
    assert result.model.preprocessing == CAFFE_VGG


def test_unshared_copies_are_reported_and_the_scale_1_copy_is_used(weights):
    other = [w + 1 for w in weights["fc7"]]
    model, info = convert(_layers(weights, fc7_res075=other), task="parts", single_scale=True)
    assert any("fc7_res075 differs from fc7" in w for w in info["warnings"])
    assert torch.equal(model.state_dict()["net.backbone.fc7.weight"], torch.from_numpy(weights["fc7"][0]))
    assert info["merge"] == "single" and any("attention layers dropped" in w for w in info["warnings"])


@pytest.mark.parametrize("content, message", [
    (b"", "no layers found"),
    (b"\xff\xfe not a protobuf \x00\x01" * 50, "not a Caffe .caffemodel"),
    (b'name: "VGG"\nlayer { name: "conv1_1" type: "Convolution" }\n', "not a Caffe .caffemodel"),
])
def test_refuses_files_that_are_not_caffemodels(tmp_path, content, message):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CaffeImportError, match=message):
        import_caffemodel(path, task="parts")


def test_refuses_a_truncated_caffemodel(attention_caffemodel, tmp_path):
    path = tmp_path / "truncated.caffemodel"
    path.write_bytes(attention_caffemodel.read_bytes()[:1_000_000])
    with pytest.raises(CaffeImportError, match="not a Caffe .caffemodel"):
        import_caffemodel(path, task="parts")


def test_refuses_blobs_whose_data_does_not_fill_their_shape(tmp_path):
    blob = _delimited(7, _delimited(1, _varint(4) + _varint(4))) + _delimited(5, np.zeros(10, "<f4").tobytes())
    path = tmp_path / "short.caffemodel"
    path.write_bytes(layer_bytes("conv1_1", "Convolution", [blob]))
    with pytest.raises(CaffeImportError, match=r"holds 10 values but its shape \(4, 4\) needs 16"):
        read_caffemodel(path)


def test_refuses_unexpected_shapes_and_incomplete_models(weights):
    rng = np.random.default_rng(3)
    deeplab_v1_fc6 = [rng.standard_normal((64, 512, 4, 4), dtype=np.float32), np.zeros(64, np.float32)]
    with pytest.raises(CaffeImportError, match="fc6 has weights 64×512×4×4; DeepLab-LargeFOV's fc6 is 1024×512×3×3"):
        convert(_layers(weights, drop=("fc6",), fc6=deeplab_v1_fc6), task="parts")
    narrow = [np.zeros((32, 3, 3, 3), np.float32), np.zeros(32, np.float32)]
    with pytest.raises(CaffeImportError, match="conv1_1 has weights 32×3×3×3; VGG-16 needs 64×3×3×3"):
        convert(_layers(weights, drop=("conv1_1",), conv1_1=narrow), task="parts")
    with pytest.raises(CaffeImportError, match="not a VGG-16 DeepLab-LargeFOV model: no conv3_2"):
        convert(_layers(weights, drop=("conv3_2",)), task="parts")
    with pytest.raises(CaffeImportError, match="attention layers incomplete: found only att_conv1"):
        convert(_layers(weights, drop=("att_fc",)), task="parts")
    with pytest.raises(CaffeImportError, match="no fc8 classifier"):
        convert(_layers(weights, drop=("fc8_pascal_person_part",)), task="parts")
    with pytest.raises(CaffeImportError, match="several fc8 classifiers"):
        convert(_layers(weights, fc8_extra=weights["fc8_pascal_person_part"]), task="parts")


def test_refuses_class_counts_that_do_not_match_the_task(weights):
    with pytest.raises(CaffeImportError, match=r"predicts 7 classes but task 'clothes' has 6 .*use --task parts"):
        convert(_layers(weights), task="clothes")
    voc = [np.zeros((21, FC, 1, 1), np.float32), np.zeros(21, np.float32)]
    with pytest.raises(CaffeImportError, match="predicts 21 classes .* PASCAL VOC's 21 classes"):
        convert(_layers(weights, drop=("fc8_pascal_person_part",), fc8_voc12=voc), task="parts")


def _script():
    spec = importlib.util.spec_from_file_location("import_caffe", Path(__file__).parents[1] / "scripts/import_caffe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_line(v1_caffemodel, tmp_path, capsys):
    script = _script()
    out = tmp_path / "cli.safetensors"
    assert script.main([str(v1_caffemodel), "--task", "parts", "--out", str(out), "--input-size", "257"]) == 0
    printed = capsys.readouterr().out
    assert "7 classes from fc8_pascal_person_part, merge single" in printed and "BGR" in printed
    assert read_metadata(out).input_size == 257
    assert script.main([str(v1_caffemodel), "--task", "clothes", "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "predicts 7 classes but task 'clothes' has 6" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_caffe_field_numbers_match_caffe():
    """Caffe's published numbers for the fields the importer reads (BVLC/caffe caffe.proto)."""
    from engines.importers import caffe_pb

    def numbers(message):
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert numbers(caffe_pb.NetParameter) == {"name": 1, "input": 3, "input_dim": 4, "layer": 100, "layers": 2}
    assert numbers(caffe_pb.LayerParameter) == {
        "name": 1, "type": 2, "bottom": 3, "top": 4, "param": 6, "blobs": 7, "convolution_param": 106}
    assert numbers(caffe_pb.V1LayerParameter) == {"bottom": 2, "top": 3, "name": 4, "type": 5, "blobs": 6,
                                                  "param": 1001, "convolution_param": 10}
    assert numbers(caffe_pb.BlobProto) == {"shape": 7, "data": 5, "diff": 6, "double_data": 8, "double_diff": 9,
                                           "num": 1, "channels": 2, "height": 3, "width": 4}
