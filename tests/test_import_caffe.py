"""The Caffe importer, on the authors' net definitions rebuilt by structure (tests/caffe_nets.py).

The attention model (attention47), its max-over-scales variant (attention30) and DeepLab v1's
LargeFOV (V1 ``layers`` format, pool5a) are written as their template prototxts and as binary
.caffemodels with random weights; imports are checked against a forward pass written from
Caffe's layer definitions (Interp with aligned corners, Caffe's pooling, mean padding).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from engines import build_model, create_engine, load_checkpoint, read_metadata
from engines.importers import CaffeImportError, import_caffemodel, read_caffemodel
from engines.importers.caffe import (
    VGG_CONVS,
    CaffeLayer,
    analyse_structure,
    convert,
    layers_from_prototxt,
    parse_prototxt,
    template_values,
)
from engines.importers.caffe_forward import CaffeResampling, interp_size
from engines.preprocessing import CAFFE_VGG, PAD_VALUE
from tests import caffe_nets as nets
from tests.caffe_nets import ATT, EXP, FC, NUM_LABELS
from tests.conftest import make_scene

FC8 = f"fc8_{EXP}"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Template prototxts and caffemodels of the three released nets (same random weights)."""
    folder = tmp_path_factory.mktemp("caffe")
    made = {}
    for name, layers, v1 in (("attention", nets.attention_net(), False), ("max", nets.max_net(), False),
                             ("largefov", nets.largefov_v1(), True)):
        (folder / f"{name}.prototxt").write_text(nets.to_prototxt(layers, v1=v1))
        (folder / f"{name}.caffemodel").write_bytes(nets.to_caffemodel(layers, nets.random_weights(layers), v1=v1))
        made[name], made[name + ".prototxt"] = folder / f"{name}.caffemodel", folder / f"{name}.prototxt"
    return made


def _expected_state(weights) -> dict[str, np.ndarray]:
    expected = {}
    for name, index, *_ in VGG_CONVS:
        expected[f"net.backbone.features.{index}.weight"], expected[f"net.backbone.features.{index}.bias"] = \
            weights[name]
    for caffe_name, key in (("fc6", "net.backbone.fc6"), ("fc7", "net.backbone.fc7"), (FC8, "net.classifier")):
        expected[f"{key}.weight"], expected[f"{key}.bias"] = weights[caffe_name]
    return expected


# --- templates and structure ---------------------------------------------------------------------


def test_released_templates_parse_as_they_are():
    text = nets.to_prototxt(nets.attention_net())
    assert "num_output: ${NUM_LABELS}" in text and 'name: "fc8_${EXP}_res05_interp"' in text
    net = parse_prototxt(text)
    fc8 = next(layer for layer in net["layer"] if layer["name"] == ["fc8_${EXP}"])
    assert fc8["convolution_param"][0]["num_output"] == ["${NUM_LABELS}"]
    assert fc8["param"][0]["name"] == ["fc8_w"]
    filled = parse_prototxt(text, {"EXP": EXP, "NUM_LABELS": "7"})
    assert any(layer["name"] == [FC8] for layer in filled["layer"])
    v1 = parse_prototxt(nets.to_prototxt(nets.largefov_v1(), v1=True))
    assert [layer["type"][0] for layer in v1["layers"][-3:]] == ["CONVOLUTION", "INTERP", "MAT_WRITE"]
    with pytest.raises(CaffeImportError, match="unbalanced"):
        parse_prototxt("layer { name: 'x' } }")


def test_template_placeholders_are_filled_from_the_caffemodel_names():
    names = [FC8, f"{FC8}_res05", f"{FC8}_res075", "fc7"]
    assert template_values(["fc8_${EXP}", "fc8_${EXP}_res05", "fc8_${EXP}_res05_interp"], names) == {"EXP": EXP}
    assert template_values(["fc8_${EXP}"], names) == {}  # alone it also fits fc8_voc10_part_res05: undecided


@pytest.mark.parametrize("v1", [False, True])
def test_scales_merge_and_crop_come_from_the_graph(v1):
    structure = analyse_structure(nets_layers(nets.attention_net(), v1))
    assert {s: (b.scale, b.chain) for s, b in structure.branches.items()} == {
        "": (1.0, []), "_res05": (0.5, [[2, 1]]), "_res075": (0.75, [[4, 3]])}
    assert structure.merge == "attention" and structure.merge_order == ["", "_res075", "_res05"]
    assert structure.score_order == ["", "_res075", "_res05"] and structure.crop_size == 513
    assert structure.warnings == []  # fc7_res075_interp (zoom 4, shrink 3) is the right way back up
    maximum = analyse_structure(nets_layers(nets.max_net(), v1))
    assert (maximum.merge, maximum.merge_order) == ("max", ["", "_res075", "_res05"])
    assert analyse_structure(nets_layers(nets.largefov_v1(), v1)).pool5a


