"""Offline parsing: ``scripts/parse.py`` on real files and ``POST /api/parse`` on a real server app."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import encode, make_scene
from PIL import Image

from engines import build_model, save_checkpoint
from engines.shipped import model_source, shipped_checkpoint
from engines.tasks import TASKS
from scripts import parse as parse_script
from server.app import ServerSettings, create_server


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "parts.safetensors"
    save_checkpoint(path, build_model(task="parts", backbone="mobilenetv3_large"), input_size=97)
    return path


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def run_parse(args: list[str], capsys) -> tuple[int, str]:
    status = parse_script.main(args)
    return status, capsys.readouterr().err


def test_images_and_folders_give_label_maps_at_the_input_size(tmp_path, tiny_checkpoint, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(encode(make_scene(200, 150), quality=85))
    (folder / "b.png").write_bytes(encode(make_scene(90, 130, seed=1), "PNG"))
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    single = tmp_path / "c.jpg"
    single.write_bytes(encode(make_scene(64, 48, seed=2), quality=90))
    out = tmp_path / "out"
    status, err = run_parse([str(folder), str(single), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
                             "--engine", "cpu"], capsys)
    assert status == 0, err
    for name, size in (("a", (200, 150)), ("b", (90, 130)), ("c", (64, 48))):
        labels = Image.open(out / f"{name}.png")
        assert labels.mode == "L" and labels.size == size
        assert np.asarray(labels).max() < len(TASKS["parts"].classes)
        overlay = Image.open(out / f"{name}-overlay.jpg")
        assert overlay.format == "JPEG" and overlay.size == size
    assert not (out / "notes.png").exists()


def test_video_gives_an_overlay_video_and_per_frame_labels(tmp_path, tiny_checkpoint, capsys):
    import cv2

    video = tmp_path / "walk.mp4"
    write_video(video, [make_scene(160, 120, seed=i) for i in range(6)])
    out = tmp_path / "out"
    status, err = run_parse([str(video), "--out", str(out), "--labels", "--checkpoint", str(tiny_checkpoint),
                             "--engine", "cpu", "--task", "parts"], capsys)
    assert status == 0, err
    capture = cv2.VideoCapture(str(out / "walk-overlay.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 6
    labels = sorted((out / "walk").glob("*.png"))
    assert [p.name for p in labels] == [f"{i:06d}.png" for i in range(6)]
    assert Image.open(labels[0]).size == (160, 120)


def test_bad_inputs_get_one_line_each_and_the_rest_goes_on(tmp_path, tiny_checkpoint, capsys):
    good = tmp_path / "good.jpg"
    good.write_bytes(encode(make_scene(80, 60), quality=85))
    not_image = tmp_path / "readme.jpg"
    not_image.write_text("plain text with a .jpg name")
    corrupt_video = tmp_path / "broken.mp4"
    corrupt_video.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)))
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(encode(make_scene(200, 150), quality=85)[:1500])
    missing = tmp_path / "nowhere.png"
    out = tmp_path / "out"
    status, err = run_parse([str(missing), str(not_image), str(good), str(corrupt_video), str(truncated),
                             "--out", str(out), "--checkpoint", str(tiny_checkpoint), "--engine", "cpu"], capsys)
    assert status == 1
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(lines) == 4
    expected = ((missing, "no such file"), (not_image, "not a readable"), (corrupt_video, "not a readable video"),
                (truncated, "truncated"))
    for path, words in expected:
        assert any(str(path) in line and words in line for line in lines), (path, lines)
    assert Image.open(out / "good.png").size == (80, 60)


def test_the_default_model_is_the_demos():
    if shipped_checkpoint("parts").exists():
        assert model_source("parts") == shipped_checkpoint("parts")
    assert model_source("parts", "given.safetensors") == "given.safetensors"


# --- POST /api/parse -------------------------------------------------------------------------------------------
@pytest.fixture()
def http(tiny_engines):
    srv = create_server(ServerSettings(async_mode="threading", max_frame_bytes=64 * 1024, token="t0k"),
                        engines=tiny_engines)
    yield srv.app.test_client()
    srv.service.stop()


AUTH = {"Authorization": "Bearer t0k"}


def test_rest_parse_answers_a_label_png_at_the_image_size(http, jpeg_frame):
    response = http.post("/api/parse?task=parts", data=jpeg_frame, headers=AUTH, content_type="image/jpeg")
    assert response.status_code == 200 and response.mimetype == "image/png"
    labels = Image.open(io.BytesIO(response.data))
    assert labels.mode == "L" and labels.size == (160, 120)
    assert float(response.headers["X-CNN-Ms"]) > 0 and response.headers["X-Timing"] == "CPU time"
    assert response.headers["X-Classes"].split(",")[1] == "head"
    png = encode(make_scene(70, 50), "PNG")
    response = http.post("/api/parse?task=clothes&token=t0k", data=png, content_type="image/png")
    assert response.status_code == 200 and Image.open(io.BytesIO(response.data)).size == (70, 50)


def _huge_header_jpeg() -> bytes:
    data = bytearray(encode(make_scene(64, 48), quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


@pytest.mark.parametrize(("query", "body", "status", "code"), [
    ("task=faces", "jpeg", 400, "unknown_task"),
    ("task=parts", b"", 400, "empty_image"),
    ("task=parts", b"GIF89a" + bytes(100), 400, "undecodable_image"),
    ("task=parts", bytes(64 * 1024 + 1), 413, "image_too_large"),
    ("task=parts", "huge", 413, "image_dimensions_too_large"),
    ("task=parts", "truncated", 400, "truncated_image"),
])
def test_rest_parse_bad_input_gets_a_json_error_with_the_socketio_codes(http, jpeg_frame, query, body, status, code):
    body = {"jpeg": jpeg_frame, "huge": _huge_header_jpeg(), "truncated": jpeg_frame[: len(jpeg_frame) // 2]}.get(
        body, body) if isinstance(body, str) else body
    response = http.post(f"/api/parse?{query}", data=body, headers=AUTH, content_type="application/octet-stream")
    assert response.status_code == status
    assert response.get_json()["code"] == code and response.get_json()["message"]


def test_rest_parse_needs_the_token(http, jpeg_frame):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = http.post("/api/parse?task=parts", data=jpeg_frame, headers=headers)
        assert response.status_code == 401 and response.get_json()["code"] == "unauthorized"
