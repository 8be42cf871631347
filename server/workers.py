"""Every server process sharing one Redis: who they are and how they are doing.

Each process writes a small status record into Redis every second, with a short expiry, so that
``/healthz`` on any process (reached through the balancer, on any host) reports every live
worker, and a worker that died drops out of the list by itself a few seconds later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("partcam.server")

KEY_PREFIX = "partcam:worker:"
HEARTBEAT_S = 1.0
EXPIRY_S = 5  # a record outlives a missed heartbeat or two, not a dead process


def redact_url(url: str | None) -> str:
    """A Redis URL fit to print: any password replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    if not url:
        return str(url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def default_worker_name(port: int | None = None) -> str:
    """``host:port`` (or ``host:pid``): unique on one machine and readable across several."""
    return f"{socket.gethostname()}:{port if port is not None else os.getpid()}"


class WorkerRegistry:
    """This process's status record in Redis, and everyone's records read back.

    ``status`` returns this process's current figures; ``sleep`` and ``spawn`` are the server's
    own (green threads under eventlet), so the heartbeat never blocks the event loop.
    """

    def __init__(self, redis_url: str, name: str, status: Callable[[], dict[str, Any]]) -> None:
        import redis  # only servers that share a Redis need the package

        # Short timeouts: a health check must answer quickly even when Redis is away.
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.name = name
        self._status = status
        self._key = KEY_PREFIX + name
        self._running = False
        self.last_error: str | None = None

    def publish(self) -> None:
        """Write this process's record now (raises on Redis errors)."""
        record = {"worker": self.name, "host": socket.gethostname(), "pid": os.getpid(), "updated": time.time(),
                  **self._status()}
        self._redis.set(self._key, json.dumps(record), ex=EXPIRY_S)

    def run(self, sleep: Callable[[float], Any]) -> None:
        """The heartbeat loop; run it as a background task."""
        self._running = True
        while self._running:
            try:
                self.publish()
                if self.last_error is not None:
                    log.info("Redis reachable again")
                self.last_error = None
            except Exception as error:  # Redis away: keep serving this process's clients, retry
                if self.last_error is None:
                    log.warning("cannot write this worker's status to Redis: %s", error)
                self.last_error = str(error)
            sleep(HEARTBEAT_S)

    def stop(self) -> None:
        self._running = False
        with contextlib.suppress(Exception):  # else the record expires by itself
            self._redis.delete(self._key)

    def workers(self) -> dict[str, dict[str, Any]]:
        """Every live worker's record by name (raises on Redis errors)."""
        keys = sorted(self._redis.scan_iter(match=KEY_PREFIX + "*", count=100))
        records = {}
        for raw in self._redis.mget(keys) if keys else []:
            if raw is not None:  # expired between the scan and the read
                record = json.loads(raw)
                records[record["worker"]] = record
        return records
