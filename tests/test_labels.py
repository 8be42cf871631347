"""Labels at the frame's own resolution: the fast path equals resizing every class's scores, then argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from engines.predict import upsampled_labels


def dense_labels(scores: torch.Tensor, height: int, width: int) -> np.ndarray:
    up = F.interpolate(scores.clamp(min=-1e30)[None], size=(height, width), mode="bilinear", align_corners=False)
    return up[0].max(dim=0).indices.to(torch.uint8).numpy()


def blob_scores(classes: int, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Smooth, region-like scores, as a trained network gives: a few large areas with borders between them."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes, 6, 8, generator=generator) * 4
    return F.interpolate(coarse, size=(rows, cols), mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize(("rows", "cols", "height", "width"), [
    (241, 321, 480, 640),  # the demo: 321-pixel network, 640×480 frame
    (321, 181, 567, 319),  # portrait, odd sizes
    (97, 73, 120, 160),
    (50, 40, 20, 16),  # a frame smaller than the grid
])
def test_fast_labels_equal_the_dense_resize(rows, cols, height, width):
    scores = blob_scores(7, rows, cols)
    labels = upsampled_labels(scores, height, width)
    assert labels.shape == (height, width) and labels.dtype == np.uint8
    assert np.array_equal(labels, dense_labels(scores, height, width))


def test_borders_follow_the_frame_not_the_grid():
    # A diagonal border on a 10×10 grid: enlarged labels would make 8-pixel stairs, resized scores a line.
    y, x = torch.meshgrid(torch.arange(10.0), torch.arange(10.0), indexing="ij")
    scores = torch.stack([x - y, y - x])
    labels = upsampled_labels(scores, 80, 80)
    flips = np.abs(np.diff(labels.astype(int), axis=1)).sum(axis=1)
    border_cols = [int(np.argmax(np.diff(row.astype(int)) != 0)) for row in labels[4:-4]]
    assert (flips[4:-4] == 1).all()  # one border per row...
    assert len(set(border_cols)) > 60  # ...that moves every row or so, rather than every eighth


def test_gated_minus_infinity_and_noise_scores():
    scores = blob_scores(7, 60, 80, seed=1)
    scores[0, :, :30] = -torch.inf  # a person gate's log(0)
    assert np.array_equal(upsampled_labels(scores, 120, 160), dense_labels(scores, 120, 160))
    noise = torch.randn(6, 40, 50, generator=torch.Generator().manual_seed(2))  # an untrained model: dense path
    assert np.array_equal(upsampled_labels(noise, 90, 110), dense_labels(noise, 90, 110))
