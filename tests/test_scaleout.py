"""Several server processes for real: ``python -m server --workers 2`` with its own redis-server and
HAProxy on loopback, small untrained models, python-socketio phones over WebSocket and long-polling.

Speed is measured by ``scripts/loadtest.py --balancer --workers 1 2`` (docs/scale-out.md); these
tests check behaviour: every phone is answered, by both workers, through a worker's death.

The supervised balancer serves plain HTTP here (``--http``): python-socketio's threaded client
reads and writes one TLS socket from two threads and drops WebSocket connections now and then
(python-engineio issue 461), whoever the server is. HTTPS at the balancer is checked with the
page in chromium and with long-polling phones, through the same configuration with a certificate.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import socketio
from conftest import encode, make_scene, running_server, untrained_checkpoint_args

from server.launch import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
MISSING = [name for name in ("redis-server", "haproxy")
           if not (shutil.which(name) or os.access(f"/usr/sbin/{name}", os.X_OK))]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed "
                                                      "(scripts/setup.sh --dev installs them from Debian)")
FRAME = encode(make_scene(160, 120), quality=85)


@dataclass
class Cluster:
    url: str
    process: subprocess.Popen  # the supervisor
    log_path: Path
    other_host: str  # URL of a plain `python -m server --redis URL` process, as another machine runs it

    def supervised(self) -> set[str]:
        """The names of the workers the supervisor started."""
        return set(re.findall(r"worker (\S+) \(pid \d+\) on", self.log()))

    def health(self) -> dict:
        return requests.get(f"{self.url}/healthz", timeout=10).json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``python -m server --workers 2`` on a free port, and a worker "on another host" sharing its
    Redis, started while the supervised ones start (each spends most of its start importing)."""
    folder = tmp_path_factory.mktemp("scale-out")
    port = free_port()
    log_path = folder / "supervisor.log"
    command = [sys.executable, "-m", "server", "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--http",
               "--engine", "cpu", "--input-size", "97", *untrained_checkpoint_args(folder)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    cluster = Cluster(f"http://127.0.0.1:{port}", process, log_path, "")
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"message queue: (redis://\S+)", cluster.log())):
            assert process.poll() is None and time.monotonic() < deadline, cluster.log()[-3000:]
            time.sleep(0.1)
        other = folder / "other-host"
        other.mkdir()
        with running_server(other, "--redis", found.group(1), "--worker-name", "hostB") as (other_url, _log):
            cluster.other_host = other_url
            while True:
                try:
                    if len(cluster.health()["workers"]) == 3:
                        break
                except (requests.RequestException, ValueError):
                    pass
                assert process.poll() is None and time.monotonic() < deadline, cluster.log()[-3000:]
                time.sleep(0.3)
            yield cluster
    finally:
        stop_process(process)


class Phone:
    """A python-socketio phone: one frame in flight; a frame lost with a dying worker is sent again
    once the client has reconnected (as the page does on ``connect``)."""

    def __init__(self, url: str, transport: str, cert: Path | None = None) -> None:
        http = requests.Session()
        http.trust_env = False  # a CA bundle named in the environment would override the check below
        http.verify = str(cert) if cert else True
        # The page's own settings: reconnect forever, quickly. The session object is kept across
        # reconnects, so the balancer's cookie comes back too (as from a browser).
        self.client = socketio.Client(http_session=http, reconnection=True, reconnection_delay=0.2,
                                      reconnection_delay_max=1.0)
        self.url, self.transport = url, transport
        self.results: list[dict] = []
        self.errors: list[dict] = []
        self.connects = 0
        self.disconnects = 0
        # Set by the events: the client's own `connected` is set only after the connect event.
        self.online = False
        self.changed = threading.Condition()
        self.client.on("connect", lambda: self._count("connects"))
        self.client.on("disconnect", lambda *reason: self._count("disconnects"))
        self.client.on("result", lambda message: self._record(self.results, message))
        self.client.on("error", lambda message: self._record(self.errors, message))
        self.next_id = 0

    def _count(self, what: str) -> None:
        with self.changed:
            setattr(self, what, getattr(self, what) + 1)
            self.online = what == "connects"
            self.changed.notify_all()

    def _record(self, into: list, message: dict) -> None:
        with self.changed:
            into.append(message)
            self.changed.notify_all()

    def connect(self) -> Phone:
        self.client.connect(self.url, transports=[self.transport], wait_timeout=20)
        return self

    def stream(self, count: int, timeout: float = 60.0) -> list[dict]:
        """Send frames one at a time until ``count`` more are answered; returns those results."""
        deadline = time.monotonic() + timeout
        answered: list[dict] = []
        while len(answered) < count:
            assert time.monotonic() < deadline, f"{self.transport} phone: {len(answered)} of {count} answered"
            with self.changed:
                self.changed.wait_for(lambda: self.online, timeout=max(0.0, deadline - time.monotonic()))
                self.next_id += 1
                frame_id, dropped = self.next_id, self.disconnects
            try:
                self.client.emit("frame", {"id": frame_id, "task": "parts", "image": FRAME, "form": "labels"})
            except socketio.exceptions.BadNamespaceError:
                continue  # disconnected between the check and the emit

            def settled(frame_id: int = frame_id, dropped: int = dropped) -> bool:
                """Answered, refused, or lost with its worker (then sent again after reconnecting)."""
                return (any(r["id"] == frame_id for r in self.results) or
                        any(e.get("id") == frame_id for e in self.errors) or self.disconnects != dropped)

            with self.changed:
                self.changed.wait_for(settled, timeout=10.0)
                answered += [r for r in self.results if r["id"] == frame_id]
        return answered

    def close(self) -> None:
        self.client.disconnect()


