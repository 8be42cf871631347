"""The server as users run it: ``python -m server`` over HTTPS with its own certificate, a real client."""

from __future__ import annotations

import os
import socket
import time

import pytest
import requests
import socketio
from conftest import encode, make_scene, running_server
from cryptography import x509

from server.certs import ensure_certificate


def test_certificate_names_the_lan_addresses_and_is_reused(tmp_path):
    cert_path, key_path = ensure_certificate(["192.168.1.20"], folder=tmp_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "192.168.1.20"}
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    first = cert_path.read_bytes()
    assert ensure_certificate(["192.168.1.20"], folder=tmp_path)[0].read_bytes() == first  # cached
    ensure_certificate(["10.0.0.7"], folder=tmp_path)  # the machine moved to another network
    assert cert_path.read_bytes() != first


def test_accepted_connections_have_nagle_off():
    from server.__main__ import make_listener

    listener = make_listener("127.0.0.1", 0)
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        for sock in (accepted, client, listener):
            sock.close()


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with running_server(cache, "--token", "t0ken", https=True,
                        env={**os.environ, "XDG_CACHE_HOME": str(cache)}) as (url, log_path):
        yield url, cache, log_path


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_https_server_serves_frames_and_refuses_wrong_tokens(https_server):
    url, cache, log_path = https_server
    assert (cache / "partcam" / "cert.pem").exists()
    startup = log_path.read_text()
    assert f"{url}/?token=t0ken" in startup and "UNTRAINED" in startup
    assert requests.get(f"{url}/vendor/socket.io.min.js", verify=False, timeout=5).status_code == 200

    refused = socketio.Client(ssl_verify=False, reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        refused.connect(url, auth={"token": "nope"}, transports=["websocket"], wait_timeout=10)

    client = socketio.Client(ssl_verify=False, reconnection=False)
    client.connect(url, auth={"token": "t0ken"}, transports=["websocket"], wait_timeout=10)
    try:
        frame = encode(make_scene(320, 240), quality=80)
        got: list = []
        client.on("result", got.append)
        client.on("error", got.append)
        client.emit("frame", {"id": 1, "task": "parts", "image": frame})
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        [result] = got
        assert result["id"] == 1 and result["image"][:2] == b"\xff\xd8"
        assert result["timing"] == "CPU time" and result["server_ms"] >= result["cnn_ms"]
        # The REST endpoint shares the worker with the live client, under eventlet, with the same token.
        parse = f"{url}/api/parse?task=parts"
        answer = requests.post(parse, data=frame, headers={"Authorization": "Bearer t0ken"}, verify=False, timeout=30)
        assert answer.status_code == 200 and answer.content[:4] == b"\x89PNG" and float(answer.headers["X-CNN-Ms"]) > 0
        assert requests.post(parse, data=frame, verify=False, timeout=30).status_code == 401
    finally:
        client.disconnect()
