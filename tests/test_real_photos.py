"""Real-photo measurement: the BlazePose reference mask, the silhouette IoU and the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engines import build_model, save_checkpoint
from training.realphoto.measure import part_fractions, silhouette_iou
from training.realphoto.photos import PHOTO_SOURCES, available_photos
from training.realphoto.reference import (
    NOT_INSTALLED,
    SquareRoi,
    crop_square,
    model_path,
    uncrop_probability,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_pose = pytest.mark.skipif(not model_path("lite").is_file(), reason=NOT_INSTALLED)


def test_silhouette_iou_on_hand_made_masks() -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[:, :5] = 1  # 50 pixels of head
    labels[:, 5:6] = 3  # 10 more pixels of upper arm
    reference = np.zeros((10, 10), bool)
    reference[:, 3:8] = True  # 50 pixels, 30 of them ours
    assert silhouette_iou(labels, reference) == pytest.approx(30 / 80)
    assert silhouette_iou(labels, labels != 0) == 1.0
    assert silhouette_iou(np.zeros_like(labels), np.zeros_like(reference)) == 1.0
    assert silhouette_iou(np.zeros_like(labels), reference) == 0.0
    shares = part_fractions(labels, reference, num_classes=7)
    assert shares.tolist() == pytest.approx([0.4, 0.4, 0, 0.2, 0, 0, 0])


def test_crop_and_uncrop_are_inverse_on_a_square_inside_the_photo() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    roi = SquareRoi(40.0, 30.0, 40.0)
    crop = crop_square(photo, roi, size=40)
    assert np.array_equal(crop, photo[10:50, 20:60])
    back = uncrop_probability(crop[..., 0].astype(np.float32) / 255, roi, 60, 80)
    assert np.allclose(back[10:50, 20:60], photo[10:50, 20:60, 0] / 255, atol=1e-5)
    assert back[:10].max() == 0 and back[:, :20].max() == 0


def test_crop_outside_the_photo_is_grey() -> None:
    photo = np.zeros((20, 20, 3), np.uint8)
    crop = crop_square(photo, SquareRoi(10.0, 10.0, 60.0), size=60)
    assert (crop[:15] == 128).all() and (crop[25:35, 25:35] == 0).all()


def test_photos_come_from_installed_packages_with_licences() -> None:
    photos = available_photos(["astronaut"])
    assert photos[0].rgb.shape == (512, 512, 3) and photos[0].rgb.dtype == np.uint8
    assert all(source.licence for source in PHOTO_SOURCES)
    with pytest.raises(KeyError, match="known photos"):
        available_photos(["lena"])


@needs_pose
def test_reference_mask_covers_the_astronaut_not_the_corners() -> None:
    pytest.importorskip("ai_edge_litert", reason="BlazePose runs in ai-edge-litert")
    from training.realphoto.reference import BlazePoseReference

    photo = available_photos(["astronaut"])[0]
    reference = BlazePoseReference("lite", refinements=1)(photo.rgb)
    mask = reference.mask()
    assert mask.shape == photo.rgb.shape[:2]
    assert reference.presence > 0.5
    # Face centre (about x 220, y 110 in the 512 px photo) and the suit's chest are person.
    assert mask[100:120, 210:230].all() and mask[300:340, 150:200].all()
    # The top corners (flag, wall and shuttle) are not.
    assert not mask[:60, :60].any() and not mask[:60, -60:].any()
    assert 0.25 < mask.mean() < 0.6


@needs_pose
def test_cli_compares_checkpoints_in_one_table(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(task="parts", backbone="mobilenetv3_large", merge="attention")
    checkpoint = tmp_path / "random.safetensors"
    save_checkpoint(checkpoint, model, input_size=129)
    out, numbers = tmp_path / "grid.jpg", tmp_path / "numbers.json"
    result = subprocess.run(
        [sys.executable, "scripts/real_photos.py", "--checkpoint", str(checkpoint), "--checkpoint", str(checkpoint),
         "--name", "a", "--name", "b", "--photos", "astronaut", "--reference-model", "lite",
         "--out", str(out), "--json", str(numbers)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert "silhouette IoU" in result.stdout and "(all person)" in result.stdout
    table_row = next(line for line in result.stdout.splitlines() if line.startswith("astronaut "))
    assert len(table_row.split()) == 4  # photo, a, b, all-person baseline
    data = json.loads(numbers.read_text())
    iou = data["checkpoints"]["a"]["photos"]["astronaut"]["silhouette_iou"]
    assert 0.0 <= iou <= 1.0 and iou == data["checkpoints"]["b"]["photos"]["astronaut"]["silhouette_iou"]
    assert out.stat().st_size < 500_000
    assert (tmp_path / "grid_astronaut.jpg").stat().st_size < 500_000


def test_fake_camera_file_holds_every_frame_in_i420(tmp_path) -> None:
    from training.realphoto.fake_camera import handheld_frames, write_y4m

    photo = np.zeros((60, 50, 3), np.uint8)
    photo[10:50, 15:35] = (200, 40, 40)  # a red figure on black
    frames = handheld_frames(photo, width=40, height=64, count=3, seed=1)
    assert [f.shape for f in frames] == [(64, 40, 3)] * 3
    assert not all(np.array_equal(frames[0], f) for f in frames[1:])  # the hand shakes
    path = tmp_path / "camera.y4m"
    write_y4m(path, frames)
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    assert header.split()[:3] == [b"YUV4MPEG2", b"W40", b"H64"]
    frame_bytes = len(b"FRAME\n") + 40 * 64 * 3 // 2
    assert len(body) == 3 * frame_bytes
    luma = np.frombuffer(body[6:6 + 40 * 64], np.uint8).reshape(64, 40)
    grey = frames[0].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.abs(luma.astype(np.float32) - grey).max() <= 1.0
    with pytest.raises(ValueError, match="even"):
        write_y4m(tmp_path / "odd.y4m", [np.zeros((5, 4, 3), np.uint8)])