def phones(url: str, cert: Path | None, count: int = 6) -> list[Phone]:
    """``count`` phones, half over WebSocket and half over long-polling, connected at once."""
    made = [Phone(url, ("websocket", "polling")[i % 2], cert) for i in range(count)]
    threads = [threading.Thread(target=phone.connect) for phone in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(phone.client.connected for phone in made)
    return made


def stream_all(all_phones: list[Phone], count: int) -> dict[Phone, list[dict]]:
    """Every phone streams ``count`` frames at the same time."""
    got: dict[Phone, list[dict]] = {}
    failures: list[BaseException] = []

    def run(phone: Phone) -> None:
        try:
            got[phone] = phone.stream(count)
        except BaseException as error:  # reported by the test, not lost in a thread
            failures.append(error)

    threads = [threading.Thread(target=run, args=(phone,)) for phone in all_phones]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return got


def test_six_phones_over_websocket_and_polling_are_all_answered_by_both_workers(cluster):
    health = cluster.health()
    assert set(health["workers"]) == cluster.supervised() | {"hostB"} and health["redis"] == "ok"
    crowd = phones(cluster.url, None)
    try:
        got = stream_all(crowd, 8)
        for phone, results in got.items():
            assert [r["id"] for r in results] == sorted(r["id"] for r in results) and len(results) == 8
            assert phone.errors == [] and phone.disconnects == 0, (phone.transport, phone.errors, phone.disconnects)
            assert len({r["worker"] for r in results}) == 1  # a session stays on its worker
        served = {r["worker"] for results in got.values() for r in results}
        assert served == cluster.supervised() and len(served) == 2
        # Bad input gets a clear error, to its sender only, through the balancer too.
        bad = crowd[1]  # long-polling
        bad.client.emit("frame", {"id": 999, "task": "parts", "image": b"\xff\xd8not a jpeg"})
        with bad.changed:
            bad.changed.wait_for(lambda: bad.errors, timeout=10)
        assert [e["code"] for e in bad.errors] == ["undecodable_image"]
        assert all(phone.errors == [] for phone in crowd if phone is not bad)
        # Each worker's record in Redis (rewritten every second) catches up with what it served.
        served_by = {name: sum(r["worker"] == name for results in got.values() for r in results) for name in served}
        deadline = time.monotonic() + 5
        while any(cluster.health()["workers"][name]["frames_done"] < count for name, count in served_by.items()):
            assert time.monotonic() < deadline, (cluster.health()["workers"], served_by)
            time.sleep(0.2)
    finally:
        for phone in crowd:
            phone.close()


def redis_url(cluster: Cluster) -> str:
    return re.search(r"message queue: (redis://\S+)", cluster.log()).group(1)


def test_an_emit_from_another_process_reaches_a_phone_through_redis(cluster):
    phone = Phone(cluster.url, "polling").connect()
    notices: list = []
    phone.client.on("notice", notices.append)
    try:
        # This test process is not a worker: it emits through the queue all workers listen to.
        outside = socketio.RedisManager(redis_url(cluster), channel="partcam", write_only=True)
        outside.emit("notice", {"text": "the booth closes in 10 minutes"}, to=phone.client.get_sid())
        deadline = time.monotonic() + 10
        while not notices and time.monotonic() < deadline:
            time.sleep(0.05)
        assert notices == [{"text": "the booth closes in 10 minutes"}]
    finally:
        phone.close()


def test_killing_a_worker_loses_no_phone_for_good(cluster):
    crowd = phones(cluster.url, None)
    try:
        before = stream_all(crowd, 2)
        on = {phone: results[-1]["worker"] for phone, results in before.items()}
        victim = next(iter(sorted(set(on.values()))))
        assert set(on.values()) == cluster.supervised()  # both workers have phones
        os.kill(cluster.health()["workers"][victim]["pid"], signal.SIGKILL)
        after = stream_all(crowd, 6)  # every phone, including the victim's, is answered again
        for phone, results in after.items():
            assert len(results) == 6
            assert phone.errors == []
            if on[phone] == victim:
                assert phone.disconnects >= 1 and phone.connects >= 2  # reconnected through the balancer
            else:  # the other worker's phones never noticed
                assert phone.disconnects == 0 and {r["worker"] for r in results} == {on[phone]}
        deadline = time.monotonic() + 10
        while "restarted (pid" not in cluster.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = cluster.log()
        assert f"{victim} (pid" in log and "killed by SIGKILL" in log and "restarted (pid" in log
    finally:
        for phone in crowd:
            phone.close()


@dataclass
class Balancer:
    url: str
    cert: Path
    backends: set[str]


@pytest.fixture(scope="module")
def example_balancer(cluster, tmp_path_factory):
    """The configuration ``python -m server.scaleout`` prints for several hosts, with HTTPS, in front
    of the worker "on another host" and one supervised worker."""
    from server.certs import make_certificate
    from server.scaleout import write_pem

    folder = tmp_path_factory.mktemp("balancer")
    make_certificate(["127.0.0.1"], folder / "cert.pem", folder / "key.pem")
    pem = write_pem(folder / "cert.pem", folder / "key.pem", folder / "site.pem")
    name, port = re.search(r"  (\S+-w2): http://127\.0\.0\.1:(\d+)", cluster.log()).groups()
    public = free_port()
    config = subprocess.run([sys.executable, "-m", "server.scaleout", "--bind", "127.0.0.1", "--port", str(public),
                             "--pem", str(pem), "--backend", f"hostB={cluster.other_host.split('//')[1]}",
                             "--backend", f"{name}=127.0.0.1:{port}"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    (folder / "haproxy.cfg").write_text(config)
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    balancer = subprocess.Popen([haproxy, "-db", "-f", str(folder / "haproxy.cfg")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", public), timeout=1).close()
                break
            except OSError:
                assert balancer.poll() is None and time.monotonic() < deadline, "the example balancer did not start"
                time.sleep(0.1)
        yield Balancer(f"https://127.0.0.1:{public}", folder / "cert.pem", {"hostB", name})
    finally:
        balancer.terminate()
        balancer.wait(timeout=10)


def test_workers_on_other_hosts_join_through_one_redis_and_the_example_balancer(cluster, example_balancer):
    """Another "host": a plain ``python -m server --redis URL`` process, reported by every worker's
    /healthz, and served with a supervised worker through the documented balancer configuration,
    over HTTPS checked against its certificate."""
    health = cluster.health()
    assert "hostB" in health["workers"] and health["workers"]["hostB"]["pid"] != cluster.process.pid
    crowd = [Phone(example_balancer.url, "polling", example_balancer.cert).connect() for _ in range(4)]
    try:
        got = stream_all(crowd, 4)
        assert {r["worker"] for results in got.values() for r in results} == example_balancer.backends
        assert all(phone.errors == [] and phone.disconnects == 0 for phone in crowd)
    finally:
        for phone in crowd:
            phone.close()


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="/usr/bin/chromium is missing (CI installs it)")
def test_the_phone_page_works_over_https_through_the_balancer(example_balancer, tmp_path):
    """The real page in Debian's chromium, over HTTPS through HAProxy to plain-HTTP workers: the
    WebSocket's Origin is https:// and the worker must accept it; the cookie is secure."""
    from playwright.sync_api import sync_playwright

    from training.realphoto.fake_camera import write_y4m

    camera = tmp_path / "camera.y4m"
    write_y4m(camera, [make_scene(320, 240, seed=i) for i in range(3)])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
        try:
            page = browser.new_page(ignore_https_errors=True)  # the balancer's self-signed certificate
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(example_balancer.url + "/")
            page.wait_for_function("window.partcam.shown && window.partcam.nextId > 6", timeout=30_000)
            assert page.evaluate("window.partcam.socket.io.engine.transport.name") == "websocket"
            [cookie] = [c for c in page.context.cookies() if c["name"] == "partcam_worker"]
            assert cookie["value"] in example_balancer.backends and cookie["secure"] and cookie["httpOnly"]
            assert errors == []
        finally:
            browser.close()


def test_example_configuration_in_the_docs_is_what_the_tool_prints_and_haproxy_accepts(tmp_path):
    docs = (ROOT / "docs" / "scale-out.md").read_text()
    command, documented = re.search(r"```bash\n(python -m server\.scaleout [^\n]+)\n```\n+```haproxy\n(.*?)```",
                                    docs, re.S).groups()
    argv = command.split()[3:]
    printed = subprocess.run([sys.executable, "-m", "server.scaleout", *argv], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    assert printed == documented
    # HAProxy checks it, with a real certificate where the documented one would be.
    from server.certs import make_certificate
    from server.scaleout import write_pem

    make_certificate(["127.0.0.1"], tmp_path / "cert.pem", tmp_path / "key.pem")
    pem = write_pem(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "site.pem")
    (tmp_path / "haproxy.cfg").write_text(printed.replace(argv[argv.index("--pem") + 1], str(pem)))
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    check = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_sigterm_stops_every_process_the_supervisor_started(cluster):
    supervisor = cluster.process.pid
    children = [int(pid) for pid in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()]
    programs = sorted(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].rsplit(b"/", 1)[-1].split()[0]
                      for pid in children)  # redis-server rewrites its command line: take the first word
    python = Path(sys.executable).name.encode()
    assert programs == sorted([b"haproxy", b"redis-server", python, python])  # and two workers
    cluster.process.send_signal(signal.SIGTERM)
    assert cluster.process.wait(timeout=30) == 0
    assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []
