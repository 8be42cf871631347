"""The inference stage: per-client latest-frame-wins slots and one worker that drains them off the event loop.

Flow for each frame: the handler checks it and ``submit``s a ``FrameJob``; the dispatcher takes
the oldest waiting job (plus others of the same task when the engine gains from batches), runs
decode → engine → colourise → encode in a real OS thread, then emits from the dispatcher.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines import Engine

from .codec import FrameError, decode_image, encode_jpeg, encode_label_png
from .overlay import colourise_attention, colourise_parts

log = logging.getLogger("partcam.server")

VIEWS = ("overlay", "attention")
# What a result carries: "jpeg", the coloured overlay re-encoded (any client can show it), or
# "labels", a single-channel PNG of class indices (scale indices for the attention view) at the
# frame's size, which the page colours and blends over the frame it sent.
FORMS = ("jpeg", "labels")


@dataclass
class FrameJob:
    """One client frame on its way through the server."""

    sid: str
    frame_id: int
    task: str
    view: str
    opacity: float
    data: bytes
    received: float = field(default_factory=time.perf_counter)  # perf_counter when the handler got it
    dropped: int = 0  # older frames of this client that this one replaced
    started: float = 0.0  # perf_counter when a worker picked it up
    form: str = "jpeg"
    reply: Callable[[Outcome], None] | None = None  # set for HTTP requests: called instead of emitting


@dataclass
class Outcome:
    """What to send back for one job: a ``result`` payload or an error."""

    job: FrameJob
    result: dict[str, Any] | None = None
    error: FrameError | None = None


class LatestFrameQueue:
    """At most one waiting frame per client; a newer frame replaces it and counts the drop.

    Memory is bounded by the number of clients, whatever rate they send at.
    """

    def __init__(self) -> None:
        self._slots: OrderedDict[str, FrameJob] = OrderedDict()  # oldest waiting client first
        self._lock = threading.Lock()

    def put(self, job: FrameJob) -> FrameJob | None:
        """Queue ``job``; returns the frame it replaced, if any (its drops carry over)."""
        with self._lock:
            replaced = self._slots.get(job.sid)
            if replaced is not None:
                job.dropped += replaced.dropped + 1
            self._slots[job.sid] = job  # an existing key keeps its place: this client has waited longest
            return replaced

    def take(self, batchable: Callable[[str], bool], max_batch: int) -> list[FrameJob]:
        """The oldest waiting job, plus more of the same task when that task's engine likes batches."""
        with self._lock:
            if not self._slots:
                return []
            _, first = self._slots.popitem(last=False)
            jobs = [first]
            if batchable(first.task):
                for sid in [sid for sid, job in self._slots.items() if job.task == first.task][: max_batch - 1]:
                    jobs.append(self._slots.pop(sid))
            return jobs

    def discard(self, sid: str) -> None:
        with self._lock:
            self._slots.pop(sid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)


def _label_map(job: FrameJob, prediction) -> np.ndarray:
    """What a "labels" result carries: class indices, or for the attention view the winning scale."""
    if job.view == "attention":
        return prediction.attention.argmax(axis=0).astype(np.uint8)
    return prediction.labels


