"""Several server processes on one machine: ``python -m server --workers N``.

The supervisor (this module, a plain process: no eventlet, no torch) starts

* ``redis-server`` on loopback, unless ``--redis URL`` names a shared one: every worker's
  Flask-SocketIO uses it as its ``message_queue``, and each writes its status there;
* N workers, ``python -m server --http --host 127.0.0.1 --port P --redis URL``, each with its own
  engines: one per GPU (``CUDA_VISIBLE_DEVICES``) on GPU servers, the CPU's threads split between
  them otherwise;
* HAProxy on the public port with HTTPS, sticky by a cookie it inserts (Engine.IO's long-polling
  transport sends each request of a session separately and only the process that made the session
  knows it), least connections for new phones, health checks on ``/healthz``.

A worker that dies is logged and restarted; its phones reconnect through the balancer to a live
worker meanwhile. SIGINT and SIGTERM stop everything it started. docs/scale-out.md has the
design, several hosts, and the balancer configuration on its own:

    python -m server.scaleout --backend hostA=10.0.0.11:8080 --backend hostB=10.0.0.12:8080 --pem site.pem
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .workers import redact_url

log = logging.getLogger("partcam.scaleout")

COOKIE = "partcam_worker"
STARTUP_TIMEOUT_S = 900.0  # a first start may convert and compile the models for the runtime
STOP_TIMEOUT_S = 10.0
STEADY_AFTER_S = 30.0  # a worker that ran this long before dying is restarted at once


class ScaleOutError(RuntimeError):
    """Something the supervisor needs is missing or did not start; the message says what to do."""


@dataclass(frozen=True)
class Backend:
    """One server process as the balancer sees it: its name (also its cookie value) and address."""

    name: str
    address: str  # host:port


def balancer_config(backends: Sequence[Backend], *, bind: str = "0.0.0.0", port: int = 8443,
                    pem: str | None = None) -> str:
    """An HAProxy configuration for PartCam's server processes.

    ``pem``: certificate and key in one file; HTTPS ends at the balancer, the workers speak HTTP.
    """
    if not backends:
        raise ValueError("at least one backend")
    for backend in backends:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", backend.name):
            raise ValueError(f"backend name {backend.name!r}: use letters, digits, '.', '_' and '-' only")
    tls = f" ssl crt {pem} alpn http/1.1" if pem else ""
    servers = "\n".join(f"    server {b.name} {b.address} cookie {b.name}" for b in backends)
    return f"""\
# PartCam: a sticky balancer in front of several `python -m server --redis URL` processes.
global
    # In the foreground (haproxy -db) a worker going DOWN or UP again is printed on the console;
    # as a service, add a log line (e.g. `log /dev/log local0 notice`, and `log global` below).

defaults
    mode http
    timeout connect 2s
    timeout client 70s           # longer than Engine.IO's ping interval (25 s) plus its timeout (20 s)
    timeout server 70s
    timeout tunnel 1h            # an open WebSocket
    timeout http-request 10s
    timeout check 3s
    # A connection refused by a worker that just died is tried again on another one at once.
    retries 2
    option redispatch 1
    option forwardfor

frontend partcam
    bind {bind}:{port}{tls}
    # The workers speak plain HTTP; Engine.IO compares a page's Origin (https://...) with the
    # scheme it is told here, and refuses the connection when they differ.
    http-request set-header X-Forwarded-Proto {"https" if pem else "http"}
    default_backend workers

