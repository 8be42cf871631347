"""Painting results over the camera frame: part colours, or one colour per scale for the attention view."""

from __future__ import annotations

import numpy as np

# One colour per scale, mixed by the attention weights: red where the full-resolution input
# wins, green for 0.75, blue for 0.5 (coarser scales take over on large, close-up people).
SCALE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 70, 70),
    (70, 220, 110),
    (60, 130, 255),
    (255, 200, 0),
    (200, 80, 255),
)
DEFAULT_OPACITY = 0.6


def scale_colours(count: int) -> np.ndarray:
    """``count``×3 uint8 colours, one per scale (cycled if there are more scales than colours)."""
    return np.asarray([SCALE_COLOURS[i % len(SCALE_COLOURS)] for i in range(count)], dtype=np.uint8)


def _blend(frame: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """frame·(1−α) + colour·α in 8-bit fixed point; ``alpha`` is H×W×1 uint16 in 0..256."""
    out = frame.astype(np.uint16)
    out *= 256 - alpha
    out += colour.astype(np.uint16) * alpha
    out >>= 8
    return out.astype(np.uint8)


def colourise_parts(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray,
                    opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """Blend each labelled pixel's class colour over the frame; background (label 0) stays untouched."""
    if labels.shape != frame.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match frame {frame.shape[:2]}")
    level = round(min(max(opacity, 0.0), 1.0) * 256)
    alpha_by_class = np.full(len(palette), level, dtype=np.uint16)
    alpha_by_class[0] = 0
    return _blend(frame, palette[labels], alpha_by_class[labels][..., None])


def colourise_attention(frame: np.ndarray, attention: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """Blend the per-pixel mix of scale colours (weights summing to 1) over the whole frame."""
    scales, height, width = attention.shape
    if (height, width) != frame.shape[:2]:
        raise ValueError(f"attention {attention.shape[1:]} does not match frame {frame.shape[:2]}")
    weights = attention.reshape(scales, -1).T  # (H·W)×S
    mixed = (weights @ scale_colours(scales).astype(np.float32)).reshape(height, width, 3)
    colour = np.clip(mixed, 0, 255).astype(np.uint8)
    alpha = np.full((height, width, 1), round(min(max(opacity, 0.0), 1.0) * 256), dtype=np.uint16)
    return _blend(frame, colour, alpha)