def nets_layers(layers, v1: bool) -> list[CaffeLayer]:
    from engines.importers.caffe import _prototxt_layers

    return _prototxt_layers(nets.to_prototxt(layers, v1=v1), None, "test")


def test_scales_are_checked_where_they_feed_not_by_name():
    layers = nets.attention_net()
    renamed = {"shrink_data05": "half", "shrink_data075": "smaller"}  # names without _res…: still found
    for layer in layers:
        layer.name = renamed.get(layer.name, layer.name)
        layer.top = [renamed.get(t, t) for t in layer.top]
        layer.bottom = [renamed.get(b, b) for b in layer.bottom]
    assert analyse_structure(nets_layers(layers, False)).branches["_res075"].chain == [[4, 3]]

    wrong = next(layer for layer in layers if layer.name == "smaller")
    wrong.params["interp_param"].update(shrink_factor=3, zoom_factor=2)  # 2/3, though the copy says res075
    structure = analyse_structure(nets_layers(layers, False))
    assert structure.branches["_res075"].scale == pytest.approx(2 / 3)
    assert any("conv1_1_res075 reads smaller, the input resized by 0.6667, not 0.75" in w
               for w in structure.warnings)
    assert any("Interp fc7_res075_interp resizes scale 0.6667 by 1.333; back to scale 1 needs 1.5" in w
               for w in structure.warnings)
    assert not any("label" in w for w in structure.warnings)


def test_unknown_merges_and_pooling_before_fc6_are_refused():
    layers = nets.max_net()
    next(layer for layer in layers if layer.name == "fc8_fusion").params["eltwise_param"]["operation"] = "SUM"
    with pytest.raises(CaffeImportError, match="by Eltwise SUM; PartCam imports the attention model and Eltwise MAX"):
        analyse_structure(nets_layers(layers, False))
    layers = nets.largefov_v1()
    next(layer for layer in layers if layer.name == "pool5a").params["pooling_param"]["pool"] = "MAX"
    with pytest.raises(CaffeImportError, match="pool5a is MAX pooling 3×3, stride 1, pad 1; .* AVE 3×3"):
        analyse_structure(nets_layers(layers, True))
    layers = nets.attention_net()
    next(layer for layer in layers if layer.name == "fc6").params["convolution_param"]["hole"] = 4
    with pytest.raises(CaffeImportError, match="fc6 has dilation .hole. 4; DeepLab-LargeFOV's is 12"):
        analyse_structure(nets_layers(layers, False))


# --- imports -------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_prototxt", [True, False])
def test_attention_model_imports_exactly(files, with_prototxt, tmp_path):
    out = tmp_path / "attention.safetensors"
    prototxt = files["attention.prototxt"] if with_prototxt else None
    result = import_caffemodel(files["attention"], task="parts", out=out, prototxt=prototxt)
    assert (result.layer_format, result.merge, result.scales) == ("layer", "attention", [1.0, 0.75, 0.5])
    assert (result.num_classes, result.fc_channels, result.attention_width) == (NUM_LABELS, FC, ATT)
    assert result.fc8_layer == FC8 and result.input_size == 513 and not result.pool5a
    assert result.warnings == []  # no false Interp warnings, the copies shared their weights
    assert result.inference == {"resize": "caffe", "pad": "mean", "input_interp": [[], [[4, 3]], [[2, 1]]]}

    model = load_checkpoint(out, task="parts")
    weights = nets.random_weights(nets.attention_net())
    expected = _expected_state(weights)
    expected["merge.conv.weight"], expected["merge.conv.bias"] = weights["att_conv1"]
    expected["merge.score.weight"], expected["merge.score.bias"] = weights["att_fc"]
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], torch.from_numpy(value)), key
    meta = read_metadata(out)
    assert meta.preprocessing == CAFFE_VGG.to_dict() and meta.input_size == 513
    assert meta.inference == result.inference and meta.trained


