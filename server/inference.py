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
from engines.backends.base import Pending

from .codec import FrameError, decode_frame, encode_jpeg, encode_label_png
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
        self._claimed: FrameJob | None = None
        self._lock = threading.Lock()

    def put(self, job: FrameJob, *, claim: bool = False) -> FrameJob | None:
        """Queue ``job``; returns the frame it replaced, if any (its drops carry over).

        ``claim``: the worker is idle and will take this frame next, so a frame arriving before
        it wakes up waits behind it instead of replacing it. Without this, a phone that sends
        two frames back to back lost the first one every time.
        """
        with self._lock:
            if claim and self._claimed is None:
                self._claimed = job
                return None
            replaced = self._slots.get(job.sid)
            if replaced is not None:
                job.dropped += replaced.dropped + 1
            self._slots[job.sid] = job  # an existing key keeps its place: this client has waited longest
            return replaced

    def take(self, batchable: Callable[[str], bool], max_batch: int) -> list[FrameJob]:
        """The oldest waiting job, plus more of the same task when that task's engine likes batches."""
        with self._lock:
            if self._claimed is not None:
                first, self._claimed = self._claimed, None
            elif self._slots:
                _, first = self._slots.popitem(last=False)
            else:
                return []
            jobs = [first]
            if batchable(first.task):
                for sid in [sid for sid, job in self._slots.items() if job.task == first.task][: max_batch - 1]:
                    jobs.append(self._slots.pop(sid))
            return jobs

    def discard(self, sid: str) -> None:
        with self._lock:
            self._slots.pop(sid, None)
            if self._claimed is not None and self._claimed.sid == sid:
                self._claimed = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots) + (self._claimed is not None)


def _label_map(job: FrameJob, prediction) -> np.ndarray:
    """What a "labels" result carries: class indices, or for the attention view the winning scale."""
    if job.view == "attention":
        return prediction.attention.argmax(axis=0).astype(np.uint8)
    return prediction.labels


@dataclass
class Batch:
    """Jobs of one task on their way through the engine's three steps."""

    outcomes: list[Outcome]  # one per decoded job, filled in by ``finish_batch``
    frames: list[np.ndarray | None]  # full-size pixels where an overlay JPEG is wanted
    pending: Pending
    decode_ms: float
    attention: bool
    prepared_at: float = 0.0  # perf_counter when decoding and letterboxing ended
    forward_at: float = 0.0  # ... when the network started on it
    forwarded_at: float = 0.0  # ... when the network was done with it


def prepare_batch(jobs: list[FrameJob], engine: Engine, *, max_side: int,
                  max_pixels: int) -> tuple[Batch | None, list[Outcome]]:
    """decode → letterbox + normalise. Returns the batch (None if nothing decoded) and the refusals.

    Frames answered with a label map are decoded only as large as the network needs: the
    pixels are not sent back, only labels at the frame's own size.
    """
    started = time.perf_counter()
    refused: list[Outcome] = []
    outcomes: list[Outcome] = []
    frames: list[np.ndarray | None] = []
    pixels: list[np.ndarray] = []
    sizes: list[tuple[int, int]] = []
    for job in jobs:
        job.started = started
        try:
            at_least = engine.input_size if job.form == "labels" else None
            rgb, size = decode_frame(job.data, max_side, max_pixels, at_least=at_least)
        except FrameError as error:
            refused.append(Outcome(job, error=error))
            continue
        finally:
            job.data = b""  # the bytes are no longer needed; don't keep them alive with the job
        outcomes.append(Outcome(job))
        pixels.append(rgb)
        sizes.append(size)
        frames.append(None if job.form == "labels" else rgb)
    if not pixels:
        return None, refused
    decode_ms = (time.perf_counter() - started) * 1000.0 / len(pixels)
    pending = engine.prepare(pixels, sizes)
    attention = any(outcome.job.view == "attention" for outcome in outcomes)
    return Batch(outcomes, frames, pending, decode_ms, attention, prepared_at=time.perf_counter()), refused


