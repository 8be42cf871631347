"""The Socket.IO server end to end with Flask-SocketIO's test client: real JPEGs, real engines, bad input."""

from __future__ import annotations

import io
import re
import struct
import time
import zlib

import numpy as np
import pytest
from conftest import encode, make_scene
from PIL import Image

from engines.tasks import TASKS
from server.app import ServerSettings, create_server, socketio_client_path
from server.codec import FrameError, decode_image
from server.inference import FrameJob, LatestFrameQueue
from server.overlay import colourise_attention, colourise_parts, scale_colours


@pytest.fixture()
def server(tiny_engines):
    settings = ServerSettings(async_mode="threading", max_frame_bytes=64 * 1024)
    srv = create_server(settings, engines=tiny_engines)
    yield srv
    srv.service.stop()


def wait_for(client, event: str, count: int = 1, timeout: float = 30.0) -> list[dict]:
    """Collect ``count`` messages of ``event`` (results arrive from the worker thread)."""
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        found += [m["args"][0] for m in client.get_received() if m["name"] == event]
        if len(found) < count:
            time.sleep(0.01)
    assert len(found) >= count, f"got {len(found)} {event!r} messages, wanted {count}"
    return found


def error_codes(client) -> list[str]:
    return [m["args"][0]["code"] for m in client.get_received() if m["name"] == "error"]


def test_round_trip_with_a_real_jpeg(server, jpeg_frame):
    client = server.socketio.test_client(server.app)
    client.emit("frame", {"id": 7, "task": "parts", "image": jpeg_frame, "view": "overlay"})
    [result] = wait_for(client, "result")
    assert result["id"] == 7 and result["task"] == "parts"
    overlay = Image.open(io.BytesIO(result["image"]))
    assert overlay.format == "JPEG" and overlay.size == (160, 120)
    assert result["timing"] == "CPU time" and result["engine"] == "cpu"
    assert result["cnn_ms"] > 0 and result["queue_ms"] >= 0 and result["dropped"] == 0
    assert result["server_ms"] >= result["cnn_ms"] + result["queue_ms"]


def test_label_form_carries_class_indices_at_the_frame_size(server, jpeg_frame):
    client = server.socketio.test_client(server.app)
    client.emit("frame", {"id": 8, "task": "parts", "image": jpeg_frame, "form": "labels"})
    [result] = wait_for(client, "result")
    assert result["form"] == "labels" and "image" not in result
    labels = Image.open(io.BytesIO(result["labels"]))
    assert labels.format == "PNG" and labels.mode == "L" and labels.size == (160, 120)
    assert np.asarray(labels).max() < len(TASKS["parts"].classes)
    assert set(result["stages"]) >= {"decode_ms", "preprocess_ms", "forward_ms", "labels_ms", "encode_ms"}
    client.emit("frame", {"id": 9, "task": "clothes", "image": jpeg_frame, "form": "labels", "view": "attention"})
    [result] = wait_for(client, "result")
    scales = np.asarray(Image.open(io.BytesIO(result["labels"])))  # the winning scale per pixel
    assert scales.shape == (120, 160) and scales.max() < 3


def test_attention_view_and_clothes_task(server, jpeg_frame):
    client = server.socketio.test_client(server.app)
    client.emit("frame", {"id": 1, "task": "clothes", "image": jpeg_frame, "view": "attention", "opacity": 1.0})
    [result] = wait_for(client, "result")
    assert result["task"] == "clothes" and result["view"] == "attention"
    pixels = np.asarray(Image.open(io.BytesIO(result["image"]))).astype(int)
    camera = np.asarray(Image.open(io.BytesIO(jpeg_frame))).astype(int)
    # At full opacity every pixel is a mix of the three scale colours: the camera picture is gone.
    assert np.abs(pixels - camera).mean() > 20


