"""Fixes to eventlet that the live server applies at start-up (eventlet mode only)."""

from __future__ import annotations

import numpy as np


def apply_mask(data: bytes | bytearray | memoryview, mask: bytes, length: int | None = None,
               offset: int = 0) -> bytes:
    """XOR the first ``length`` bytes of ``data`` with the 4-byte websocket ``mask``, starting at
    byte ``offset`` of the mask cycle: what eventlet's ``RFC6455WebSocket._apply_mask`` returns."""
    if length is None:
        length = len(data)
    if length <= 0:
        return b""
    key = bytes(mask[(offset + i) % 4] for i in range(4)) * (length // 4 + 1)
    payload = np.frombuffer(memoryview(data)[:length], np.uint8)
    return (payload ^ np.frombuffer(key, np.uint8, count=length)).tobytes()


def speed_up_websockets() -> None:
    """Unmask websocket frames with numpy instead of a per-byte Python loop.

    eventlet unmasks every byte a browser sends in a generator expression, on the event loop:
    6.9 ms for one 31 KB camera frame, during which no other client is served. This takes
    0.05 ms and returns the same bytes.
    """
    from eventlet.websocket import RFC6455WebSocket

    RFC6455WebSocket._apply_mask = staticmethod(apply_mask)
