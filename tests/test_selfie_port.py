"""The selfie-segmentation encoder: our PyTorch port against MediaPipe's original in the TFLite interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines import build_model, load_checkpoint, save_checkpoint
from engines.backbones import BACKBONES, register_backbone
from engines.backbones.selfie import SPEC, SelfieSegmentation, selfie_encoder
from engines.importers.selfie_tflite import (
    COMPARED_TENSORS,
    load_or_convert,
    load_selfie_weights,
    relative_errors,
    sample_inputs,
    tflite_path,
)

TFLITE_PATH = tflite_path()
NOT_INSTALLED = f"{TFLITE_PATH.name} not installed: run `npm ci` (npm @mediapipe/selfie_segmentation)"
needs_tflite = pytest.mark.skipif(not TFLITE_PATH.is_file(), reason=NOT_INSTALLED)

if "selfie" not in BACKBONES:
    register_backbone("selfie", SPEC)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, torch.Tensor]:
    pytest.importorskip("ai_edge_litert", reason="the converter reads the .tflite with ai-edge-litert")
    if not TFLITE_PATH.is_file():
        pytest.skip(NOT_INSTALLED)
    return load_or_convert(cache_dir=tmp_path_factory.mktemp("selfie_cache"))


def _astronaut_256() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    return resize(data.astronaut(), (256, 256), anti_aliasing=True).astype(np.float32)


@needs_tflite
def test_port_matches_the_original_on_a_photo_and_noise(converted):
    model = SelfieSegmentation()
    model.load_state_dict(converted)
    images = np.stack([_astronaut_256(), sample_inputs(1)[0]])
    errors = relative_errors(model, images)
    assert set(errors) == set(COMPARED_TENSORS)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-3, f"{worst}: relative error {errors[worst]:.2e}"


@needs_tflite
def test_pretrained_mask_finds_the_astronaut(converted):
    """A sanity check on meaning, not numbers: the person (left two thirds) is masked, the sky corner is not."""
    model = SelfieSegmentation().eval()
    model.load_state_dict(converted)
    with torch.no_grad():
        mask = torch.sigmoid(model(torch.from_numpy(_astronaut_256()).permute(2, 0, 1)[None])["mask"])[0, 0]
    assert mask[100:250, 40:160].mean() > 0.8  # face, suit and torso
    assert mask[0:60, 200:256].mean() < 0.2  # background top right


@needs_tflite
def test_odd_sizes_keep_the_trained_geometry(converted):
    """One more row and column (an odd size) must not shift the mask: it agrees with the 256 mask on ≥ 98%."""
    model = SelfieSegmentation().eval()
    model.load_state_dict(converted)
    x = torch.from_numpy(_astronaut_256()).permute(2, 0, 1)[None]
    with torch.no_grad():
        even = model(x)["mask"][0, 0] > 0
        odd = model(torch.nn.functional.pad(x, (0, 1, 0, 1), mode="replicate"))["mask"][0, 0, :256, :256] > 0
    assert (even == odd).float().mean() >= 0.98  # TensorFlow's own odd-size padding gives 0.94


@needs_tflite
def test_cache_round_trip(converted, tmp_path):
    first = load_or_convert(cache_dir=tmp_path)
    assert len(list(tmp_path.glob("selfie_segmentation-*.safetensors"))) == 1
    again = load_or_convert(cache_dir=tmp_path)
    assert first.keys() == again.keys() == converted.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("size", [256, 241, 161, 97])
def test_any_input_size(size):
    model = selfie_encoder().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size + 14))
    assert out["out"].shape == (2, model.outputs.out, -(-size // 16), -(-(size + 14) // 16))
    assert out["low"].shape == (2, model.outputs.low, -(-size // 8), -(-(size + 14) // 8))
    assert out["mask"].shape == (2, 1, size, size + 14)
    assert model.output_stride == 16


def test_encoder_low_features_option():
    x = torch.rand(1, 3, 64, 64)
    model = selfie_encoder(low="encoder").eval()
    with torch.no_grad():
        assert torch.equal(model(x)["low"], model.named_features(x)["add__xeno_compat__1"])
    with pytest.raises(ValueError, match="low"):
        selfie_encoder(low="middle")


@needs_tflite
def test_attention_model_checkpoint_needs_no_npm_package(converted, tmp_path):
    """Pretrained weights are loaded after building, so the checkpoint rebuilds a random backbone and fills it."""
    model = build_model(task="parts", backbone="selfie", merge="attention")
    backbone = load_selfie_weights(model)
    assert torch.equal(backbone.stem.weight, converted["stem.weight"])
    assert model.config.backbone_kwargs == {}
    model.eval()
    x = torch.rand(1, 3, 97, 97)
    with torch.no_grad():
        expected = model(x)["logits"]
    save_checkpoint(tmp_path / "selfie.safetensors", model)
    loaded = load_checkpoint(tmp_path / "selfie.safetensors", task="parts")
    with torch.no_grad():
        assert torch.allclose(loaded(x)["logits"], expected, atol=1e-5)
    assert loaded.preprocessing == SPEC.preprocessing