def test_png_frames_are_accepted(server):
    client = server.socketio.test_client(server.app)
    client.emit("frame", {"id": 2, "task": "parts", "image": encode(make_scene(64, 48), "PNG")})
    [result] = wait_for(client, "result")
    assert Image.open(io.BytesIO(result["image"])).size == (64, 48)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width``×``height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(bytes(1000)))
            + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize(("message", "code"), [
    ("not an object", "invalid_frame"),
    ({"task": "parts", "image": b"x"}, "invalid_frame"),  # no id
    ({"id": "3", "task": "parts", "image": b"x"}, "invalid_frame"),
    ({"id": True, "task": "parts", "image": b"x"}, "invalid_frame"),
    ({"id": 3, "image": b"x"}, "invalid_frame"),  # no task
    ({"id": 3, "task": 5, "image": b"x"}, "invalid_frame"),
    ({"id": 3, "task": "faces", "image": b"x"}, "unknown_task"),
    ({"id": 3, "task": "parts", "image": b"x", "view": "x-ray"}, "invalid_frame"),
    ({"id": 3, "task": "parts", "image": b"x", "opacity": "half"}, "invalid_frame"),
    ({"id": 3, "task": "parts", "image": b"x", "form": "gif"}, "invalid_frame"),
    ({"id": 3, "task": "parts"}, "invalid_frame"),  # no image
    ({"id": 3, "task": "parts", "image": "aGVsbG8="}, "invalid_frame"),  # text, not bytes
    ({"id": 3, "task": "parts", "image": [1, 2, 3]}, "invalid_frame"),
    ({"id": 3, "task": "parts", "image": b""}, "empty_image"),
    ({"id": 3, "task": "parts", "image": bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8))},
     "undecodable_image"),
    ({"id": 3, "task": "parts", "image": b"GIF89a" + bytes(100)}, "undecodable_image"),
    ({"id": 3, "task": "parts", "image": bytes(64 * 1024 + 1)}, "image_too_large"),
    ({"id": 3, "task": "parts", "image": _png_header_claiming(100_000, 100_000)}, "image_dimensions_too_large"),
    ({"id": 3, "task": "parts", "image": _png_header_claiming(5000, 3000)}, "image_dimensions_too_large"),
])
def test_bad_input_gets_a_clear_error_to_that_client_only(server, jpeg_frame, message, code):
    sender = server.socketio.test_client(server.app)
    bystander = server.socketio.test_client(server.app)
    sender.emit("frame", message)
    received = [m for m in sender.get_received() if m["name"] == "error"]
    assert [m["args"][0]["code"] for m in received] == [code]
    error = received[0]["args"][0]
    assert error["message"]
    if isinstance(message, dict) and isinstance(message.get("id"), int) and not isinstance(message["id"], bool):
        assert error["id"] == 3
    assert bystander.get_received() == []
    # Nothing was queued, and both clients (the offender too) carry on.
    assert len(server.service.queue) == 0
    for client in (sender, bystander):
        client.emit("frame", {"id": 9, "task": "parts", "image": jpeg_frame})
        assert wait_for(client, "result")[0]["id"] == 9


