"""Training augmentation: random scale, crop, mirror (with left/right label swaps) and colour jitter.

Geometry follows the engine: evaluation letterboxes an image so its long side is the input
size, so training first scales each image to that same base (long side = the input size, given
as ``base_size``; the crop size when it is not given), then by a random factor, and crops from
that. A crop smaller than the input size thus sees people at the sizes the engine shows them.
Crops larger than the scaled image are padded with the engine's letterbox
grey, never black (black reads as dark clothing), and the padding is labelled background:
the engine shows the network the same grey bars and they must come out as background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from engines.preprocessing import PAD_VALUE


@dataclass
class TrainTransform:
    """``transform(rgb, labels, seed)`` → (3×S×S uint8 tensor, S×S uint8 tensor).

    ``flip_lut`` maps label values under a mirror (from ``dataset.flip_lut()``); None means
    mirroring leaves labels unchanged, as for all our merged classes.
    """

    crop_size: int = 320
    base_size: int | None = None  # long side before the random scale; None = crop_size
    scale_range: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    flip_lut: np.ndarray | None = None
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    colour_cast: float = 0.08  # per-channel gain, like a phone's white balance

    def __call__(self, rgb: np.ndarray, labels: np.ndarray, seed: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(seed)
        rgb, labels = random_scale(rgb, labels, self.base_size or self.crop_size, self.scale_range, rng)
        rgb, labels = random_crop(rgb, labels, self.crop_size, rng)
        if self.flip and rng.random() < 0.5:
            rgb, labels = mirror(rgb, labels, self.flip_lut)
        rgb = colour_jitter(rgb, rng, self.brightness, self.contrast, self.saturation, self.colour_cast)
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))), torch.from_numpy(
            np.ascontiguousarray(labels))


def random_scale(rgb: np.ndarray, labels: np.ndarray, base: int, scale_range: tuple[float, float],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the long side is ``base × s``, s uniform in ``scale_range`` (labels: nearest)."""
    height, width = labels.shape
    scale = rng.uniform(*scale_range) * base / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_h, new_w) == (height, width):
        return rgb, labels
    rgb = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
    labels = np.asarray(Image.fromarray(labels).resize((new_w, new_h), Image.NEAREST))
    return rgb, labels


def random_crop(rgb: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """A size×size window; where the image is smaller it sits at a random place on grey padding."""
    height, width = labels.shape
    out_rgb = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    out_labels = np.zeros((size, size), dtype=np.uint8)  # padding is background, see module docstring
    # Offsets: positive = crop inside the image, negative = image placed inside the canvas.
    y = int(rng.integers(0, height - size + 1)) if height >= size else -int(rng.integers(0, size - height + 1))
    x = int(rng.integers(0, width - size + 1)) if width >= size else -int(rng.integers(0, size - width + 1))
    src_y, dst_y = max(y, 0), max(-y, 0)
    src_x, dst_x = max(x, 0), max(-x, 0)
    h, w = min(size - dst_y, height - src_y), min(size - dst_x, width - src_x)
    out_rgb[dst_y:dst_y + h, dst_x:dst_x + w] = rgb[src_y:src_y + h, src_x:src_x + w]
    out_labels[dst_y:dst_y + h, dst_x:dst_x + w] = labels[src_y:src_y + h, src_x:src_x + w]
    return out_rgb, out_labels


def mirror(rgb: np.ndarray, labels: np.ndarray, flip_lut: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal mirror; ``flip_lut`` swaps left/right label values where a label set has them."""
    rgb, labels = rgb[:, ::-1], labels[:, ::-1]
    if flip_lut is not None:
        labels = flip_lut[labels]
    return rgb, labels


def colour_jitter(rgb: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                  saturation: float, colour_cast: float) -> np.ndarray:
    """Random brightness, contrast, saturation and per-channel gain, in one float pass."""
    image = rgb.astype(np.float32)
    gain = rng.uniform(1 - brightness, 1 + brightness) * rng.uniform(1 - colour_cast, 1 + colour_cast, size=3)
    image *= gain.astype(np.float32)
    grey = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    sat = np.float32(rng.uniform(1 - saturation, 1 + saturation))
    image = grey[..., None] + (image - grey[..., None]) * sat
    con = np.float32(rng.uniform(1 - contrast, 1 + contrast))
    image = (image - grey.mean()) * con + grey.mean()
    return np.clip(image, 0, 255).astype(np.uint8)
