"""Flask + Flask-SocketIO: the phone page, the JSON endpoints and the Socket.IO events.

Handlers are named after their events and only check input and hand frames on; all heavy
work happens in ``server.inference`` off the event loop.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, request, send_file, send_from_directory
from flask_socketio import SocketIO, emit

from engines import Engine
from engines import __version__ as engines_version
from engines.settings import client_dir, node_modules
from engines.shipped import load_default_engine, settle_glue_threads
from engines.tasks import TASKS

from .codec import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, FrameError, check_image_bytes, open_image
from .inference import FORMS, VIEWS, FrameJob, InferenceService, Outcome
from .overlay import DEFAULT_OPACITY, scale_colours
from .workers import WorkerRegistry, default_worker_name

log = logging.getLogger("partcam.server")

VERSION = engines_version


def socketio_client_path() -> Path:
    """The Socket.IO browser client that ``npm ci`` installs (in ``$PARTCAM_NODE_MODULES``)."""
    return node_modules() / "socket.io-client" / "dist" / "socket.io.min.js"


@dataclass
class ServerSettings:
    """Everything that shapes the server's behaviour; the CLI fills it in."""

    engine: str = "auto"
    parts: str | None = None
    clothes: str | None = None
    input_size: int | None = None
    token: str | None = None
    async_mode: str = "eventlet"
    max_frame_bytes: int = DEFAULT_MAX_BYTES
    max_side: int = DEFAULT_MAX_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS
    jpeg_quality: int = 80
    redis: str | None = None  # message queue shared by several server processes (redis://host:port/db)
    worker: str = ""  # this process's name in results and health reports; default host:pid
    threads: int | None = None  # CPU threads for the engines (default: all cores)

    @property
    def max_message_bytes(self) -> int:
        # Socket.IO drops the whole connection above this, with no message the page can show, so
        # leave room for frames a little over the frame limit: those get a clear "image_too_large".
        return 2 * self.max_frame_bytes + 64 * 1024


def load_engines(settings: ServerSettings) -> dict[str, Engine]:
    """One engine per task: the checkpoint given, else the shipped model, else an untrained one."""
    if settings.threads:
        from engines.backends.cpu import set_cpu_threads

        set_cpu_threads(settings.threads)  # before any engine: the first call fixes the count
    engines = {task: load_default_engine(task, getattr(settings, task), backend=settings.engine,
                                         input_size=settings.input_size) for task in TASKS}
    settle_glue_threads(list(engines.values()))
    return engines


def _engine_info(engine: Engine) -> dict:
    info = engine.describe()
    info["attention"] = engine.merge == "attention"
    info["scale_colours"] = scale_colours(len(engine.scales)).tolist()
    return info


def _run_blocking(async_mode: str):
    if async_mode == "eventlet":
        from eventlet import tpool

        # Two real threads: one runs the network while the other decodes the next frame and
        # encodes the last result. tpool's default pool of 20 threads spread frames over 20
        # threads, each with its own malloc arena, and the RSS of a 4-client load test grew by
        # ~190 MB in 30 s.
        tpool.set_num_threads(2)
        return tpool.execute
    return None  # threading mode: the dispatcher and its helpers are already real threads


def _check_frame_message(message: Any, engines: dict[str, Engine]) -> tuple[int, str, str, float, str, Any]:
    """Validate a ``frame`` message's fields; raises FrameError naming the first problem."""
    if not isinstance(message, dict):
        raise FrameError("invalid_frame", "a frame must be an object {id, task, image, view, form}")
    frame_id = message.get("id")
    if isinstance(frame_id, bool) or not isinstance(frame_id, int):
        raise FrameError("invalid_frame", "'id' must be an integer")
    task = message.get("task")
    if not isinstance(task, str):
        raise FrameError("invalid_frame", "'task' must be a string")
    if task not in engines:
        raise FrameError("unknown_task", f"unknown task {task[:40]!r}; this server runs: {', '.join(engines)}")
    view = message.get("view", "overlay")
    if view not in VIEWS:
        raise FrameError("invalid_frame", f"'view' must be one of: {', '.join(VIEWS)}")
    if view == "attention" and engines[task].merge != "attention":
        raise FrameError("attention_unavailable", f"the {task} model has no scale attention to show")
    opacity = message.get("opacity", DEFAULT_OPACITY)
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not math.isfinite(opacity):
        raise FrameError("invalid_frame", "'opacity' must be a number from 0 to 1")
    form = message.get("form", "jpeg")
    if form not in FORMS:
        raise FrameError("invalid_frame", f"'form' must be one of: {', '.join(FORMS)}")
    if "image" not in message:
        raise FrameError("invalid_frame", "'image' is missing")
    return frame_id, task, view, min(max(float(opacity), 0.0), 1.0), form, message["image"]