def test_huge_jpeg_header_is_refused_before_decoding(server):
    data = bytearray(encode(make_scene(64, 48), quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width in the SOF0 segment
    client = server.socketio.test_client(server.app)
    client.emit("frame", {"id": 4, "task": "parts", "image": bytes(data)})
    assert error_codes(client) == ["image_dimensions_too_large"]


def test_truncated_jpeg_is_an_error_not_a_crash(server, jpeg_frame):
    client = server.socketio.test_client(server.app)
    client.emit("frame", {"id": 5, "task": "parts", "image": jpeg_frame[: len(jpeg_frame) // 2]})
    [error] = wait_for(client, "error")
    assert error == {"id": 5, "code": "truncated_image", "message": error["message"]}
    client.emit("frame", {"id": 6, "task": "parts", "image": jpeg_frame})
    assert wait_for(client, "result")[0]["id"] == 6


def test_two_clients_each_get_their_own_results(server, jpeg_frame):
    first = server.socketio.test_client(server.app)
    second = server.socketio.test_client(server.app)
    first.emit("frame", {"id": 100, "task": "parts", "image": jpeg_frame})
    second.emit("frame", {"id": 200, "task": "clothes", "image": encode(make_scene(64, 48, seed=1))})
    [one] = wait_for(first, "result")
    [two] = wait_for(second, "result")
    assert (one["id"], one["task"]) == (100, "parts")
    assert (two["id"], two["task"], Image.open(io.BytesIO(two["image"])).size) == (200, "clothes", (64, 48))
    time.sleep(0.2)
    assert first.get_received() == [] and second.get_received() == []


def test_a_flood_is_answered_by_dropping_and_the_latest_frame_wins(server, jpeg_frame):
    client = server.socketio.test_client(server.app)
    sent = 60
    for frame_id in range(sent):
        client.emit("frame", {"id": frame_id, "task": "parts", "image": jpeg_frame})
        # One waiting frame per client whatever the rate, plus at most one the idle worker claimed.
        assert len(server.service.queue) <= 2
    results = wait_for(client, "result")
    deadline = time.monotonic() + 30
    while results[-1]["id"] != sent - 1 and time.monotonic() < deadline:
        results += wait_for(client, "result")
    ids = [r["id"] for r in results]
    assert ids[-1] == sent - 1 and ids == sorted(ids)
    assert len(results) < sent
    assert len(results) + sum(r["dropped"] for r in results) == sent


def test_a_frame_claimed_by_the_idle_worker_is_not_replaced():
    queue = LatestFrameQueue()
    queue.put(FrameJob("a", 1, "parts", "overlay", 0.5, b"x"), claim=True)
    queue.put(FrameJob("a", 2, "parts", "overlay", 0.5, b"x"), claim=True)  # the claim is taken: waits
    queue.put(FrameJob("a", 3, "parts", "overlay", 0.5, b"x"))  # replaces 2, not 1
    assert [job.frame_id for job in queue.take(lambda task: False, 8)] == [1]
    [job] = queue.take(lambda task: False, 8)
    assert (job.frame_id, job.dropped) == (3, 1)


def test_concurrent_starts_run_one_dispatcher(tiny_engines):
    """Connect handlers start the service from many real threads at once (--async-mode threading)."""
    import threading

    from server.inference import InferenceService

    class SlowToReadFlag(InferenceService):
        """Reading the running flag takes a moment, as a thread switch at the wrong time would:
        every starter reads it before any of them sets it, unless start() holds a lock."""

        @property
        def _running(self) -> bool:
            value = self._flag
            time.sleep(0.002)
            return value

        @_running.setter
        def _running(self, value: bool) -> None:
            self._flag = value

    dispatchers: list[threading.Thread] = []
    service: InferenceService | None = None

    def spawn(fn, *args):
        thread = threading.Thread(target=fn, args=args, daemon=True)
        if fn == service._dispatch:
            dispatchers.append(thread)
        thread.start()
        return thread

    service = SlowToReadFlag(tiny_engines, deliver=lambda outcome: None, spawn=spawn, create_event=threading.Event)
    ready = threading.Barrier(16)
    starters = [threading.Thread(target=lambda: (ready.wait(), service.start())) for _ in range(16)]
    for thread in starters:
        thread.start()
    for thread in starters:
        thread.join()
    service.stop()
    for thread in dispatchers:
        thread.join(timeout=5)
    assert len(dispatchers) == 1


def test_latest_frame_queue_keeps_one_frame_per_client_and_counts_drops():
    queue = LatestFrameQueue()
    for frame_id in range(3):
        queue.put(FrameJob("a", frame_id, "parts", "overlay", 0.5, b"x"))
    queue.put(FrameJob("b", 10, "parts", "overlay", 0.5, b"x"))
    queue.put(FrameJob("c", 20, "clothes", "overlay", 0.5, b"x"))
    assert len(queue) == 3
    [job] = queue.take(lambda task: False, max_batch=8)
    assert (job.sid, job.frame_id, job.dropped) == ("a", 2, 2)
    batch = queue.take(lambda task: True, max_batch=8)  # b's task batches; c's other task waits
    assert [(j.sid, j.frame_id) for j in batch] == [("b", 10)]
    queue.discard("c")
    assert len(queue) == 0 and queue.take(lambda task: True, 8) == []


def test_a_client_that_leaves_mid_frame_does_not_disturb_others(server, jpeg_frame):
    leaver = server.socketio.test_client(server.app)
    stayer = server.socketio.test_client(server.app)
    leaver.emit("frame", {"id": 1, "task": "parts", "image": jpeg_frame})
    leaver.emit("frame", {"id": 2, "task": "parts", "image": jpeg_frame})
    leaver.disconnect()
    stayer.emit("frame", {"id": 3, "task": "parts", "image": jpeg_frame})
    assert wait_for(stayer, "result")[0]["id"] == 3
    assert len(server.service.queue) == 0 and server.service.errors == 0


def test_token_refusal(tiny_engines, jpeg_frame):
    srv = create_server(ServerSettings(async_mode="threading", token="s3cret"), engines=tiny_engines)
    assert not srv.socketio.test_client(srv.app).is_connected()
    assert not srv.socketio.test_client(srv.app, auth={"token": "wrong"}).is_connected()
    client = srv.socketio.test_client(srv.app, auth={"token": "s3cret"})
    assert client.is_connected()
    client.emit("frame", {"id": 1, "task": "parts", "image": jpeg_frame})
    assert wait_for(client, "result")[0]["id"] == 1
    srv.service.stop()


def test_http_endpoints_and_no_path_traversal(server):
    http = server.app.test_client()
    info = http.get("/api/info").get_json()
    assert info["tasks"]["parts"]["classes"][1:] == ["head", "torso", "upper arms", "lower arms", "upper legs",
                                                     "lower legs"]
    assert len(info["tasks"]["clothes"]["palette"]) == len(info["tasks"]["clothes"]["classes"])
    assert info["trained"] is False and info["input_size"] == 97 and info["version"]
    assert http.get("/healthz").get_json()["status"] == "ok"
    assert b"<video" in http.get("/").data
    assert http.get("/static/app.js").status_code == 200
    # Everything the page names exists: its icons, the favicon browsers ask for anyway, and the
    # Socket.IO client's source map (asked for when developer tools are open).
    page = http.get("/").data.decode()
    for path in [*re.findall(r'(?:href|src)="(/[^"]+)"', page), "/favicon.ico"]:
        assert http.get(path).status_code == 200, path
    if socketio_client_path().exists():
        assert http.get("/vendor/socket.io.min.js.map").status_code == 200
    for path in ("/static/../server/app.py", "/static/%2e%2e/server/app.py", "/static/..%2fserver%2fapp.py",
                 "/static//etc/passwd"):
        response = http.get(path, follow_redirects=True)
        assert response.status_code == 404 and b"import" not in response.data and b"root:" not in response.data, path


def test_codec_refuses_truncated_and_accepts_whole_images(jpeg_frame):
    assert decode_image(jpeg_frame).shape == (120, 160, 3)
    with pytest.raises(FrameError) as caught:
        decode_image(jpeg_frame[:200])
    assert caught.value.code in ("truncated_image", "undecodable_image")


def test_overlay_paints_parts_and_leaves_background_alone():
    palette = TASKS["parts"].palette
    frame = np.full((4, 6, 3), 100, np.uint8)
    labels = np.zeros((4, 6), np.uint8)
    labels[:, 3:] = 2
    solid = np.asarray(colourise_parts(frame, labels, palette, opacity=1.0))
    assert (solid[:, :3] == 100).all() and (solid[:, 3:] == palette[2]).all()
    half = np.asarray(colourise_parts(frame, labels, palette, opacity=0.5)).astype(int)
    assert np.abs(half[:, 3:] - (100 + palette[2].astype(int)) / 2).max() <= 1


def test_attention_view_uses_one_colour_per_scale():
    frame = np.zeros((2, 6, 3), np.uint8)
    attention = np.zeros((3, 2, 6), np.float32)
    for scale in range(3):
        attention[scale, :, 2 * scale: 2 * scale + 2] = 1.0
    image = np.asarray(colourise_attention(frame, attention, opacity=1.0))
    for scale in range(3):
        assert (image[:, 2 * scale: 2 * scale + 2] == scale_colours(3)[scale]).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("size", "offset", "length"), [(0, 0, None), (1, 3, None), (31 * 1024, 0, None),
                                                         (1000, 2, 997), (7, 1, 5)])
def test_fast_websocket_unmasking_returns_what_eventlet_does(size, offset, length):
    from eventlet.websocket import RFC6455WebSocket

    from server.eventlet_fixes import apply_mask

    data = bytes(np.random.default_rng(size).integers(0, 256, size, np.uint8))
    mask = b"\x9a\x01\xff\x37"
    assert apply_mask(data, mask, length, offset) == RFC6455WebSocket._apply_mask(data, mask, length, offset)
    assert apply_mask(bytearray(data), mask, length, offset) == apply_mask(data, mask, length, offset)
