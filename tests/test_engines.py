"""The network, its merges, checkpoints and the CPU engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines import (
    BACKBONES,
    TASKS,
    BackendUnavailable,
    CheckpointError,
    build_model,
    create_engine,
    load_checkpoint,
    load_torchvision_weights,
    read_metadata,
    save_checkpoint,
)
from engines.backbones import mobilenetv3_large, vgg16_largefov
from engines.preprocessing import CAFFE_VGG, Preprocessing

torch.manual_seed(0)


@pytest.fixture(scope="module")
def mobile_attention():
    return build_model(task="parts", backbone="mobilenetv3_large", merge="attention")


def test_tasks_are_consistent():
    assert TASKS["parts"].classes == (
        "background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs")
    assert TASKS["clothes"].classes == ("background", "head & skin", "upper clothes", "lower clothes", "bag", "shoes")
    for task in TASKS.values():
        palette = task.palette
        assert palette.dtype == np.uint8 and palette.shape == (task.num_classes, 3)
        assert len({tuple(c) for c in palette}) == task.num_classes  # every class distinguishable


def test_wrong_names_list_valid_ones():
    with pytest.raises(KeyError, match="valid backbones: .*mobilenetv3_large"):
        build_model(task="parts", backbone="resnet9000")
    with pytest.raises(KeyError, match="valid merges: attention, max, average, single"):
        build_model(task="parts", merge="median")
    with pytest.raises(KeyError, match="valid tasks: parts, clothes"):
        build_model(task="faces")


@pytest.mark.parametrize("size", [(65, 65), (64, 97), (33, 50)])
def test_attention_weights_are_a_distribution(mobile_attention, size):
    model = mobile_attention.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    weights = out["attention"]
    assert weights.shape[:2] == (2, 3) and weights.shape[-2:] == out["logits"].shape[-2:]
    assert torch.all(weights >= 0)
    assert torch.allclose(weights.sum(dim=1), torch.ones_like(weights[:, 0]), atol=1e-5)
    assert "scale_logits" not in out


def test_average_and_max_merge_the_scale_logits():
    x = torch.randn(1, 3, 64, 80)
    for merge, reduce in (("average", lambda s: s.mean(0)), ("max", lambda s: s.amax(0))):
        model = build_model(task="clothes", merge=merge).train()
        torch.manual_seed(1)
        out = model(x)
        stacked = torch.stack(out["scale_logits"])
        assert out["attention"] is None
        assert torch.allclose(out["logits"], reduce(stacked), atol=1e-6)


def test_one_hot_attention_reproduces_the_chosen_scale(mobile_attention):
    model = mobile_attention.train()
    model.merge.dropout.p = 0.0
    x = torch.randn(1, 3, 64, 64)
    for chosen in range(3):
        with torch.no_grad():
            model.merge.score.weight.zero_()
            model.merge.score.bias.fill_(-1e4)
            model.merge.score.bias[chosen] = 1e4
        torch.manual_seed(2)
        out = model(x)
        assert torch.allclose(out["attention"][:, chosen], torch.ones(1), atol=1e-6)
        assert torch.allclose(out["logits"], out["scale_logits"][chosen], atol=1e-5)
    model.merge.dropout.p = 0.5


def test_train_mode_returns_per_scale_logits_and_gradients_flow():
    model = build_model(task="parts", merge="attention", scales=(1.0, 0.75, 0.5)).train()
    out = model(torch.randn(2, 3, 57, 71))
    assert len(out["scale_logits"]) == 3
    for logits in out["scale_logits"]:
        assert logits.shape == out["logits"].shape
    loss = out["logits"].logsumexp(1).mean() + sum(s.logsumexp(1).mean() for s in out["scale_logits"])
    loss.backward()
    assert model.merge.conv.weight.grad is not None and model.merge.conv.weight.grad.abs().sum() > 0
    assert model.net.backbone.features[0][0].weight.grad.abs().sum() > 0


def test_single_scale_runs_scale_one_only():
    model = build_model(task="parts", merge="single", scales=(1.0, 0.5))
    assert model.scales == (1.0,)
    out = model.train()(torch.randn(1, 3, 40, 40))
    assert len(out["scale_logits"]) == 1


def test_vgg16_largefov_has_the_papers_shapes():
    backbone = vgg16_largefov()
    assert tuple(backbone.fc6.weight.shape) == (1024, 512, 3, 3)
    assert backbone.fc6.dilation == (12, 12)
    assert tuple(backbone.fc7.weight.shape) == (1024, 1024, 1, 1)
    conv5 = [backbone.features[i] for i in (24, 26, 28)]
    assert all(conv.dilation == (2, 2) for conv in conv5)
    model = build_model(task="parts", backbone="vgg16_largefov", merge="single").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 321, 321))
    assert out["logits"].shape == (1, 7, 41, 41)


def _torchvision_vgg16_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's vgg16 key names and shapes, made here (no download)."""
    state, in_ch = {}, 3
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    index = 0
    for value in cfg:
        if value == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(value, in_ch, 3, 3)
        state[f"features.{index}.bias"] = torch.randn(value)
        in_ch, index = value, index + 2
    state["classifier.0.weight"] = torch.randn(4096, 512 * 7 * 7)
    state["classifier.0.bias"] = torch.randn(4096)
    state["classifier.3.weight"] = torch.randn(4096, 4096)
    state["classifier.3.bias"] = torch.randn(4096)
    state["classifier.6.weight"] = torch.randn(1000, 4096)
    state["classifier.6.bias"] = torch.randn(1000)
    return state


