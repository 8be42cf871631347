"""The real server process under crowds: idle connections and a phone that never reads its results.

Speed is measured by ``scripts/loadtest.py --idle 200`` and ``--stalled 1`` (docs/live-server.md);
these tests check behaviour: others are still answered, and nothing piles up for the stalled phone.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
import socketio
from conftest import encode, running_server

from server.rawsocket import IdleCrowd, StalledSender


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("server")) as (url, _log):
        yield url


def stream(url: str, frame: bytes, count: int, form: str = "jpeg") -> list[dict]:
    """A real python-socketio phone: ``count`` frames, one in flight; returns the results."""
    client = socketio.Client(reconnection=False)
    results: list[dict] = []
    client.on("result", results.append)
    client.connect(url, transports=["websocket"], wait_timeout=30)
    try:
        for frame_id in range(1, count + 1):
            client.emit("frame", {"id": frame_id, "task": "parts", "image": frame, "form": form})
            deadline = time.monotonic() + 30
            while len(results) < frame_id and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(results) == frame_id, f"frame {frame_id} was not answered"
    finally:
        client.disconnect()
    return results


def noisy_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A frame whose overlay JPEG is large (sensor noise does not compress), to fill socket buffers fast."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    return encode(pixels, quality=90)


def test_two_hundred_idle_connections_do_not_stop_another_phone(live_server):
    crowd = IdleCrowd(live_server, 200)
    try:
        assert requests.get(f"{live_server}/healthz", timeout=10).json()["clients"] == 200
        results = stream(live_server, encode(np.full((120, 160, 3), 90, np.uint8)), 5, form="labels")
        assert [r["id"] for r in results] == [1, 2, 3, 4, 5]
    finally:
        crowd.close()


def test_a_phone_that_never_reads_neither_piles_up_nor_blocks_the_others(live_server):
    frame = noisy_jpeg()
    before = requests.get(f"{live_server}/healthz", timeout=10).json()
    stalled = StalledSender(live_server, [frame], fps=30, receive_buffer=16 * 1024)
    try:
        deadline = time.monotonic() + 60
        health = before
        while health["unread_drops"] == before["unread_drops"] and time.monotonic() < deadline:
            time.sleep(0.2)  # until its socket buffers are full and the server starts dropping
            health = requests.get(f"{live_server}/healthz", timeout=10).json()
        assert health["unread_drops"] > before["unread_drops"], "the server never noticed the phone was not reading"
        results = stream(live_server, frame, 10)  # another phone is still served, frame after frame
        assert len(results) == 10
        sent_before = stalled.sent
        time.sleep(1.0)
        health = requests.get(f"{live_server}/healthz", timeout=10).json()
        assert stalled.sent > sent_before  # it kept sending...
        assert health["unsent_messages"] <= 2 * health["clients"]  # ...and nothing piled up for it
    finally:
        stalled.close()