def finish_batch(batch: Batch, engine: Engine, palette: np.ndarray, *, jpeg_quality: int) -> list[Outcome]:
    """labels at each frame's size → colour → encode. Each result carries ``stages`` (ms per step)."""
    finish_at = time.perf_counter()
    predictions = engine.finish(batch.pending, attention=batch.attention)
    # Waiting is not overhead: a frame prepared ahead waits for the engine to finish the one before.
    waits = {"engine_wait_ms": max(0.0, batch.forward_at - batch.prepared_at) * 1000.0,
             "finish_wait_ms": max(0.0, finish_at - batch.forwarded_at) * 1000.0}
    outcomes = []
    for outcome, frame, prediction in zip(batch.outcomes, batch.frames, predictions):
        job = outcome.job
        outcomes.append(outcome)
        if job.view == "attention" and prediction.attention is None:
            outcome.error = FrameError("attention_unavailable", "this model has no scale attention to show")
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
        stages = {"decode_ms": batch.decode_ms, **prediction.timings,
                  "encode_ms": (time.perf_counter() - coded) * 1000.0, **waits}
        height, width = prediction.labels.shape
        outcome.result = {
            "id": job.frame_id,
            "task": job.task,
            "view": job.view,
            "form": job.form,
            **payload,
            "width": int(width),
            "height": int(height),
            "cnn_ms": round(float(prediction.cnn_ms), 2),
            "timing": engine.timing_label,
            "queue_ms": round((job.started - job.received) * 1000.0, 2),
            "stages": {name: round(value, 2) for name, value in stages.items()},
            "engine": engine.name,
            "batch": len(predictions),
            "dropped": job.dropped,
        }
    return outcomes


def process_batch(jobs: list[FrameJob], engine: Engine, palette: np.ndarray, *, max_side: int, max_pixels: int,
                  jpeg_quality: int) -> list[Outcome]:
    """All steps for jobs of one task, one after the other. Blocking: call it from a real thread."""
    batch, refused = prepare_batch(jobs, engine, max_side=max_side, max_pixels=max_pixels)
    if batch is None:
        return refused
    batch.forward_at = time.perf_counter()
    engine.forward(batch.pending)
    batch.forwarded_at = time.perf_counter()
    return refused + finish_batch(batch, engine, palette, jpeg_quality=jpeg_quality)