def process_batch(jobs: list[FrameJob], engine: Engine, palette: np.ndarray, *, max_side: int, max_pixels: int,
                  jpeg_quality: int) -> list[Outcome]:
    """decode → engine → colourise → encode for jobs of one task. Blocking: call it from a real thread.

    Each result carries ``stages``, milliseconds per step, so the load test can say where time goes.
    """
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    frames: list[np.ndarray] = []
    decoded: list[Outcome] = []
    for job in jobs:
        job.started = started
        try:
            frames.append(decode_image(job.data, max_side, max_pixels))
            decoded.append(Outcome(job))
        except FrameError as error:
            outcomes.append(Outcome(job, error=error))
        job.data = b""  # the bytes are no longer needed; don't keep them alive with the job
    if not frames:
        return outcomes
    decode_ms = (time.perf_counter() - started) * 1000.0 / len(frames)
    want_attention = any(outcome.job.view == "attention" for outcome in decoded)
    try:
        predictions = engine.infer(frames, attention=want_attention)
    except Exception:
        log.exception("inference failed for %d frame(s)", len(frames))
        error = FrameError("internal_error", "the engine failed on this frame; see the server log")
        return outcomes + [Outcome(outcome.job, error=error) for outcome in decoded]
    for outcome, frame, prediction in zip(decoded, frames, predictions):
        job = outcome.job
        if job.view == "attention" and prediction.attention is None:
            outcome.error = FrameError("attention_unavailable", "this model has no scale attention to show")
            outcomes.append(outcome)
            continue
        coded = time.perf_counter()
        if job.form == "labels":
            payload = {"labels": encode_label_png(_label_map(job, prediction))}
        elif job.view == "attention":
            payload = {"image": encode_jpeg(colourise_attention(frame, prediction.attention, job.opacity),
                                            jpeg_quality)}
        else:
            payload = {"image": encode_jpeg(colourise_parts(frame, prediction.labels, palette, job.opacity),
                                            jpeg_quality)}
        stages = {"decode_ms": decode_ms, **prediction.timings,
                  "encode_ms": (time.perf_counter() - coded) * 1000.0}
        outcome.result = {
            "id": job.frame_id,
            "task": job.task,
            "view": job.view,
            "form": job.form,
            **payload,
            "width": int(frame.shape[1]),
            "height": int(frame.shape[0]),
            "cnn_ms": round(float(prediction.cnn_ms), 2),
            "timing": engine.timing_label,
            "queue_ms": round((job.started - job.received) * 1000.0, 2),
            "stages": {name: round(value, 2) for name, value in stages.items()},
            "engine": engine.name,
            "batch": len(frames),
            "dropped": job.dropped,
        }
        outcomes.append(outcome)
    return outcomes


class InferenceService:
    """Owns the waiting frames and the dispatcher that feeds the engines.

    ``spawn`` starts the dispatcher in the server's async mode (a green thread under eventlet),
    ``run_blocking`` moves the heavy work to a real OS thread (``eventlet.tpool.execute``) and
    ``deliver`` is called from the dispatcher with each finished ``Outcome``.
    """

    def __init__(self, engines: dict[str, Engine], *, deliver: Callable[[Outcome], None],
                 spawn: Callable[[Callable[[], None]], Any], create_event: Callable[[], Any],
                 run_blocking: Callable[..., Any] | None = None, max_side: int = 4096, max_pixels: int = 4096 * 3072,
                 jpeg_quality: int = 80, max_batch: int = 8) -> None:
        from engines.tasks import TASKS

        self.engines = engines
        self.palettes = {task: TASKS[task].palette for task in engines}
        self.queue = LatestFrameQueue()
        self._deliver = deliver
        self._spawn = spawn
        self._wake = create_event()
        self._run_blocking = run_blocking or (lambda fn, *args, **kwargs: fn(*args, **kwargs))
        self._options = {"max_side": max_side, "max_pixels": max_pixels, "jpeg_quality": jpeg_quality}
        self.max_batch = max_batch
        self._running = False
        self.frames_done = 0
        self.errors = 0

    def start(self) -> None:
        if not self._running:
            self._running = True
            self._spawn(self._dispatch)

    def stop(self) -> None:
        self._running = False
        self._wake.set()

    def submit(self, job: FrameJob) -> None:
        """Queue a checked frame; a frame of the same client still waiting is dropped."""
        self.queue.put(job)
        self._wake.set()

    def forget(self, sid: str) -> None:
        """A client left: its waiting frame goes; a frame already running is finished and not sent."""
        self.queue.discard(sid)

    def _batchable(self, task: str) -> bool:
        return bool(getattr(self.engines[task], "batching_helps", False))

    def _dispatch(self) -> None:
        while self._running:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while self._running:
                jobs = self.queue.take(self._batchable, self.max_batch)
                if not jobs:
                    break
                task = jobs[0].task
                try:
                    outcomes = self._run_blocking(process_batch, jobs, self.engines[task], self.palettes[task],
                                                  **self._options)
                except Exception:  # never let one bad batch end the dispatcher
                    log.exception("frame processing failed")
                    error = FrameError("internal_error", "the server failed on this frame; see the server log")
                    outcomes = [Outcome(job, error=error) for job in jobs]
                for outcome in outcomes:
                    if outcome.error is None:
                        self.frames_done += 1
                    else:
                        self.errors += 1
                    try:
                        (outcome.job.reply or self._deliver)(outcome)
                    except Exception:
                        log.exception("could not deliver the outcome of frame %s", outcome.job.frame_id)
