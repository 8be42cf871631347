"""The real-photo part benchmark: its zones, its scoring, and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from engines.pose.movenet import SOURCE_NAME, default_source_dir
from engines.tasks import CLOTHES, PARTS
from training.realphoto.benchmark_set import IMAGES, TAGS
from training.realphoto.part_benchmark import PosePoint, Reference, TaskScore, score_image
from training.realphoto.reference import model_path
from training.realphoto.zones import ImageZones, Zone, all_zones, class_counts, parse_zones

HAS_POSE_REFERENCE = model_path("heavy").is_file()
HAS_MOVENET = (default_source_dir() / f"{SOURCE_NAME}.bin").is_file()


def test_the_image_set_covers_every_kind_of_picture():
    with_people = [spec for spec in IMAGES if spec.tags]
    assert len(with_people) >= 40
    counts = {tag: sum(tag in spec.tags for spec in IMAGES) for tag in TAGS}
    assert counts["closeup"] >= 10 and counts["fullbody"] >= 10 and counts["small"] >= 10 and counts["group"] >= 5
    assert len({spec.id for spec in IMAGES}) == len(IMAGES)


def test_every_zone_file_is_valid_and_the_classes_are_covered():
    zones = all_zones()  # parses and validates every file: boxes inside the image, known class names
    assert {z.image for z in zones} == {spec.id for spec in IMAGES}
    assert sum(len(z.zones) for z in zones) >= 250
    counts = class_counts(zones)
    for name in (*PARTS.classes, *CLOTHES.classes):
        key = f"{'parts' if name in PARTS.classes else 'clothes'}:{name}"
        if name == "bag":  # the packaged photos show only a few clearly visible bags (see docs)
            assert counts.get(key, 0) >= 4
            continue
        assert counts.get(key, 0) >= 15, key
    looks = {zone.what for image in zones for zone in image.zones if zone.is_background}
    assert any("tripod" in what for what in looks) and any("crowd" in what or "out-of-focus" in what for what in looks)
    assert any("duck" in what for what in looks)


def test_zone_files_reject_unknown_classes_and_boxes_outside_the_image():
    good = {"image": "x", "size": [10, 10], "persons": [[0, 0, 10, 10]],
            "zones": [{"box": [1, 1, 4, 4], "parts": "head", "clothes": "head & skin"}]}
    assert parse_zones(good).zones[0].parts == "head"
    with pytest.raises(ValueError, match="valid: head"):
        parse_zones({**good, "zones": [{"box": [1, 1, 4, 4], "parts": "neck"}]})
    with pytest.raises(ValueError, match="outside"):
        parse_zones({**good, "zones": [{"box": [1, 1, 40, 4], "parts": "head"}]})


def test_scores_count_each_zone_once_and_background_zones_separately(monkeypatch):
    import training.realphoto.part_benchmark as bench

    monkeypatch.setattr(bench, "spec_by_id", lambda image_id: IMAGES[0])  # tags of a close-up
    labels = np.zeros((20, 20), np.uint8)
    labels[0:10, 0:10] = PARTS.classes.index("head")
    labels[10:20, 0:10] = PARTS.classes.index("torso")
    labels[0:5, 10:20] = PARTS.classes.index("torso")  # a quarter of the background zone called a part
    image = ImageZones("x", (20, 20), ((0, 0, 10, 20),), (
        Zone((0, 0, 10, 10), "head", "head & skin"),  # all right
        Zone((0, 5, 10, 15), "head", None),  # half right
        Zone((0, 10, 10, 20), "torso", "upper clothes"),  # all right
        Zone((10, 0, 20, 20), "background", "background", "wall"),
    ))
    score = TaskScore("parts")
    reference = Reference([PosePoint(2, 2, "head", 0), PosePoint(2, 12, "upper arms", 0)],
                          np.zeros((20, 20), bool))
    exact = np.zeros((20, 20), np.uint8)
    exact[:, :10] = 1
    score_image(score, image, labels, reference, exact)
    assert score.zones.mean("head") == pytest.approx(0.75)  # (1 + 0.5) / 2 zones
    assert score.zones.mean("torso") == pytest.approx(1.0)
    assert score.zone_mean() == pytest.approx(0.875)
    assert score.background_as_part.mean("all") == pytest.approx(0.25)
    assert score.pose.mean("head") == 1.0 and score.pose.mean("upper arms") == 0.0
    assert score.silhouette.mean("exact") == pytest.approx(200 / 250)


@pytest.mark.skipif(not (HAS_POSE_REFERENCE and HAS_MOVENET), reason="needs scripts/setup.sh (npm models)")
def test_the_benchmark_command_scores_the_default_models_on_packaged_photos(tmp_path, capsys):
    """End to end on the photos that ship in installed packages (nothing to download)."""
    from scripts import real_benchmark as module

    out = tmp_path / "bench.json"
    code = module.main(["--images", "astronaut", "cameraman", "--json", str(out), "--sheet",
                        str(tmp_path / "sheet.jpg"), "--docs-sheet", str(tmp_path / "docs.jpg")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "zone accuracy" in printed and "pose-point accuracy" in printed
    results = json.loads(out.read_text())
    zones = {z.image: z for z in all_zones()}
    parts_zones = sum(1 for image in ("astronaut", "cameraman") for z in zones[image].zones
                      if z.parts and not z.is_background)
    parts = results["parts"]
    assert sum(entry["n"] for entry in parts["zones"].values()) == parts_zones
    assert 0.0 <= parts["zone_mean"] <= 1.0 and parts["pose"]  # BlazePose put checkpoints on the people
    assert results["clothes"]["silhouette_iou"]["all"]["n"] == 2
    assert (tmp_path / "sheet.jpg").stat().st_size > 10_000 and (tmp_path / "docs.jpg").is_file()


@pytest.mark.skipif(not HAS_MOVENET, reason="needs scripts/setup.sh (MoveNet from npm)")
def test_pose_guided_checkpoints_keep_settings_not_movenet_weights(tmp_path):
    import torch

    from engines import build_model, load_checkpoint, save_checkpoint
    from engines.model import add_pose_guide

    torch.manual_seed(0)
    model = add_pose_guide(build_model(task="clothes", backbone="mobilenetv3_large"), {"input_sizes": [256]}).eval()
    path = tmp_path / "guided.safetensors"
    meta = save_checkpoint(path, model, input_size=161)
    assert meta.model.pose_guide.input_sizes == (256,)
    with safe_open(str(path), "pt") as handle:
        assert not [key for key in handle.keys() if key.startswith("pose_guide.")]  # noqa: SIM118
    loaded = load_checkpoint(path)
    x = torch.randn(1, 3, 161, 161)
    with torch.inference_mode():
        assert torch.allclose(loaded(x)["log_probs"], model(x)["log_probs"], atol=1e-5)
    assert loaded(x)["log_probs"].shape[-1] == 41  # the fusion's grid: a quarter of the input, rounded up