def _torchvision_mobilenetv3_large_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's mobilenet_v3_large key names and shapes, listed independently of our module."""
    def conv_bn(prefix, out_ch, in_ch, k):
        return {f"{prefix}.0.weight": (out_ch, in_ch, k, k), f"{prefix}.1.weight": (out_ch,),
                f"{prefix}.1.bias": (out_ch,), f"{prefix}.1.running_mean": (out_ch,),
                f"{prefix}.1.running_var": (out_ch,), f"{prefix}.1.num_batches_tracked": ()}

    blocks = [(16, 3, 16, 16, False), (16, 3, 64, 24, False), (24, 3, 72, 24, False), (24, 5, 72, 40, True),
              (40, 5, 120, 40, True), (40, 5, 120, 40, True), (40, 3, 240, 80, False), (80, 3, 200, 80, False),
              (80, 3, 184, 80, False), (80, 3, 184, 80, False), (80, 3, 480, 112, True), (112, 3, 672, 112, True),
              (112, 5, 672, 160, True), (160, 5, 960, 160, True), (160, 5, 960, 160, True)]
    squeeze = {72: 24, 120: 32, 480: 120, 672: 168, 960: 240}
    shapes = conv_bn("features.0", 16, 3, 3)
    for n, (cin, k, exp, cout, se) in enumerate(blocks, start=1):
        j, p = 0, f"features.{n}.block"
        if exp != cin:
            shapes |= conv_bn(f"{p}.0", exp, cin, 1)
            j = 1
        shapes |= conv_bn(f"{p}.{j}", exp, 1, k)
        j += 1
        if se:
            shapes |= {f"{p}.{j}.fc1.weight": (squeeze[exp], exp, 1, 1), f"{p}.{j}.fc1.bias": (squeeze[exp],),
                       f"{p}.{j}.fc2.weight": (exp, squeeze[exp], 1, 1), f"{p}.{j}.fc2.bias": (exp,)}
            j += 1
        shapes |= conv_bn(f"{p}.{j}", cout, exp, 1)
    shapes |= conv_bn("features.16", 960, 160, 1)
    shapes |= {"classifier.0.weight": (1280, 960), "classifier.0.bias": (1280,),
               "classifier.3.weight": (1000, 1280), "classifier.3.bias": (1000,)}
    return {k: (torch.tensor(7) if s == () else torch.randn(s)) for k, s in shapes.items()}


def test_torchvision_vgg16_checkpoint_loads():
    state = _torchvision_vgg16_state_dict()
    backbone = vgg16_largefov()
    missing = load_torchvision_weights(backbone, state)
    assert missing == []
    assert torch.equal(backbone.features[28].weight, state["features.28.weight"])
    # DeepLab's decimation: every 4th fc6 filter, every 3rd tap of the 7×7 kernel.
    expected = state["classifier.0.weight"].reshape(4096, 512, 7, 7)[::4, :, ::3, ::3]
    assert torch.equal(backbone.fc6.weight, expected)


def test_torchvision_mobilenetv3_checkpoint_loads():
    state = _torchvision_mobilenetv3_large_state_dict()
    backbone = mobilenetv3_large()
    assert set(k for k in state if k.startswith("features.")) == set(backbone.state_dict())
    assert load_torchvision_weights(backbone, state) == []
    assert torch.equal(backbone.features[13].block[2].fc1.weight, state["features.13.block.2.fc1.weight"])


