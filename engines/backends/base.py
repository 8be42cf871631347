"""What every runtime shares: letterboxing frames in, label maps out, and honest timing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from ..predict import frame_attention, frame_labels
from ..preprocessing import PAD_VALUE, Preprocessing

if TYPE_CHECKING:
    from ..checkpoint import CheckpointMetadata
    from ..config import ModelConfig
    from ..model import MultiScaleSegmenter

log = logging.getLogger("partcam.engine")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine; the message names what is missing."""


@dataclass
class Prediction:
    """One frame's result: labels at the frame's own size, optional scale attention, CNN time."""

    labels: np.ndarray  # H×W uint8 class indices
    attention: np.ndarray | None  # S×H×W float32 weights summing to 1 per pixel, or None
    cnn_ms: float  # forward-pass time of the batch this frame ran in
    timings: dict[str, float] = field(default_factory=dict)  # ms per step around the CNN, for load tests


@dataclass
class Pending:
    """A batch between the steps of ``Engine.infer``: prepared input, then the network's output."""

    batch: torch.Tensor | None
    valid: list[tuple[int, int]]
    sizes: list[tuple[int, int]]
    timings: dict[str, float]
    scores: torch.Tensor | None = None  # the model's class scores (logits or log-probabilities)
    attention: torch.Tensor | None = None
    cnn_ms: float = 0.0


def check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError("frames must be H×W×3 uint8 RGB arrays")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError("frames must not be empty")


def letterbox(frames: list[np.ndarray], size: int, device: torch.device,
              pad_value: float | tuple[float, float, float] = PAD_VALUE) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Resize each frame so its long side is ``size`` and pad it to size×size at the bottom-right.

    ``pad_value`` is grey, or one RGB colour (Caffe models pad with their mean colour).
    Returns an N×3×size×size float tensor of 0–255 RGB pixels and each frame's content size.
    """
    fill = torch.tensor(pad_value, dtype=torch.float32, device=device).reshape(-1, 1, 1)
    batch = fill.expand(3, size, size).repeat(len(frames), 1, 1, 1)
    valid: list[tuple[int, int]] = []
    for index, frame in enumerate(frames):
        check_frame(frame)
        height, width = frame.shape[:2]
        ratio = size / max(height, width)
        new_h, new_w = max(1, round(height * ratio)), max(1, round(width * ratio))
        pixels = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None]
        if device.type != "cpu":  # the uint8 resize kernels below are CPU ones
            pixels = pixels.float()
        if (new_h, new_w) != (height, width):
            # On the CPU, resizing the uint8 pixels (SIMD kernels, rounded to whole levels) takes a
            # sixth of the time of resizing floats: 0.4 vs 2.1 ms for 640×480 → 321×241.
            pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", align_corners=False,
                                   antialias=ratio < 1)
            if pixels.is_floating_point():
                pixels = pixels.clamp_(0, 255)
        batch[index, :, :new_h, :new_w] = pixels[0]
        valid.append((new_h, new_w))
    return batch, valid


class Engine:
    """A runtime that turns RGB frames into label maps. Subclasses implement ``_forward``."""

    name = "base"
    timing_label = "CPU time"
    batching_helps = False  # whether one batch of N frames beats N single calls
    # Whether ``_forward`` returns fresh tensors, so that one thread may label a batch while another
    # runs the next batch's network (CUDA graphs replay into the same output buffers: not safe).
    overlap_safe = False

    def __init__(self, model: MultiScaleSegmenter, input_size: int, device: torch.device) -> None:
        from ..importers.caffe_forward import pad_colour, with_recorded_resampling

        # Imported Caffe models record Caffe's resizing and padding; honour them.
        self.model = with_recorded_resampling(model)
        self.pad_value = pad_colour(model, PAD_VALUE)
        self.input_size = int(input_size)
        self.device = device
        self.config: ModelConfig = model.config
        self.metadata: CheckpointMetadata | None = model.metadata  # None for a model built in memory
        self.preprocessing: Preprocessing = model.preprocessing

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def scales(self) -> tuple[float, ...]:
        return self.config.scales

    @property
    def merge(self) -> str:
        return self.config.merge

    @property
    def trained(self) -> bool:
        return bool(self.metadata and self.metadata.trained)

    @property
    def device_name(self) -> str:
        return str(self.device)

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """Normalised N×3×S×S input → (class scores, attention, CNN milliseconds)."""
        raise NotImplementedError

    def prepare(self, frames: list[np.ndarray], sizes: list[tuple[int, int]] | None = None) -> Pending:
        """Step 1 of ``infer``: letterbox and normalise. ``sizes`` (H, W) are the label maps'
        sizes when the frames were decoded smaller than the originals (default: each frame's)."""
        started = time.perf_counter()
        with torch.inference_mode():
            pixels, valid = letterbox(frames, self.input_size, self.device, self.pad_value)
            batch = self.preprocessing.normalise(pixels)
        sizes = [tuple(frame.shape[:2]) for frame in frames] if sizes is None else [tuple(s) for s in sizes]
        return Pending(batch=batch, valid=valid, sizes=sizes,
                       timings={"preprocess_ms": (time.perf_counter() - started) * 1000.0})

    def forward(self, pending: Pending) -> Pending:
        """Step 2 of ``infer``: the network. On engines with ``overlap_safe`` it may run while
        another thread runs step 1 or 3 of other frames."""
        started = time.perf_counter()
        with torch.inference_mode():
            pending.scores, pending.attention, pending.cnn_ms = self._forward(pending.batch)
        pending.batch = None
        pending.timings["forward_ms"] = (time.perf_counter() - started) * 1000.0
        return pending

    def finish(self, pending: Pending, *, attention: bool = False) -> list[Prediction]:
        """Step 3 of ``infer``: label maps (and attention) at each frame's size."""
        started = time.perf_counter()
        with torch.inference_mode():
            labels = frame_labels(pending.scores, self.input_size, pending.valid, pending.sizes)
            weights: list[np.ndarray | None] = [None] * len(labels)
            if attention and pending.attention is not None:
                weights = frame_attention(pending.attention, self.input_size, pending.valid, pending.sizes)
        pending.timings["labels_ms"] = (time.perf_counter() - started) * 1000.0
        share = 1.0 / len(labels)  # batch-wide steps, split evenly over its frames
        timings = {name: value * share for name, value in pending.timings.items()}
        return [Prediction(labels=frame, attention=weight, cnn_ms=pending.cnn_ms, timings=dict(timings))
                for frame, weight in zip(labels, weights)]

    def infer(self, frames: list[np.ndarray], *, attention: bool = False,
              sizes: list[tuple[int, int]] | None = None) -> list[Prediction]:
        """Parse a batch of H×W×3 uint8 RGB frames of any sizes.

        Each prediction's ``timings`` splits the call: preprocess_ms (letterbox, normalise),
        forward_ms (the runtime call, of which cnn_ms is the network) and labels_ms.
        """
        if not frames:
            return []
        return self.finish(self.forward(self.prepare(frames, sizes)), attention=attention)

    def describe(self) -> dict:
        """A JSON-ready summary for status pages and logs."""
        return {
            "engine": self.name,
            "device": self.device_name,
            "timing": self.timing_label,
            "task": self.task,
            "input_size": self.input_size,
            "scales": list(self.scales),
            "merge": self.merge,
            "trained": self.trained,
            "trained_on": self.metadata.trained_on if self.metadata else "nothing (random weights)",
            # Which pose model steers the parts, at which sizes; None for the network alone.
            "pose_guide": self.config.pose_guide.to_dict() if self.config.pose_guide is not None else None,
        }
