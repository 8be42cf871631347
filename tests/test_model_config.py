"""One model description: ModelConfig builds, checkpoints store it, loads rebuild it; backbones declare outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from engines import (
    BACKBONES,
    CheckpointError,
    ModelConfig,
    build_model,
    load_checkpoint,
    load_weights,
    read_metadata,
    save_checkpoint,
)
from engines.backbones import backbone_outputs
from engines.checkpoint import FORMAT_VERSION
from engines.pose.guide import PoseGuideConfig


def test_config_is_what_the_model_is_built_from_and_records():
    config = ModelConfig(task="clothes", merge="max", scales=[1, 0.5], head_kwargs={"refine": 1}, detail_width=8)
    model = build_model(config)
    assert model.config == config.replace(num_classes=6, attention_width=64)  # defaults filled in
    assert build_model(task="clothes", merge="max", scales=(1.0, 0.5), head_kwargs={"refine": 1},
                       detail_width=8).config == model.config
    assert ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config
    assert len(model.net.head.refine) == 1 and model.refiner is not None and model.scales == (1.0, 0.5)
    assert build_model(task="parts", attention_dropout=0.1).merge.dropout.p == 0.1


def test_wrong_option_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model option.*colour.*valid options: task, backbone"):
        ModelConfig.from_dict({"task": "parts", "colour": "red"})
    with pytest.raises(ValueError, match="detail_widht"):
        ModelConfig(task="parts").replace(detail_widht=8)
    with pytest.raises(KeyError, match="valid merges"):
        ModelConfig(task="parts", merge="median")


def test_pose_guide_settings_are_typed_inside_the_config():
    config = ModelConfig.from_dict({"task": "parts", "pose_guide": {"input_sizes": [256]}})
    assert config.pose_guide == PoseGuideConfig(input_sizes=(256,))
    assert config.to_dict()["pose_guide"]["input_sizes"] == [256]


def test_checkpoint_stores_the_config_and_rebuilds_from_it(tmp_path):
    model = build_model(task="parts", merge="average", scales=(1.0, 0.75), detail_width=4)
    meta = save_checkpoint(tmp_path / "m.safetensors", model, input_size=65)
    assert meta.format_version == FORMAT_VERSION == 2
    header = read_metadata(tmp_path / "m.safetensors")
    assert header.model == model.config and header.task == "parts"
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config == model.config and loaded.metadata.model == model.config


def test_format_1_checkpoints_still_load(tmp_path):
    """Files written before the model description was one object keep loading, unchanged."""
    model = build_model(task="parts", merge="max", head_kwargs={"refine": 1}).eval()
    v1 = {"task": "parts", "classes": ["background", "head", "torso", "upper arms", "lower arms", "upper legs",
                                       "lower legs"],
          "backbone": "mobilenetv3_large", "merge": "max", "scales": [1.0, 0.75, 0.5], "input_size": 97,
          "preprocessing": model.preprocessing.to_dict(), "attention_width": 64, "backbone_kwargs": {},
          "head_kwargs": {"refine": 1}, "detail_width": 0, "person_gate": False, "pose_guide": None,
          "trained": True, "trained_on": "format 1", "metrics": {}, "inference": {}, "notes": "",
          "format": "partcam-checkpoint", "format_version": 1}
    path = tmp_path / "v1.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"partcam": json.dumps(v1)})
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and loaded.metadata.trained_on == "format 1"
    x = torch.rand(1, 3, 97, 97)
    with torch.no_grad():
        assert torch.equal(loaded(x)["logits"], model(x)["logits"])


def test_partial_weights_are_an_error_that_lists_them_unless_allowed():
    source = build_model(task="parts").state_dict()
    target = build_model(task="parts", detail_width=8)
    with pytest.raises(CheckpointError, match=r"missing: refiner\.project\.0\.weight"):
        load_weights(target, source)
    report = load_weights(target, source, allow_partial=True)
    assert not report.complete and all(name.startswith("refiner.") for name in report.missing)
    assert report.loaded == sorted(source) and "tensors loaded" in report.describe()
    wider = build_model(task="parts", attention_width=32)
    with pytest.raises(CheckpointError, match="shape mismatch: merge"):
        load_weights(wider, source)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_returns_exactly_what_it_declares(name):
    backbone = BACKBONES[name].builder().eval()
    declared = backbone_outputs(backbone, name)
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, 65, 65))
    assert tuple(sorted(out)) == tuple(sorted(declared.names()))
    for key in declared.names():
        assert out[key].shape[1] == getattr(declared, key), key


def test_eval_output_states_what_its_scores_are():
    plain = build_model(task="parts").eval()
    gated = build_model(task="parts", backbone="selfie", person_gate=True).eval()
    x = torch.rand(1, 3, 65, 65)
    with torch.no_grad():
        assert set(plain(x)) == {"logits", "attention"} and plain.score_kind == "logits"
        assert set(gated(x)) == {"log_probs", "attention"} and gated.score_kind == "log_probs"
        assert set(gated.train()(x)) >= {"logits", "scale_logits"}  # training sees raw scores