def test_checkpoint_round_trip_is_exact(tmp_path, mobile_attention):
    model = mobile_attention.eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, input_size=257, trained_on="unit test", preprocessing=CAFFE_VGG)
    loaded = load_checkpoint(path, task="parts")
    assert loaded.metadata.input_size == 257 and loaded.metadata.trained_on == "unit test"
    assert loaded.preprocessing == CAFFE_VGG and loaded.preprocessing.channel_order == "BGR"
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        assert torch.equal(model(x)["logits"], loaded(x)["logits"])


def test_head_refinement_starts_as_the_identity_and_survives_a_checkpoint(tmp_path, mobile_attention):
    plain = mobile_attention.eval()
    refined = build_model(task="parts", head_kwargs={"refine": 2}).eval()
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".head.refine." in key for key in missing)
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        assert torch.equal(plain(x)["logits"], refined(x)["logits"])  # a trained model can grow the blocks
        for block in refined.net.head.refine:
            torch.nn.init.normal_(block.body[-1].weight)  # as training would: no longer the identity
        path = tmp_path / "refined.safetensors"
        save_checkpoint(path, refined)
        loaded = load_checkpoint(path)
        assert loaded.metadata.model.head_kwargs == {"refine": 2}
        assert torch.equal(refined(x)["logits"], loaded(x)["logits"])
        assert not torch.equal(plain(x)["logits"], loaded(x)["logits"])
    with pytest.raises(ValueError, match="bad head_kwargs"):
        build_model(task="parts", backbone="vgg16_largefov", head_kwargs={"refine": 2})


def test_detail_refiner_starts_as_upsampling_and_survives_a_checkpoint(tmp_path, mobile_attention):
    plain = mobile_attention.eval()
    refined = build_model(task="parts", detail_width=16).eval()
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(key.startswith("refiner.") for key in missing)
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        coarse, sharp = plain(x)["logits"], refined(x)["logits"]
        stride4 = refined.net.backbone(x)["detail"].shape[-2:]
        assert sharp.shape[-2:] == stride4 and stride4[0] > coarse.shape[-2]
        upsampled = torch.nn.functional.interpolate(coarse, size=stride4, mode="bilinear", align_corners=False)
        assert torch.allclose(upsampled, sharp, atol=1e-5)  # zero correction until trained
        torch.nn.init.normal_(refined.refiner.correct[-1].weight)
        path = tmp_path / "detail.safetensors"
        save_checkpoint(path, refined)
        loaded = load_checkpoint(path)
        assert loaded.metadata.model.detail_width == 16
        assert torch.equal(refined(x)["logits"], loaded(x)["logits"])
        assert not torch.allclose(upsampled, loaded(x)["logits"], atol=1e-3)
    labels = create_engine(path, backend="cpu").infer([np.zeros((40, 70, 3), np.uint8)])[0].labels
    assert labels.shape == (40, 70)
    with pytest.raises(ValueError, match="no stride-4 detail features"):
        build_model(task="parts", backbone="vgg16_largefov", detail_width=16)


def test_half_checkpoint_is_small_and_close(tmp_path, mobile_attention):
    model = mobile_attention.eval()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_checkpoint(full, model)
    save_checkpoint(half, model, half=True)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.allclose(model(x)["logits"], load_checkpoint(half)(x)["logits"], atol=5e-2)


def test_bad_checkpoints_fail_with_one_clear_line(tmp_path, mobile_attention):
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, mobile_attention)
    data = good.read_bytes()
    cases = {
        "missing": (tmp_path / "nope.safetensors", "not found"),
        "truncated": (tmp_path / "truncated.safetensors", "truncated or corrupt"),
        "garbage": (tmp_path / "garbage.safetensors", "not a PartCam checkpoint"),
        "empty": (tmp_path / "empty.safetensors", "not a PartCam checkpoint"),
    }
    cases["truncated"][0].write_bytes(data[: len(data) // 2])
    cases["garbage"][0].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10)
    cases["empty"][0].write_bytes(b"")
    for path, message in cases.values():
        with pytest.raises(CheckpointError, match=message) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="is for task 'parts', expected 'clothes'"):
        load_checkpoint(good, task="clothes")
    pickle_path = tmp_path / "pickle.pt"
    torch.save({"weights": torch.zeros(1)}, pickle_path)
    with pytest.raises(CheckpointError):
        read_metadata(pickle_path)


def test_preprocessing_expresses_caffe_and_torchvision():
    pixels = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    caffe = CAFFE_VGG.normalise(pixels).flatten().tolist()
    assert caffe == pytest.approx([30 - 104.008, 20 - 116.669, 10 - 122.675])
    unit = Preprocessing(mean=(0, 0, 0), std=(255, 255, 255)).normalise(pixels).flatten().tolist()
    assert unit == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    with pytest.raises(ValueError, match="channel_order"):
        Preprocessing(mean=(0, 0, 0), std=(1, 1, 1), channel_order="GBR")