backend workers
    # A new phone goes to the worker with the fewest connections; a Socket.IO session stays open
    # for minutes, so round robin would stay uneven after a worker restarts.
    balance leastconn
    # Sticky: the first answer sets a cookie naming the worker, and every later request of that
    # session (each long-polling GET and POST, the WebSocket upgrade) goes to the same one. If that
    # worker is down the cookie is ignored and the request goes to a live one.
    cookie {COOKIE} insert indirect nocache httponly{" secure" if pem else ""}
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter 1s fastinter 500ms fall 2 rise 2
{servers}
"""


def write_pem(cert: str | os.PathLike, key: str | os.PathLike, path: Path) -> Path:
    """HAProxy wants the certificate and its key in one file; readable by this user only."""
    path.touch(mode=0o600)
    path.write_bytes(Path(cert).read_bytes().rstrip(b"\n") + b"\n" + Path(key).read_bytes())
    return path


def find_binary(name: str, package: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                       None)
    if not found:
        raise ScaleOutError(f"{name} not found: install it (`apt-get install {package}`; scripts/setup.sh --dev "
                            f"does) or run a single process without --workers")
    return found


def gpu_ids(engine: str) -> list[str]:
    """The GPUs workers may be pinned to: none for CPU runtimes, else CUDA_VISIBLE_DEVICES or nvidia-smi's list."""
    if engine in ("cpu", "openvino"):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class WorkerPlan:
    name: str
    port: int
    env: dict[str, str]
    threads: int | None  # CPU threads for its engines; None on GPU servers
    gpu: str | None = None


def plan_workers(count: int, engine: str, *, host_label: str, ports: Sequence[int]) -> list[WorkerPlan]:
    """Names, ports, GPU and threads for each worker: one GPU each (round robin when there are more
    workers than GPUs), or on a CPU an equal share of its cores."""
    gpus = gpu_ids(engine)
    if gpus and count > len(gpus):
        log.warning("%d workers share %d GPU(s): each GPU runs several engines", count, len(gpus))
    threads = None if gpus else max(1, cpu_cores() // count)
    plans = []
    for index, port in enumerate(ports[:count]):
        env = dict(os.environ)
        gpu = gpus[index % len(gpus)] if gpus else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        plans.append(WorkerPlan(f"{host_label}-w{index + 1}", port, env, threads, gpu))
    return plans


def worker_command(args: argparse.Namespace, plan: WorkerPlan, redis_url: str) -> list[str]:
    """``python -m server`` for one worker: loopback HTTP, the shared Redis, every other option as given."""
    command = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(plan.port), "--http",
               "--redis", redis_url, "--worker-name", plan.name, "--engine", args.engine,
               "--async-mode", args.async_mode, "--max-frame-mb", f"{args.max_frame_mb:g}"]
    for flag, value in (("--parts", args.parts), ("--clothes", args.clothes), ("--input-size", args.input_size),
                        ("--token", args.token), ("--threads", args.threads or plan.threads)):
        if value is not None:
            command += [flag, str(value)]
    if args.log_requests:
        command.append("--log-requests")
    return command


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports nothing listens on right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


