"""Start ``python -m server`` as a child process on a free loopback port and wait until it answers.

Used by the load test, the screenshot tool and the live tests, which all want a real server
process (eventlet, real sockets) rather than an in-process app.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with the tail of its log."""


@dataclass
class LocalServer:
    url: str
    process: subprocess.Popen
    log_path: Path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; reaps it either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def local_server(args: list[str], log_path: str | Path, *, https: bool = False, timeout: float = 600,
                 env: dict | None = None) -> Iterator[LocalServer]:
    """Run ``python -m server --host 127.0.0.1 --port <free> ARGS`` until the block ends.

    Yields once ``/healthz`` answers 200. The server's output goes to ``log_path``: an unread
    pipe would fill up and stall it.
    """
    from engines.settings import repo_root  # here, not at import: importing engines loads torch

    port = free_port()
    log_path = Path(log_path)
    command = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port), *args]
    if not https:
        command.append("--http")
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, cwd=repo_root(), stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"{'https' if https else 'http'}://127.0.0.1:{port}"
    unverified = ssl._create_unverified_context()  # the server's own self-signed certificate
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2, context=unverified) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None:
                raise ServerStartError(f"server exited with code {process.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise ServerStartError(f"server did not answer within {timeout:g} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield LocalServer(url=url, process=process, log_path=log_path)
    finally:
        stop_process(process)