class InferenceService:
    """Owns the waiting frames and the dispatcher that feeds the engines.

    ``spawn`` starts tasks in the server's async mode (green threads under eventlet),
    ``run_blocking`` moves the heavy work to real OS threads (``eventlet.tpool.execute``) and
    ``deliver`` is called with each finished ``Outcome``.

    On engines whose outputs are fresh tensors (``overlap_safe``: the CPU ones) the steps
    overlap: while the network runs on one thread, the next frame is decoded and letterboxed
    and the previous one labelled and encoded on another, so the engine does not wait for them.
    """

    def __init__(self, engines: dict[str, Engine], *, deliver: Callable[[Outcome], None],
                 spawn: Callable[..., Any], create_event: Callable[[], Any],
                 run_blocking: Callable[..., Any] | None = None, max_side: int = 4096, max_pixels: int = 4096 * 3072,
                 jpeg_quality: int = 80, max_batch: int = 8) -> None:
        from engines.tasks import TASKS

        self.engines = engines
        self.palettes = {task: TASKS[task].palette for task in engines}
        self.queue = LatestFrameQueue()
        self._deliver = deliver
        self._spawn = spawn
        self._create_event = create_event
        self._wake = create_event()
        self._run_blocking = run_blocking or (lambda fn, *args, **kwargs: fn(*args, **kwargs))
        self._limits = {"max_side": max_side, "max_pixels": max_pixels}
        self._jpeg_quality = jpeg_quality
        self.max_batch = max_batch
        self._running = False
        # Connect handlers run concurrently (real threads with --async-mode threading): without the
        # lock two of them could both see "not running" and start two dispatchers on one queue.
        self._start_lock = threading.Lock()
        self._idle = False
        self.frames_done = 0
        self.errors = 0

    def start(self) -> None:
        """Start the dispatcher unless it runs already; safe to call from many threads at once."""
        with self._start_lock:
            if self._running:
                return
            self._running = True
        self._spawn(self._dispatch)

    def stop(self) -> None:
        self._running = False
        self._wake.set()

    def submit(self, job: FrameJob) -> None:
        """Queue a checked frame; a frame of the same client still waiting is dropped."""
        self.queue.put(job, claim=self._idle)
        self._wake.set()

    def forget(self, sid: str) -> None:
        """A client left: its waiting frame goes; a frame already running is finished and not sent."""
        self.queue.discard(sid)

    def _batchable(self, task: str) -> bool:
        return bool(getattr(self.engines[task], "batching_helps", False))

    def _send(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.error is None:
                self.frames_done += 1
            else:
                self.errors += 1
            try:
                (outcome.job.reply or self._deliver)(outcome)
            except Exception:
                log.exception("could not deliver the outcome of frame %s", outcome.job.frame_id)

    def _fail(self, jobs: list[FrameJob]) -> None:
        log.exception("frame processing failed")
        error = FrameError("internal_error", "the server failed on this frame; see the server log")
        self._send([Outcome(job, error=error) for job in jobs])

    def _in_background(self, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        """Run ``fn(*args)`` as a task of its own; returns a function that waits for its value
        (its ``done`` attribute says whether it has finished)."""
        done = self._create_event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as error:  # handed to whoever waits
                box["error"] = error
            finally:
                done.set()
                self._wake.set()  # a dispatcher polling for new frames meanwhile moves on at once

        self._spawn(run)

        def wait() -> Any:
            done.wait()
            if "error" in box:
                raise box["error"]
            return box["value"]

        wait.done = done.is_set  # type: ignore[attr-defined]
        return wait

    def _prepare_next(self) -> tuple[str, Batch] | None:
        """Take the next waiting job(s) and decode and letterbox them; None when nothing waits."""
        while True:
            jobs = self.queue.take(self._batchable, self.max_batch)
            if not jobs:
                return None
            task = jobs[0].task
            try:
                batch, refused = self._run_blocking(prepare_batch, jobs, self.engines[task], **self._limits)
            except Exception:  # never let one bad batch end the dispatcher
                self._fail(jobs)
                continue
            self._send(refused)
            if batch is not None:
                return task, batch

    def _finish(self, task: str, batch: Batch) -> None:
        try:
            outcomes = self._run_blocking(finish_batch, batch, self.engines[task], self.palettes[task],
                                          jpeg_quality=self._jpeg_quality)
        except Exception:
            self._fail([outcome.job for outcome in batch.outcomes])
            return
        self._send(outcomes)

    def _dispatch(self) -> None:
        ready: tuple[str, Batch] | None = None  # prepared while the previous batch ran
        while self._running:
            if ready is None:
                self._idle = True
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                self._idle = False
            while self._running:
                current = ready or self._prepare_next()
                ready = None
                if current is None:
                    break
                task, batch = current
                engine = self.engines[task]
                batch.forward_at = time.perf_counter()
                try:
                    if engine.overlap_safe:
                        running = self._in_background(self._run_blocking, engine.forward, batch.pending)
                        # The next frame's decoding overlaps this network run, also when it arrives
                        # during the run (a phone sends it when the previous result reaches it).
                        ready = self._prepare_next()
                        while ready is None and not running.done():
                            self._wake.wait(timeout=0.005)
                            self._wake.clear()
                            ready = self._prepare_next()
                        running()
                    else:
                        self._run_blocking(engine.forward, batch.pending)
                except Exception:
                    self._fail([outcome.job for outcome in batch.outcomes])
                    continue
                batch.forwarded_at = time.perf_counter()
                if engine.overlap_safe:  # labelled and encoded while the next network run goes on
                    self._in_background(self._finish, task, batch)
                else:
                    self._finish(task, batch)