_prctl = None  # libc's prctl, looked up before any fork


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, so even a supervisor killed
    with SIGKILL leaves no orphans."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """One supervised process; its output is printed with its name in front."""

    name: str
    command: list[str]
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    restart_at: float | None = None
    lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=40))

    def start(self, output_lock: threading.Lock) -> None:
        # Its own process group: Ctrl-C at the terminal reaches only the supervisor, which stops
        # everything in order.
        self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, process_group=0, preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        self.restart_at = None
        threading.Thread(target=self._relay, args=(self.process, output_lock), daemon=True).start()

    def _relay(self, process: subprocess.Popen, output_lock: threading.Lock) -> None:
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            with output_lock:
                print(f"[{self.name}] {line}", flush=True)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def tail(self) -> str:
        return "\n".join(self.lines)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Starts Redis (unless given), the workers and the balancer; restarts what dies; stops it all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stopping = threading.Event()
        self.output_lock = threading.Lock()
        self.children: list[Child] = []
        self.workers: list[Child] = []
        self.folder = Path(tempfile.mkdtemp(prefix="partcam-scale-out-"))
        self.redis_url = args.redis

    # --- starting ----------------------------------------------------------------------------------
    def _start(self, child: Child) -> Child:
        child.start(self.output_lock)
        self.children.append(child)
        return child

    def _check_alive(self, child: Child, what: str) -> None:
        code = child.exit_code()
        if code is not None:
            raise ScaleOutError(f"{what} stopped ({describe_exit(code)}) while starting; its last lines:\n"
                                f"{child.tail()}")
        if self.stopping.is_set():
            raise ScaleOutError("stopped while starting")

    def start_redis(self) -> str:
        binary = find_binary("redis-server", "redis-server")
        [port] = free_ports(1)
        # Loopback only, nothing written to disk: it carries messages and short-lived status records.
        child = self._start(Child("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                            "--appendonly", "no", "--dir", str(self.folder), "--loglevel", "warning"]))
        import redis

        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0)
        deadline = time.monotonic() + 30
        while True:
            self._check_alive(child, "redis-server")
            try:
                client.ping()
                return url
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise ScaleOutError(f"redis-server did not answer on port {port}:\n{child.tail()}") from None
                time.sleep(0.1)

    def check_redis(self, url: str) -> None:
        import redis

        try:
            redis.Redis.from_url(url, socket_connect_timeout=3.0, socket_timeout=3.0).ping()
        except (redis.RedisError, ValueError) as error:
            raise ScaleOutError(f"cannot reach Redis at {redact_url(url)}: {error}") from None

    def start_workers(self) -> list[WorkerPlan]:
        host_label = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
        plans = plan_workers(self.args.workers, self.args.engine, host_label=host_label,
                             ports=free_ports(self.args.workers))
        for plan in plans:
            child = Child(plan.name, worker_command(self.args, plan, self.redis_url), env=plan.env)
            self.workers.append(self._start(child))
            where = f"GPU {plan.gpu}" if plan.gpu is not None else f"{self.args.threads or plan.threads} CPU thread(s)"
            log.info("worker %s (pid %d) on 127.0.0.1:%d, %s", plan.name, child.pid, plan.port, where)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        waiting = dict(zip((c.name for c in self.workers), plans, strict=True))
        while waiting:
            for worker in self.workers:
                if worker.name not in waiting:
                    continue
                self._check_alive(worker, f"worker {worker.name}")
                try:
                    url = f"http://127.0.0.1:{waiting[worker.name].port}/healthz"
                    with urllib.request.urlopen(url, timeout=2) as response:
                        if response.status == 200:
                            del waiting[worker.name]
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise ScaleOutError(f"workers {', '.join(waiting)} did not answer within {STARTUP_TIMEOUT_S:g} s")
            if waiting:
                time.sleep(0.3)
        return plans

    def start_balancer(self, plans: list[WorkerPlan]) -> None:
        binary = find_binary("haproxy", "haproxy")
        pem = None
        if not self.args.http:
            if self.args.cert:
                cert, key = self.args.cert, self.args.key
            else:
                from .certs import ensure_certificate

                cert, key = ensure_certificate()
            pem = str(write_pem(cert, key, self.folder / "site.pem"))
        config = self.folder / "haproxy.cfg"
        config.write_text(balancer_config([Backend(p.name, f"127.0.0.1:{p.port}") for p in plans],
                                          bind=self.args.host or "0.0.0.0", port=self.args.port, pem=pem))
        check = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise ScaleOutError(f"HAProxy refused its configuration {config}:\n{check.stdout}{check.stderr}")
        child = self._start(Child("balancer", [binary, "-db", "-f", str(config)]))
        target = ("127.0.0.1" if self.args.host in ("0.0.0.0", "", None) else self.args.host, self.args.port)
        deadline = time.monotonic() + 20
        while True:
            self._check_alive(child, "haproxy")
            try:
                socket.create_connection(target, timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise ScaleOutError(f"haproxy did not listen on port {self.args.port}:\n{child.tail()}") from None
                time.sleep(0.1)

    def banner(self, plans: list[WorkerPlan]) -> None:
        from .__main__ import page_urls, print_phone_urls

        scheme = "http" if self.args.http else "https"
        urls = page_urls(scheme, self.args.host, self.args.port, self.args.token)
        with self.output_lock:
            print(f"\nPartCam is serving with {len(plans)} worker process(es) behind HAProxy "
                  f"(sticky cookie {COOKIE}), sharing {redact_url(self.redis_url)}:")
            for plan in plans:
                print(f"  {plan.name}: http://127.0.0.1:{plan.port}")
            print_phone_urls(scheme, urls)
            sys.stdout.flush()

    # --- running -----------------------------------------------------------------------------------
    def watch(self) -> None:
        """Restart whatever exits, until asked to stop: at once after a long run, with a growing
        pause (1 s doubling to 30 s) when it keeps dying young."""
        while not self.stopping.is_set():
            now = time.monotonic()
            for child in self.children:
                code = child.exit_code()
                if code is None:
                    continue
                if child.restart_at is None:
                    ran = now - child.started
                    child.backoff = 0.0 if ran >= STEADY_AFTER_S else min(30.0, max(1.0, 2 * child.backoff))
                    child.restart_at = now + child.backoff
                    log.warning("%s (pid %d) stopped: %s after %.0f s; restarting it%s", child.name, child.pid,
                                describe_exit(code), ran, f" in {child.backoff:.0f} s" if child.backoff else "")
                elif now >= child.restart_at:
                    child.restarts += 1
                    child.start(self.output_lock)
                    log.info("%s restarted (pid %d, restart %d)", child.name, child.pid, child.restarts)
            self.stopping.wait(0.2)

    def stop(self) -> None:
        """The balancer first (no new requests), then the workers, then Redis; SIGKILL after 10 s."""
        rank = {"balancer": 0, "redis": 2}
        for step in range(3):
            group = [c for c in self.children if rank.get(c.name, 1) == step]
            for child in group:
                if child.exit_code() is None:
                    child.process.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for child in group:
                if child.process is None:
                    continue
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) did not stop in %g s: killing it", child.name, child.pid, STOP_TIMEOUT_S)
                    child.process.kill()
                    child.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def run(self) -> int:
        def on_signal(signum: int, frame) -> None:
            if not self.stopping.is_set():
                log.info("%s: stopping the balancer, the workers and Redis", signal.Signals(signum).name)
            self.stopping.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.redis_url:
                self.check_redis(self.redis_url)
            else:
                self.redis_url = self.start_redis()
            log.info("message queue: %s", redact_url(self.redis_url))
            plans = self.start_workers()
            self.start_balancer(plans)
            self.banner(plans)
            self.watch()
            return 0
        except ScaleOutError as error:
            if self.stopping.is_set() and str(error) == "stopped while starting":
                return 0
            log.error("%s", error)
            return 1
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def supervise(args: argparse.Namespace) -> int:
    """``python -m server --workers N``: run until SIGINT or SIGTERM; returns the exit status."""
    global _prctl
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if sys.platform.startswith("linux"):
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = None
    return Supervisor(args).run()


def main(argv: list[str] | None = None) -> None:
    """Print an HAProxy configuration for server processes on several hosts (docs/scale-out.md)."""
    parser = argparse.ArgumentParser(prog="python -m server.scaleout", description=main.__doc__)
    parser.add_argument("--backend", action="append", required=True, metavar="NAME=HOST:PORT",
                        help="a `python -m server --http --redis URL` process; repeat for each")
    parser.add_argument("--bind", default="0.0.0.0", help="address the balancer listens on")
    parser.add_argument("--port", type=int, default=8443, help="public port (default 8443)")
    parser.add_argument("--pem", help="certificate and key in one PEM file (HTTPS); omit for plain HTTP")
    args = parser.parse_args(argv)
    backends = []
    for spec in args.backend:
        name, sep, address = spec.partition("=")
        if not sep or ":" not in address:
            parser.error(f"--backend {spec!r}: expected NAME=HOST:PORT")
        backends.append(Backend(name, address))
    try:
        print(balancer_config(backends, bind=args.bind, port=args.port, pem=args.pem), end="")
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