@pytest.mark.parametrize("with_prototxt", [True, False])
def test_max_over_scales_imports_as_max(files, with_prototxt):
    result = import_caffemodel(files["max"], task="parts", prototxt=files["max.prototxt"] if with_prototxt else None)
    assert (result.merge, result.scales, result.attention_width) == ("max", [1.0, 0.75, 0.5], None)
    assert result.warnings == [] and result.model.config.merge == "max"


def test_v1_largefov_keeps_pool5a(files, tmp_path):
    layer_format, layers = read_caffemodel(files["largefov"])
    assert layer_format == "layers" and [layer.type for layer in layers[:2]] == ["CONVOLUTION", "RELU"]
    assert next(layer for layer in layers if layer.name == "pool5a").params["pooling_param"][0]["pool"] == ["AVE"]
    out = tmp_path / "largefov.safetensors"
    result = import_caffemodel(files["largefov"], task="parts", out=out, prototxt=files["largefov.prototxt"])
    assert (result.merge, result.scales, result.pool5a, result.warnings) == ("single", [1.0], True, [])
    model = load_checkpoint(out)
    assert model.metadata.model.backbone_kwargs == {"fc_channels": FC, "pool5a": True}
    assert model.net.backbone.pool5a is not None
    weights = nets.random_weights(nets.largefov_v1())
    state = model.state_dict()
    for key, value in _expected_state(weights).items():
        assert torch.equal(state[key], torch.from_numpy(value)), key  # fc7 was stored in double


def test_multi_scale_copies_without_a_known_merge_are_refused(files, tmp_path):
    layers = [layer for layer in nets.max_net() if layer.type != "Eltwise"]
    path = tmp_path / "nomerge.caffemodel"
    path.write_bytes(nets.to_caffemodel(layers, nets.random_weights(layers)))
    with pytest.raises(CaffeImportError, match="has copies at other scales .* but no merge PartCam knows"):
        import_caffemodel(path, task="parts")
    assert import_caffemodel(path, task="parts", single_scale=True).merge == "single"


# --- agreement with Caffe's forward pass ------------------------------------------------------------


def _agreement(engine, layers, weights, frame: np.ndarray, crop: int) -> float:
    """Argmax agreement between an engine's labels and Caffe's forward pass on the same frame."""
    labels = engine.infer([frame])[0].labels
    with torch.inference_mode():
        scores = nets.caffe_forward(layers, weights, frame[..., ::-1].astype(np.float64), crop)
    expected = scores[:, : frame.shape[0], : frame.shape[1]].argmax(0).numpy()
    return float((labels == expected).mean())


@pytest.mark.parametrize("name, size, frame_hw", [("attention", 513, (513, 385)), ("max", 321, (241, 321)),
                                                  ("largefov", 321, (321, 289))])
def test_imported_models_compute_what_caffe_computed(files, tmp_path, name, size, frame_hw):
    """≥ 99.9% argmax agreement with Caffe's forward pass on image-like frames (the frames' long
    side is the input size, so the engine does not resize them; it pads bottom-right with the mean)."""
    layers = {"attention": nets.attention_net, "max": nets.max_net, "largefov": nets.largefov_v1}[name]()
    weights = nets.random_weights(layers)
    out = tmp_path / f"{name}.safetensors"
    import_caffemodel(files[name], task="parts", out=out, prototxt=files[name + ".prototxt"], input_size=size)
    engine = create_engine(out, backend="cpu")
    assert engine.input_size == size and isinstance(engine.model, CaffeResampling)
    frame = make_scene(frame_hw[1], frame_hw[0], seed=3)
    agreement = _agreement(engine, layers, weights, frame, size)
    print(f"{name} at {size} px, frame {frame_hw[0]}×{frame_hw[1]}: argmax agreement {100 * agreement:.3f}%")
    assert agreement >= 0.999


@pytest.mark.parametrize("pairing", [("", "_res075", "_res05"), ("_res05", "", "_res075")])
def test_attention_follows_the_concat_and_the_slice_pairing(pairing, tmp_path):
    """att_conv1's input blocks follow the Concat; att_fc's channels follow which fc8 each slice multiplies."""
    layers = nets.attention_net(pairing)
    weights = nets.random_weights(layers)
    path = tmp_path / "paired.caffemodel"
    path.write_bytes(nets.to_caffemodel(layers, weights))
    result = import_caffemodel(path, task="parts", input_size=97)
    wrapped = CaffeResampling(result.model, result.inference["input_interp"])
    image = make_scene(97, 97, seed=5)
    with torch.inference_mode():
        x = result.model.preprocessing.normalise(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float())
        got = wrapped(x)["logits"][0]
        expected = nets.caffe_forward(layers, weights, image[..., ::-1].astype(np.float64), 97)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_interp_sizes_follow_caffe():
    assert [interp_size(513, 2), interp_size(513, 4, 3), interp_size(49, 3, 4), interp_size(65, 1, 8)] == \
        [257, 385, 65, 513]
    x = torch.randn(1, 2, 7, 9, dtype=torch.float64)
    from engines.importers.caffe_forward import interp

    torch.testing.assert_close(interp(x, (13, 17)), nets.caffe_interp(x, 13, 17))