def test_engine_returns_labels_at_each_frames_size(tmp_path):
    model = build_model(task="clothes", merge="attention")
    path = tmp_path / "clothes.safetensors"
    save_checkpoint(path, model, input_size=97)
    engine = create_engine(path, backend="cpu")
    assert engine.input_size == 97 and engine.timing_label == "CPU time" and not engine.trained
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in [(120, 160, 3), (31, 17, 3), (97, 97, 3)]]
    predictions = engine.infer(frames, attention=True)
    assert len(predictions) == 3
    for frame, pred in zip(frames, predictions):
        assert pred.labels.shape == frame.shape[:2] and pred.labels.dtype == np.uint8
        assert pred.labels.max() < len(TASKS["clothes"].classes)
        assert pred.attention.shape == (3, *frame.shape[:2]) and pred.attention.dtype == np.float32
        assert np.allclose(pred.attention.sum(0), 1.0, atol=1e-4)
        assert pred.cnn_ms > 0
    assert engine.infer(frames[:1])[0].attention is None


def test_engine_rejects_bad_frames(mobile_attention):
    engine = create_engine(mobile_attention, backend="cpu", input_size=65)
    with pytest.raises(ValueError, match="uint8"):
        engine.infer([np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(ValueError, match="H×W×3"):
        engine.infer([np.zeros((10, 10), np.uint8)])


def test_unavailable_backends_name_what_is_missing(mobile_attention):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailable, match="NVIDIA GPU"):
        create_engine(mobile_attention, backend="cuda")
    with pytest.raises(BackendUnavailable):
        create_engine(mobile_attention, backend="tensorrt")
    with pytest.raises(KeyError, match="valid backends"):
        create_engine(mobile_attention, backend="metal")
    assert create_engine(mobile_attention, backend="auto", input_size=65).name in ("openvino", "cpu")


@pytest.mark.parametrize("detail_width", [0, 16])
def test_openvino_engine_gives_the_same_labels_as_torch(detail_width):
    pytest.importorskip("openvino")
    torch.manual_seed(3)
    model = build_model(task="parts", merge="attention", detail_width=detail_width)
    for module in model.modules():  # non-trivial statistics so that conv/BN folding is exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8), rng.integers(0, 256, (50, 40, 3), np.uint8)]
    reference = create_engine(model, backend="cpu", input_size=97).infer(frames, attention=True)
    fast = create_engine(model, backend="openvino", input_size=97, cpu_precision="f32").infer(frames, attention=True)
    for ref, got in zip(reference, fast):
        assert (ref.labels == got.labels).mean() > 0.999
        assert np.allclose(ref.attention, got.attention, atol=1e-4)


def test_openvino_engine_caches_its_converted_program(tmp_path, caplog):
    pytest.importorskip("openvino")
    from engines.backends.openvino import IR_FILE, OpenVinoEngine

    torch.manual_seed(4)
    model = build_model(task="clothes", merge="attention")
    frame = np.random.default_rng(2).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    first = OpenVinoEngine(model, 65, threads=1, cache_dir=tmp_path)
    assert not first.loaded_from_cache and (first.cache_folder / IR_FILE).is_file()
    second = OpenVinoEngine(model, 65, threads=1, cache_dir=tmp_path)
    assert second.loaded_from_cache and second.cache_folder == first.cache_folder
    assert np.array_equal(first.infer([frame])[0].labels, second.infer([frame])[0].labels)

    # Other weights or another input size never reuse the program.
    assert OpenVinoEngine(model, 49, threads=1, cache_dir=tmp_path).loaded_from_cache is False
    original_bias = model.net.classifier.bias.detach().clone()
    with torch.no_grad():
        model.net.classifier.bias.add_(1.0)
    assert OpenVinoEngine(model, 65, threads=1, cache_dir=tmp_path).loaded_from_cache is False

    # A damaged entry is converted again and replaced, with a warning, instead of failing.
    (first.cache_folder / IR_FILE).write_text("<net>truncated")
    with torch.no_grad():
        model.net.classifier.bias.copy_(original_bias)
    with caplog.at_level("WARNING", logger="partcam.engine"):
        repaired = OpenVinoEngine(model, 65, threads=1, cache_dir=tmp_path)
    assert not repaired.loaded_from_cache and "unreadable" in caplog.text
    assert OpenVinoEngine(model, 65, threads=1, cache_dir=tmp_path).loaded_from_cache


def test_registry_lists_the_papers_network():
    assert "vgg16_largefov" in BACKBONES and "mobilenetv3_large" in BACKBONES
