"""Silhouette IoU of a parsing checkpoint against the BlazePose reference, plus overlays for the eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engines.tasks import TASKS

from .photos import RealPhoto


def silhouette_iou(labels: np.ndarray, reference: np.ndarray) -> float:
    """IoU of "any part" (label != 0) against a boolean person mask; 1.0 when both are empty."""
    ours = labels != 0
    reference = reference.astype(bool)
    union = np.logical_or(ours, reference).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(ours, reference).sum() / union)


def part_fractions(labels: np.ndarray, reference: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of the reference person's pixels given each label (index 0: called background)."""
    inside = labels[reference.astype(bool)]
    if inside.size == 0:
        return np.zeros(num_classes, np.float64)
    return np.bincount(inside.ravel(), minlength=num_classes)[:num_classes] / inside.size


def predict_labels(engine, rgb: np.ndarray, *, flip: bool = False) -> np.ndarray:
    """Labels at the photo's size; with ``flip`` the mirrored photo's votes are added (see below)."""
    if not flip:
        return engine.infer([rgb])[0].labels
    # Engines return labels, not scores, so flip averaging is a vote: where the two views disagree
    # the unflipped label wins, except that a part beats background in either view. Left/right
    # do not matter here because the parts classes are symmetric (no left/right split).
    plain, mirrored = engine.infer([rgb, np.ascontiguousarray(rgb[:, ::-1])])
    mirrored_labels = mirrored.labels[:, ::-1]
    return np.where(plain.labels == 0, mirrored_labels, plain.labels)


def colourise(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend class colours over the photo; background pixels keep the photo."""
    out = rgb.astype(np.float32)
    painted = labels != 0
    out[painted] = (1 - alpha) * out[painted] + alpha * palette[labels[painted]].astype(np.float32)
    return out.astype(np.uint8)


def mask_overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference mask as white over a darkened photo, so misses and spills both show."""
    out = rgb.astype(np.float32) * 0.35
    out[mask] = 0.35 * rgb[mask] + 0.65 * 255
    return out.astype(np.uint8)


def _tile(image: np.ndarray, size: int, caption: str) -> Image.Image:
    """Fit ``image`` into a size×size tile (grey bars), caption on top."""
    tile = Image.new("RGB", (size, size + 16), (40, 40, 40))
    picture = Image.fromarray(image)
    scale = size / max(picture.size)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                             Image.Resampling.BILINEAR)
    tile.paste(picture, ((size - picture.width) // 2, 16 + (size - picture.height) // 2))
    ImageDraw.Draw(tile).text((4, 2), caption, fill=(255, 255, 255))
    return tile


def overlay_grid(rows: list[list[tuple[np.ndarray, str]]], tile_size: int = 200) -> Image.Image:
    """Rows of captioned images side by side (all rows the same length)."""
    columns = max(len(row) for row in rows)
    grid = Image.new("RGB", (columns * tile_size, len(rows) * (tile_size + 16)), (40, 40, 40))
    for r, row in enumerate(rows):
        for c, (image, caption) in enumerate(row):
            grid.paste(_tile(image, tile_size, caption), (c * tile_size, r * (tile_size + 16)))
    return grid


def legend_strip(task: str, width: int) -> Image.Image:
    """One line naming each class in its palette colour."""
    spec = TASKS[task]
    strip = Image.new("RGB", (width, 18), (40, 40, 40))
    draw = ImageDraw.Draw(strip)
    x = 4
    for name, colour in zip(spec.classes[1:], spec.palette[1:]):
        draw.rectangle((x, 4, x + 10, 14), fill=tuple(int(v) for v in colour))
        draw.text((x + 14, 3), name, fill=(255, 255, 255))
        x += 14 + 7 * len(name) + 10
    return strip


def save_jpeg(image: Image.Image, path: Path, max_bytes: int = 500_000) -> int:
    """Save as JPEG, lowering quality until the file is under ``max_bytes``; returns its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for quality in (88, 80, 70, 60, 50, 40):
        image.save(path, format="JPEG", quality=quality, optimize=True)
        size = path.stat().st_size
        if size <= max_bytes:
            return size
    return size


def photo_row(photo: RealPhoto, reference: np.ndarray,
              predictions: list[tuple[str, np.ndarray, float, np.ndarray]]) -> list[tuple[np.ndarray, str]]:
    """photo | reference mask | one overlay per checkpoint, each in its own task's palette."""
    row = [(photo.rgb, photo.name), (mask_overlay(photo.rgb, reference), "reference (BlazePose)")]
    for label, labels, iou, palette in predictions:
        row.append((colourise(photo.rgb, labels, palette), f"{label}: IoU {iou:.2f}"))
    return row