def test_partcam_models_keep_their_own_resizing_and_padding():
    model = build_model(task="parts", backbone="mobilenetv3_large", merge="attention").eval()
    engine = create_engine(model, backend="cpu", input_size=65)
    assert engine.model is not None and not isinstance(engine.model, CaffeResampling)
    assert engine.pad_value == PAD_VALUE


def test_imported_engines_pad_with_the_mean_colour(files):
    result = import_caffemodel(files["largefov"], task="parts", input_size=33)
    engine = create_engine(result.model, backend="cpu")
    assert engine.pad_value == pytest.approx(tuple(reversed(CAFFE_VGG.mean)))  # RGB order of Caffe's BGR mean
    from engines.backends.base import letterbox

    pixels, _ = letterbox([np.zeros((10, 33, 3), np.uint8)], 33, torch.device("cpu"), engine.pad_value)
    normalised = engine.preprocessing.normalise(pixels)
    assert torch.all(normalised[0, :, 10:] == 0)  # padding is zero input, as after Caffe's mean subtraction


# --- bad files and mismatches ------------------------------------------------------------------------


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


def test_refuses_a_truncated_caffemodel(files, tmp_path):
    path = tmp_path / "truncated.caffemodel"
    path.write_bytes(files["attention"].read_bytes()[:1_000_000])
    with pytest.raises(CaffeImportError, match="not a Caffe .caffemodel"):
        import_caffemodel(path, task="parts")


def test_refuses_blobs_whose_data_does_not_fill_their_shape(tmp_path):
    blob = nets.delimited(7, nets.delimited(1, nets.varint(4) + nets.varint(4))) + \
        nets.delimited(5, np.zeros(10, "<f4").tobytes())
    path = tmp_path / "short.caffemodel"
    path.write_bytes(nets.layer_bytes(nets.Layer("conv1_1", "Convolution", [], []), [blob]))
    with pytest.raises(CaffeImportError, match=r"holds 10 values but its shape \(4, 4\) needs 16"):
        read_caffemodel(path)


def _weighted(weights, drop: tuple[str, ...] = (), **replace) -> list[CaffeLayer]:
    layers = [CaffeLayer(name, "Convolution", [], [], blobs) for name, blobs in weights.items() if name not in drop]
    return layers + [CaffeLayer(name, "Convolution", [], [], blobs) for name, blobs in replace.items()]


@pytest.fixture(scope="module")
def weights():
    return nets.random_weights(nets.attention_net())


def test_refuses_unexpected_shapes_and_incomplete_models(weights):
    rng = np.random.default_rng(3)
    deeplab_v1_fc6 = [rng.standard_normal((64, 512, 4, 4), dtype=np.float32), np.zeros(64, np.float32)]
    with pytest.raises(CaffeImportError, match="fc6 has weights 64×512×4×4; DeepLab-LargeFOV's fc6 is 1024×512×3×3"):
        convert(_weighted(weights, drop=("fc6",), fc6=deeplab_v1_fc6), task="parts")
    narrow = [np.zeros((32, 3, 3, 3), np.float32), np.zeros(32, np.float32)]
    with pytest.raises(CaffeImportError, match="conv1_1 has weights 32×3×3×3; VGG-16 needs 64×3×3×3"):
        convert(_weighted(weights, drop=("conv1_1",), conv1_1=narrow), task="parts")
    with pytest.raises(CaffeImportError, match="not a VGG-16 DeepLab-LargeFOV model: no conv3_2"):
        convert(_weighted(weights, drop=("conv3_2",)), task="parts")
    with pytest.raises(CaffeImportError, match="attention layers incomplete: found only att_conv1"):
        convert(_weighted(weights, drop=("att_fc",)), task="parts")
    with pytest.raises(CaffeImportError, match="no fc8 classifier"):
        convert(_weighted(weights, drop=(FC8,)), task="parts")
    with pytest.raises(CaffeImportError, match="several fc8 classifiers"):
        convert(_weighted(weights, fc8_extra=weights[FC8]), task="parts")


