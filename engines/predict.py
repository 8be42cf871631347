"""One predictor: how class scores become each frame's label map, for serving and for scoring.

The engines (``engines/backends``), ``scripts/evaluate.py``, validation during training and the
real-photo benchmark all label frames with these functions, so a reported mIoU is the mIoU of
what the phone shows.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.nn import functional as F

from .preprocessing import PAD_VALUE

SCORE_KEYS: tuple[str, ...] = ("logits", "log_probs")


def class_scores(output: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
    """The class scores of a model's eval-mode output, whichever kind it states it holds."""
    for key in SCORE_KEYS:
        scores = output.get(key)
        if scores is not None:
            return scores
    raise KeyError(f"model output has no class scores; expected one of {', '.join(SCORE_KEYS)}, "
                   f"got {', '.join(output)}")


def nearest_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
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


def frame_labels(scores: torch.Tensor, size: int, valid: list[tuple[int, int]],
                 frame_sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Each letterboxed frame's labels at its own size, from N×C×h×w ``scores`` of a size×size input.

    The scores may lie on any grid that spans the input (the network's, the pose guide's or the
    input's own). Only the grid cells under the frame are taken (plus one for the interpolation's
    support), resized by the same factor as the whole grid so the samples are those of a full
    resize, and labelled at the frame's size with ``upsampled_labels``: part borders are as fine
    as the frame's pixels, not the network's grid.
    """
    scores = scores.float()
    grid_h, grid_w = scores.shape[-2:]
    labels = []
    for index, ((vh, vw), (height, width)) in enumerate(zip(valid, frame_sizes)):
        if (grid_h, grid_w) == (size, size):
            region = scores[index]
        else:
            rows, cols = min(grid_h, -(-vh * grid_h // size) + 1), min(grid_w, -(-vw * grid_w // size) + 1)
            region = F.interpolate(scores[index:index + 1, :, :rows, :cols],
                                   scale_factor=(size / grid_h, size / grid_w), mode="bilinear",
                                   align_corners=False, recompute_scale_factor=False)[0]
        labels.append(np.ascontiguousarray(upsampled_labels(region[:, :vh, :vw], height, width)))
    return labels


def frame_attention(attention: torch.Tensor, size: int, valid: list[tuple[int, int]],
                    frame_sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Each frame's S×H×W scale weights at its own size (bilinear to the input, nearest to the frame)."""
    full = F.interpolate(attention.float(), size=(size, size), mode="bilinear", align_corners=False).cpu().numpy()
    return [np.ascontiguousarray(nearest_resize(full[index, :, :vh, :vw], height, width), dtype=np.float32)
            for index, ((vh, vw), (height, width)) in enumerate(zip(valid, frame_sizes))]


@torch.inference_mode()
def predict_labels(model: torch.nn.Module, frames: list[np.ndarray], input_size: int,
                   device: torch.device | str = "cpu",
                   pad_value: float | tuple[float, float, float] = PAD_VALUE) -> list[np.ndarray]:
    """Label maps at each frame's own size from an eval-mode model: the engines' letterbox and labels.

    What an engine returns for the same model and frames, without an engine's runtime; used where
    the model lives in memory (validation during training).
    """
    from .backends.base import letterbox  # the letterbox lives with the engines that share it

    device = torch.device(device)
    pixels, valid = letterbox(frames, input_size, device, pad_value)
    scores = class_scores(model(model.preprocessing.normalise(pixels)))
    return frame_labels(scores, input_size, valid, [tuple(f.shape[:2]) for f in frames])
