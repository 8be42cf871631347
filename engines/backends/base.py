"""What every runtime shares: letterboxing frames in, label maps out, and honest timing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from ..preprocessing import PAD_VALUE, Preprocessing

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
    logits: torch.Tensor | None = None
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


def _nearest_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes (cheap index gathers, no interpolation)."""
    rows = np.minimum((np.arange(height) + 0.5) * array.shape[-2] / height, array.shape[-2] - 1).astype(np.intp)
    cols = np.minimum((np.arange(width) + 0.5) * array.shape[-1] / width, array.shape[-1] - 1).astype(np.intp)
    return array[..., rows[:, None], cols[None, :]]


def _bilinear_axis(out: int, src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and weights of high along one axis, as F.interpolate(align_corners=False)."""
    position = np.maximum((np.arange(out, dtype=np.float32) + 0.5) * np.float32(src / out) - 0.5, 0.0)
    low = np.minimum(position.astype(np.intp), src - 1)
    return low, np.minimum(low + 1, src - 1), (position - low).astype(np.float32)


def upsampled_labels(scores: torch.Tensor, height: int, width: int, dense_share: float = 0.3) -> np.ndarray:
    """Class of each pixel after resizing C×h×w ``scores`` bilinearly to height×width: H×W uint8.

    The same labels as ``F.interpolate(..., "bilinear")`` then argmax, so borders follow the image
    rather than the network's grid, at a fraction of the cost: where the four grid points around
    a pixel agree on a class, every mix of them does too, so only pixels in grid cells that
    straddle a border are interpolated (about 10% of a frame with a person in it). Noise-like
    scores (an untrained model), where most cells straddle one, take the dense path.
    """
    scores = scores.float()
    classes, rows, cols = scores.shape
    coarse = scores.max(dim=0).indices.to(torch.uint8).cpu().numpy()  # max().indices beats argmax() on CPU
    if (rows, cols) == (height, width):
        return coarse
    # A cell (its top-left grid point) is mixed when its corners disagree; the last row and column
    # pair with themselves, as the resize clamps there.
    right = np.concatenate([coarse[:, 1:], coarse[:, -1:]], axis=1)
    below = np.concatenate([coarse[1:], coarse[-1:]], axis=0)
    below_right = np.concatenate([right[1:], right[-1:]], axis=0)
    mixed = (coarse != right) | (coarse != below) | (coarse != below_right)
    y0, y1, wy = _bilinear_axis(height, rows)
    x0, x1, wx = _bilinear_axis(width, cols)
    labels = coarse.take(y0, axis=0).take(x0, axis=1)
    border = np.flatnonzero(mixed.take(y0, axis=0).take(x0, axis=1))
    if border.size > dense_share * labels.size:
        # Clamped: a gated model's scores may be -inf, and 0 · -inf would make NaN.
        dense = F.interpolate(scores.clamp(min=-1e30)[None], size=(height, width), mode="bilinear",
                              align_corners=False)
        return dense[0].max(dim=0).indices.to(torch.uint8).cpu().numpy()
    ys, xs = np.divmod(border, width)
    table = scores.permute(1, 2, 0).contiguous().cpu().numpy().reshape(-1, classes)  # one row of C per grid point
    top_row, bottom_row = y0[ys] * cols, y1[ys] * cols
    left, right_col = x0[xs], x1[xs]
    fx, fy = wx[xs, None], wy[ys, None]
    # Clamped, as a gated model's scores may be -inf and -inf − -inf is NaN.
    corners = [np.maximum(table[row + col], -1e30) for row in (top_row, bottom_row) for col in (left, right_col)]
    top = corners[0] + (corners[1] - corners[0]) * fx
    bottom = corners[2] + (corners[3] - corners[2]) * fx
    labels.reshape(-1)[border] = (top + (bottom - top) * fy).argmax(axis=1)
    return labels


def to_predictions(logits: torch.Tensor, attention: torch.Tensor | None, size: int,
                   valid: list[tuple[int, int]], frame_sizes: list[tuple[int, int]], cnn_ms: float,
                   want_attention: bool) -> list[Prediction]:
    """Crop each frame's region of the scores and label it at the frame's own size.

    Labels come from the scores resized to the frame (``upsampled_labels``), not from labels
    decided on the network's grid and enlarged, so part borders are as fine as the frame's pixels.
    """
    logits = logits.float()
    coarse = tuple(logits.shape[-2:]) != (size, size)  # gated models already answer at the input's size
    att_all = None
    if want_attention and attention is not None:
        att_all = F.interpolate(attention.float(), size=(size, size), mode="bilinear", align_corners=False)
        att_all = att_all.cpu().numpy()
    predictions = []
    for index, ((vh, vw), (height, width)) in enumerate(zip(valid, frame_sizes)):
        if coarse:
            # Only the grid cells under the frame (plus one for the interpolation's support), scaled
            # by the same factor as the whole grid, so the samples are those of a full resize.
            grid_h, grid_w = logits.shape[-2:]
            rows, cols = min(grid_h, -(-vh * grid_h // size) + 1), min(grid_w, -(-vw * grid_w // size) + 1)
            region = F.interpolate(logits[index:index + 1, :, :rows, :cols],
                                   scale_factor=(size / grid_h, size / grid_w), mode="bilinear",
                                   align_corners=False, recompute_scale_factor=False)[0]
        else:
            region = logits[index]
        labels = upsampled_labels(region[:, :vh, :vw], height, width)  # only the frame, not the padding
        att = None
        if att_all is not None:
            att = np.ascontiguousarray(_nearest_resize(att_all[index, :, :vh, :vw], height, width), dtype=np.float32)
        predictions.append(Prediction(labels=np.ascontiguousarray(labels), attention=att, cnn_ms=cnn_ms))
    return predictions


class Engine:
    """A runtime that turns RGB frames into label maps. Subclasses implement ``_forward``."""

    name = "base"
    timing_label = "CPU time"
    batching_helps = False  # whether one batch of N frames beats N single calls
    # Whether ``_forward`` returns fresh tensors, so that one thread may label a batch while another
    # runs the next batch's network (CUDA graphs replay into the same output buffers: not safe).
    overlap_safe = False

    def __init__(self, model: torch.nn.Module, input_size: int, device: torch.device) -> None:
        from ..importers.caffe_forward import pad_colour, with_recorded_resampling

        # Imported Caffe models record Caffe's resizing and padding; honour them.
        self.model = with_recorded_resampling(model)
        self.pad_value = pad_colour(model, PAD_VALUE)
        self.input_size = int(input_size)
        self.device = device
        self.metadata = getattr(model, "metadata", None)
        config = getattr(model, "config", {})
        self.task: str = config.get("task", "parts")
        self.scales: tuple[float, ...] = tuple(config.get("scales", (1.0,)))
        self.merge: str = config.get("merge", "single")
        self.preprocessing: Preprocessing = model.preprocessing

    @property
    def trained(self) -> bool:
        return bool(self.metadata and self.metadata.trained)

    @property
    def device_name(self) -> str:
        return str(self.device)

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """Normalised N×3×S×S input → (logits, attention, CNN milliseconds)."""
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
            pending.logits, pending.attention, pending.cnn_ms = self._forward(pending.batch)
        pending.batch = None
        pending.timings["forward_ms"] = (time.perf_counter() - started) * 1000.0
        return pending

    def finish(self, pending: Pending, *, attention: bool = False) -> list[Prediction]:
        """Step 3 of ``infer``: label maps (and attention) at each frame's size."""
        started = time.perf_counter()
        with torch.inference_mode():
            predictions = to_predictions(pending.logits, pending.attention, self.input_size, pending.valid,
                                         pending.sizes, pending.cnn_ms, attention)
        pending.timings["labels_ms"] = (time.perf_counter() - started) * 1000.0
        share = 1.0 / len(predictions)  # batch-wide steps, split evenly over its frames
        for prediction in predictions:
            prediction.timings = {name: value * share for name, value in pending.timings.items()}
        return predictions

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
            "pose_guide": getattr(self.metadata, "pose_guide", None) if self.metadata else None,
        }