def test_refuses_class_counts_that_do_not_match_the_task(weights):
    with pytest.raises(CaffeImportError, match=r"predicts 7 classes but task 'clothes' has 6 .*use --task parts"):
        convert(_weighted(weights), task="clothes")
    voc = [np.zeros((21, FC, 1, 1), np.float32), np.zeros(21, np.float32)]
    with pytest.raises(CaffeImportError, match="predicts 21 classes .* PASCAL VOC's 21 classes"):
        convert(_weighted(weights, drop=(FC8,), fc8_voc12=voc), task="parts")


def test_unshared_copies_are_reported_and_the_scale_1_copy_is_used(weights):
    other = [w + 1 for w in weights["fc7"]]
    model, info = convert(_weighted(weights, fc7_res075=other), task="parts", single_scale=True)
    assert any("fc7_res075 differs from fc7" in w for w in info["warnings"])
    assert torch.equal(model.state_dict()["net.backbone.fc7.weight"], torch.from_numpy(weights["fc7"][0]))
    assert info["merge"] == "single" and any("attention over scales dropped" in w for w in info["warnings"])


def test_command_line(files, tmp_path, capsys):
    from scripts import import_caffe as script
    out = tmp_path / "cli.safetensors"
    assert script.main([str(files["attention"]), "--prototxt", str(files["attention.prototxt"]), "--task", "parts",
                        "--out", str(out), "-D", f"EXP={EXP}"]) == 0
    captured = capsys.readouterr()
    assert f"7 classes from {FC8}, merge attention" in captured.out and "input 513 px" in captured.out
    assert "warning" not in captured.err
    assert read_metadata(out).input_size == 513
    assert script.main([str(files["largefov"]), "--task", "parts", "--out", str(out), "--input-size", "257"]) == 0
    assert "pool5a" in capsys.readouterr().out and read_metadata(out).input_size == 257
    assert script.main([str(files["largefov"]), "--task", "clothes", "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "predicts 7 classes but task 'clothes' has 6" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_prototxt_placeholders_left_open_are_reported(files, tmp_path):
    prototxt = tmp_path / "other.prototxt"
    prototxt.write_text(nets.to_prototxt(nets.attention_net()).replace("${EXP}", "${DATASET}"))
    result = import_caffemodel(files["attention"], task="parts", prototxt=prototxt)
    assert result.merge == "attention" and result.warnings == []  # DATASET inferred from the caffemodel
    layers = layers_from_prototxt(prototxt, {"DATASET": EXP})
    assert any(layer.name == FC8 for layer in layers)


def test_caffe_field_numbers_match_caffe():
    """Caffe's published numbers for the fields the importer reads (BVLC/caffe and DeepLab's caffe.proto)."""
    from engines.importers import caffe_pb

    def numbers(message):
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert numbers(caffe_pb.NetParameter) == {"name": 1, "input": 3, "input_dim": 4, "layer": 100, "layers": 2}
    assert numbers(caffe_pb.LayerParameter) == {
        "name": 1, "type": 2, "bottom": 3, "top": 4, "param": 6, "blobs": 7, "convolution_param": 106,
        "transform_param": 100, "eltwise_param": 110, "pooling_param": 121, "slice_param": 126, "interp_param": 138}
    assert numbers(caffe_pb.V1LayerParameter) == {
        "bottom": 2, "top": 3, "name": 4, "type": 5, "blobs": 6, "param": 1001, "convolution_param": 10,
        "pooling_param": 19, "eltwise_param": 24, "slice_param": 31, "transform_param": 36}
    assert numbers(caffe_pb.BlobProto) == {"shape": 7, "data": 5, "diff": 6, "double_data": 8, "double_diff": 9,
                                           "num": 1, "channels": 2, "height": 3, "width": 4}
    interp = caffe_pb.LayerParameter.DESCRIPTOR.fields_by_name["interp_param"].message_type
    assert {f.name: f.number for f in interp.fields} == {"height": 1, "width": 2, "zoom_factor": 3, "shrink_factor": 4,
                                                 "pad_beg": 5, "pad_end": 6}


def test_dataclass_fields_of_results_are_stable():
    from engines.importers.caffe import ImportResult

    assert {"input_size", "inference", "pool5a"} <= {f.name for f in dataclasses.fields(ImportResult)}