class PartCamServer:
    """The Flask app, its Socket.IO server and the inference service, wired together."""

    def __init__(self, settings: ServerSettings, engines: dict[str, Engine] | None = None) -> None:
        self.settings = settings
        self.engines = engines if engines is not None else load_engines(settings)
        # Paths are read once here, so PARTCAM_CLIENT_DIR and PARTCAM_NODE_MODULES set before start count.
        self.client_dir = client_dir()
        self.socketio_js = socketio_client_path()
        self.app = Flask(__name__, static_folder=str(self.client_dir), static_url_path="/static")
        self.app.config["SEND_FILE_MAX_AGE_DEFAULT"] = 0  # the page and its code change together
        self.app.json.sort_keys = False  # tasks keep their order (parts first) on the page
        # With Redis, emits addressed to a client connected to another process reach it through
        # the queue (Flask-SocketIO's message_queue), whichever process emits.
        self.socketio = SocketIO(self.app, async_mode=settings.async_mode,
                                 max_http_buffer_size=settings.max_message_bytes,
                                 message_queue=settings.redis, channel=QUEUE_CHANNEL)
        self.worker = settings.worker or default_worker_name()
        self.clients: set[str] = set()
        self.unread_drops = 0  # frames and results dropped because their client was not reading
        eio = self.socketio.server.eio
        self.service = InferenceService(
            self.engines, deliver=self._deliver, spawn=self.socketio.start_background_task,
            create_event=eio.create_event, run_blocking=_run_blocking(settings.async_mode),
            max_side=settings.max_side, max_pixels=settings.max_pixels, jpeg_quality=settings.jpeg_quality)
        self._register_routes()
        self._register_events()
        self.registry: WorkerRegistry | None = None
        if settings.redis:
            self.registry = WorkerRegistry(settings.redis, self.worker, self._status)
            self.socketio.start_background_task(self.registry.run, self.socketio.sleep)
        if not self.socketio_js.exists():
            log.warning("%s is missing: run `npm ci` (the page cannot connect without it)", self.socketio_js)

    # --- HTTP -------------------------------------------------------------------------------
    def info(self) -> dict:
        first = next(iter(self.engines.values()))
        return {
            "name": "PartCam",
            "version": VERSION,
            "engine": first.name,
            "device": first.device_name,
            "timing": first.timing_label,
            "input_size": first.input_size,
            "trained": all(engine.trained for engine in self.engines.values()),
            "tasks": {task: {**TASKS[task].to_dict(), "model": _engine_info(engine)}
                      for task, engine in self.engines.items()},
            "views": list(VIEWS),
            "forms": list(FORMS),
            "max_frame_bytes": self.settings.max_frame_bytes,
            "token_required": bool(self.settings.token),
        }

    def _status(self) -> dict:
        """This process's own figures, as /healthz and the shared worker list report them."""
        return {"clients": len(self.clients), "waiting_frames": len(self.service.queue),
                "frames_done": self.service.frames_done, "errors": self.service.errors,
                "unread_drops": self.unread_drops,
                "unsent_messages": sum(self._backlog(sid) for sid in list(self.clients))}

    def health(self) -> dict:
        """``/healthz``: this process, and with Redis every live worker (any process answers for all)."""
        own = self._status()
        report: dict[str, Any] = {"status": "ok", **own, "worker": self.worker}
        if self.registry is None:
            report["workers"] = {self.worker: {"worker": self.worker, "pid": os.getpid(), **own}}
            return report
        try:
            report["workers"] = self.registry.workers()
            report["redis"] = "ok"
        except Exception as error:  # this process still serves its own clients without Redis
            report["workers"] = {}
            report["redis"] = f"unreachable: {error}"
        return report

    def _register_routes(self) -> None:
        app = self.app

        @app.get("/")
        def index():
            return send_from_directory(self.client_dir, "index.html")

        @app.get("/favicon.ico")
        def favicon():
            # Browsers ask for this path whatever the page links (a home-screen bookmark, a tab
            # opened on /api/info); answer with the page's icon rather than a 404.
            return send_from_directory(self.client_dir, "icon.svg", mimetype="image/svg+xml")

        @app.get("/vendor/socket.io.min.js")
        def socketio_client():
            if not self.socketio_js.exists():
                abort(404, description="socket.io client missing on the server: run `npm ci` in the project folder")
            return send_file(self.socketio_js, mimetype="text/javascript")

        @app.get("/vendor/socket.io.min.js.map")
        def socketio_client_map():
            # The script names its source map; a browser with developer tools open asks for it.
            source_map = self.socketio_js.with_name(self.socketio_js.name + ".map")
            if not source_map.exists():
                abort(404)
            return send_file(source_map, mimetype="application/json")

        @app.get("/api/info")
        def api_info():
            return jsonify(self.info())

        @app.get("/healthz")
        def healthz():
            return jsonify(self.health())

        @app.post("/api/parse")
        def api_parse():
            return self._parse_request()

        @app.after_request
        def no_sniffing(response):
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response

    def _token_ok(self, given: object) -> bool:
        expected = self.settings.token
        return not expected or (isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode()))

    def _parse_request(self) -> Response:
        """``POST /api/parse?task=T`` with a JPEG or PNG body → PNG label map at the image's size.

        The same checks and error codes as Socket.IO frames; the frame queues with the live
        clients' frames on the one inference worker (an HTTP caller never replaces them).
        """
        received = time.perf_counter()
        bearer = request.headers.get("Authorization", "")
        given = bearer[7:] if bearer.startswith("Bearer ") else request.args.get("token")
        if not self._token_ok(given):
            return _http_error(FrameError("unauthorized", "access token missing or wrong: send "
                                                          "'Authorization: Bearer TOKEN' or ?token=TOKEN"))
        task = request.args.get("task", "parts")
        try:
            if task not in self.engines:
                raise FrameError("unknown_task",
                                 f"unknown task {task[:40]!r}; this server runs: {', '.join(self.engines)}")
            limit = self.settings.max_frame_bytes
            if request.content_length is not None and request.content_length > limit:  # refused unread
                raise FrameError("image_too_large", f"image is {request.content_length:,} bytes; "
                                                    f"the limit is {limit:,} bytes")
            data = check_image_bytes(request.stream.read(limit + 1), limit)
            open_image(data, self.settings.max_side, self.settings.max_pixels)  # header only
        except FrameError as error:
            return _http_error(error)
        done = self.socketio.server.eio.create_event()
        box: dict[str, Outcome] = {}

        def reply(outcome: Outcome) -> None:
            box["outcome"] = outcome
            done.set()

        job = FrameJob(f"http:{uuid.uuid4().hex}", 0, task, "overlay", 0.0, data, received=received, form="labels",
                       reply=reply)
        self.service.start()
        self.service.submit(job)
        if not done.wait(timeout=HTTP_PARSE_TIMEOUT_S):
            self.service.forget(job.sid)
            return _http_error(FrameError("busy", "the server did not finish this image in time; try again"))
        outcome = box["outcome"]
        if outcome.error is not None:
            return _http_error(outcome.error)
        result = outcome.result
        response = Response(result["labels"], mimetype="image/png")
        response.headers["X-CNN-Ms"] = f"{result['cnn_ms']:.2f}"
        response.headers["X-Timing"] = result["timing"]
        response.headers["X-Server-Ms"] = f"{(time.perf_counter() - received) * 1000.0:.2f}"
        response.headers["X-Classes"] = ",".join(TASKS[task].classes)
        return response

    # --- Socket.IO --------------------------------------------------------------------------
    def _register_events(self) -> None:
        socketio = self.socketio

        @socketio.on("connect")
        def handle_connect(auth=None):
            if self.settings.token:
                given = auth.get("token") if isinstance(auth, dict) else None
                if not self._token_ok(given):
                    log.info("refused a connection without the right token from %s", request.remote_addr)
                    raise ConnectionRefusedError("access token missing or wrong: open the link the server printed")
            self.clients.add(request.sid)
            self.service.start()

        @socketio.on("disconnect")
        def handle_disconnect(reason=None):
            self.clients.discard(request.sid)
            self.service.forget(request.sid)

        @socketio.on("frame")
        def handle_frame(message):
            received = time.perf_counter()
            frame_id = message.get("id") if isinstance(message, dict) else None
            try:
                frame_id, task, view, opacity, form, image = _check_frame_message(message, self.engines)
                data = check_image_bytes(image, self.settings.max_frame_bytes)
                open_image(data, self.settings.max_side, self.settings.max_pixels)  # header only
            except FrameError as error:
                emit("error", _error_payload(frame_id, error))
                return
            if self._backlog(request.sid) >= MAX_UNSENT:
                # This client is not reading what we send (a stalled page, a dead link): running its
                # frames would only take engine time from the others and pile results up here.
                self.unread_drops += 1
                return
            self.service.submit(FrameJob(request.sid, frame_id, task, view, opacity, data, received=received,
                                         form=form))

    def _backlog(self, sid: str) -> int:
        """Messages queued for ``sid`` that its connection has not taken yet (0 when unknown)."""
        server = self.socketio.server
        try:
            socket = server.eio.sockets.get(server.manager.eio_sid_from_sid(sid, "/"))
            return socket.queue.qsize() if socket is not None else 0
        except Exception:  # the test client and some transports have no such queue
            return 0

    def _deliver(self, outcome: Outcome) -> None:
        sid = outcome.job.sid
        if sid not in self.clients:
            return  # the client left while its frame was running
        if self._backlog(sid) >= MAX_UNSENT:
            self.unread_drops += 1  # memory stays bounded for a client that does not read
            return
        if outcome.error is not None:
            self.socketio.emit("error", _error_payload(outcome.job.frame_id, outcome.error), to=sid, ignore_queue=True)
            return
        result = outcome.result
        result["server_ms"] = round((time.perf_counter() - outcome.job.received) * 1000.0, 2)
        result["worker"] = self.worker
        # The client is connected to this process (it is in self.clients), so results and errors
        # go straight to it: through Redis every worker would decode every result.
        self.socketio.emit("result", result, to=sid, ignore_queue=True)


def _error_payload(frame_id: Any, error: FrameError) -> dict:
    payload: dict[str, Any] = {"code": error.code, "message": error.message}
    if isinstance(frame_id, int) and not isinstance(frame_id, bool):
        payload["id"] = frame_id
    return payload


# HTTP status for each error code of ``POST /api/parse`` (the codes are the Socket.IO ones).
HTTP_STATUS = {"unauthorized": 401, "image_too_large": 413, "image_dimensions_too_large": 413,
               "internal_error": 500, "busy": 503}
HTTP_PARSE_TIMEOUT_S = 60.0
QUEUE_CHANNEL = "partcam"  # the Redis channel the server processes share
# Results a client may leave unread before its new frames and results are dropped: one being
# written plus one more; a page that reads its results never gets near this.
MAX_UNSENT = 2


def _http_error(error: FrameError) -> Response:
    response = jsonify({"code": error.code, "message": error.message})
    response.status_code = HTTP_STATUS.get(error.code, 400)
    return response


def create_server(settings: ServerSettings | None = None, engines: dict[str, Engine] | None = None) -> PartCamServer:
    """Build the whole server; pass ``engines`` to skip loading models (tests do)."""
    return PartCamServer(settings or ServerSettings(), engines)
