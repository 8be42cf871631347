"""Painting results over the camera frame: part colours, or one colour per scale for the attention view.

The blending runs in Pillow's C loops (palette lookup, composite, blend): a numpy version of
the same arithmetic took about 2.5× longer per 640×480 frame.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

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


def _level(opacity: float) -> int:
    return round(min(max(float(opacity), 0.0), 1.0) * 255)


def colourise_parts(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray,
                    opacity: float = DEFAULT_OPACITY) -> Image.Image:
    """Blend each labelled pixel's class colour over the frame; background (label 0) stays untouched."""
    if labels.shape != frame.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match frame {frame.shape[:2]}")
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    indexed = Image.fromarray(labels, "P")
    indexed.putpalette(np.ascontiguousarray(palette, dtype=np.uint8).tobytes())
    level = _level(opacity)
    mask = Image.fromarray(labels, "L").point([0] + [level] * 255)
    return Image.composite(indexed.convert("RGB"), Image.fromarray(frame, "RGB"), mask)


def colourise_attention(frame: np.ndarray, attention: np.ndarray, opacity: float = DEFAULT_OPACITY) -> Image.Image:
    """Blend the per-pixel mix of scale colours (weights summing to 1) over the whole frame."""
    scales, height, width = attention.shape
    if (height, width) != frame.shape[:2]:
        raise ValueError(f"attention {attention.shape[1:]} does not match frame {frame.shape[:2]}")
    weights = attention.reshape(scales, -1).T  # (H·W)×S
    mixed = (weights @ scale_colours(scales).astype(np.float32)).reshape(height, width, 3)
    colour = Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8), "RGB")
    return Image.blend(Image.fromarray(frame, "RGB"), colour, _level(opacity) / 255.0)
