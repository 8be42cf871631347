"""Bare Socket.IO clients, one websocket each, for load tests and reliability tests.

A python-socketio client costs threads and always reads; these cost one socket and read only
when told to, so a test can hold hundreds of idle phones, or a phone that sends frames and never
reads its results, as a broken or stalled page would.
"""

from __future__ import annotations

import contextlib
import json
import select
import threading
from urllib.parse import urlsplit

import websocket


class RawSocketIO:
    """One Socket.IO connection (protocol 5 over Engine.IO 4, websocket only)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        options = {"sslopt": {"cert_reqs": 0}} if scheme == "wss" else {}
        self.ws = websocket.create_connection(f"{scheme}://{parts.netloc}/socket.io/?EIO=4&transport=websocket",
                                              timeout=timeout, **options)
        opened = self.ws.recv()
        if not opened.startswith("0"):
            raise ConnectionError(f"unexpected Engine.IO greeting {opened[:60]!r}")
        self.ws.send("40" + (json.dumps({"token": token}) if token else ""))
        while True:  # the namespace's answer, skipping any ping that came first
            reply = self.ws.recv()
            if reply == "2":
                self.ws.send("3")
            elif reply.startswith("40"):
                break
            else:
                raise ConnectionError(f"connection refused: {reply[:120]!r}")

    def send_frame(self, frame_id: int, image: bytes, task: str = "parts", form: str = "jpeg") -> None:
        """A ``frame`` event with the image as a binary attachment, as socket.io-client sends it."""
        event = ["frame", {"id": frame_id, "task": task, "form": form, "image": {"_placeholder": True, "num": 0}}]
        self.ws.send("451-" + json.dumps(event, separators=(",", ":")))
        self.ws.send_binary(image)

    def answer_pings(self) -> None:
        """Read whatever is waiting and answer pings, so the server keeps this connection."""
        while select.select([self.ws.sock], [], [], 0)[0]:
            message = self.ws.recv()
            if message == "2":
                self.ws.send("3")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed by the server
            self.ws.close(timeout=1)


class IdleCrowd:
    """``count`` connected phones that send nothing and only answer pings, from one thread."""

    def __init__(self, url: str, count: int, token: str | None = None) -> None:
        self.clients = [RawSocketIO(url, token) for _ in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        by_socket = {client.ws.sock: client for client in self.clients}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(by_socket), [], [], 0.5)
            for sock in ready:
                try:
                    by_socket[sock].answer_pings()
                except Exception:  # a closed connection: stop watching it
                    by_socket.pop(sock, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for client in self.clients:
            client.close()


class StalledSender:
    """A phone that sends frames at ``fps`` and never reads what comes back."""

    def __init__(self, url: str, frames: list[bytes], fps: float = 30.0, token: str | None = None,
                 receive_buffer: int | None = None) -> None:
        self.client = RawSocketIO(url, token)
        if receive_buffer:  # a small buffer makes the server's writes block sooner
            import socket

            self.client.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.frames, self.interval, self.sent = frames, 1.0 / fps, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.send_frame(self.sent + 1, self.frames[self.sent % len(self.frames)])
            except Exception:  # the server closed us (ping timeout): that is allowed
                return
            self.sent += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.close()
