"""A browser's fake camera: frames written as YUV4MPEG2, the file format chromium's fake capture device plays.

Used by the browser tests (synthetic scenes) and by ``scripts/screenshot.py`` (a real photo held
up to the camera, with a little hand shake so the stream looks live).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_y4m(path: str | Path, frames: list[np.ndarray], fps: int = 15) -> None:
    """Write H×W×3 uint8 RGB frames (even sizes) as YUV4MPEG2 with I420 planes (BT.601)."""
    height, width = frames[0].shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"I420 needs even frame sizes, got {width}×{height}")
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            r, g, b = (frame[..., i].astype(np.float32) for i in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = -0.1687 * r - 0.3313 * g + 0.5 * b + 128
            v = 0.5 * r - 0.4187 * g - 0.0813 * b + 128
            half = [p.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)) for p in (u, v)]
            out.write(b"FRAME\n")
            for plane in (y, *half):
                out.write(np.clip(plane + 0.5, 0, 255).astype(np.uint8).tobytes())


def handheld_frames(photo: np.ndarray, width: int = 480, height: int = 640, count: int = 12,
                    seed: int = 0) -> list[np.ndarray]:
    """The photo filling a width×height camera frame, shifted and zoomed by a few pixels per frame."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(photo)
    cover = max(width / image.width, height / image.height) * 1.06  # margin for the shake
    frames = []
    for _ in range(count):
        zoom = cover * (1 + rng.uniform(0, 0.03))
        scaled_w, scaled_h = round(image.width * zoom), round(image.height * zoom)
        left = int(rng.integers(0, scaled_w - width + 1))
        top = int(rng.integers(0, scaled_h - height + 1))
        frame = image.resize((scaled_w, scaled_h), Image.BILINEAR).crop((left, top, left + width, top + height))
        frames.append(np.asarray(frame, dtype=np.uint8))
    return frames
