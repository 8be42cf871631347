"""Colours, fabric patterns, backgrounds and camera degradations."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Real clothes are mostly dark and neutral; a minority are coloured.
CLOTH_COLOURS: tuple[tuple[tuple[int, int, int], float], ...] = (
    ((22, 22, 24), 0.2),
    ((30, 36, 62), 0.09),
    ((70, 72, 76), 0.08),
    ((128, 130, 134), 0.07),
    ((232, 230, 224), 0.1),
    ((62, 88, 128), 0.08),
    ((44, 60, 92), 0.05),
    ((190, 175, 145), 0.05),
    ((96, 70, 52), 0.04),
    ((84, 92, 60), 0.04),
    ((110, 30, 40), 0.03),
    ((170, 40, 40), 0.03),
    ((40, 110, 70), 0.02),
    ((220, 190, 60), 0.02),
    ((210, 130, 160), 0.02),
    ((80, 140, 200), 0.03),
)
DENIM = ((62, 88, 128), (44, 60, 92), (90, 118, 160), (30, 34, 48))
SKIN_TONES = np.array(
    [
        (255, 226, 204),
        (243, 205, 178),
        (232, 184, 150),
        (214, 160, 122),
        (190, 130, 92),
        (160, 104, 70),
        (124, 78, 50),
        (94, 58, 38),
        (66, 42, 30),
    ],
    np.float32,
)
HAIR_COLOURS = ((24, 20, 18), (45, 32, 24), (80, 56, 38), (120, 86, 56), (190, 150, 96), (120, 50, 30))
GREY_HAIR = ((150, 150, 150), (200, 200, 196), (110, 108, 106))
SHOE_COLOURS = ((20, 20, 20), (240, 240, 236), (90, 60, 40), (60, 60, 64), (150, 120, 90), (30, 40, 70))

SKIMAGE_PEOPLE_FREE = (
    "brick.png",
    "grass.png",
    "gravel.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "page.png",
    "text.png",
    "clock_motion.png",
    "color.png",
    "logo.png",
)
"""scikit-image's bundled sample images without people (astronaut, camera and the face sets are left out)."""


def cloth_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.15:  # anything at all
        hsv = np.array([rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.25, 1.0)])
        return np.asarray(Image.fromarray((hsv[None, None] * 255).astype(np.uint8), "HSV").convert("RGB"))[0, 0]
    colours, weights = zip(*CLOTH_COLOURS)
    base = np.asarray(colours[rng.choice(len(colours), p=np.asarray(weights) / sum(weights))], np.float32)
    return np.clip(base * rng.uniform(0.85, 1.15) + rng.normal(0, 6, 3), 0, 255)


def muted_colour(rng: np.random.Generator) -> np.ndarray:
    """Colours of walls, floors and furniture: mostly greyish, sometimes saturated."""
    hsv = np.array([rng.random(), rng.beta(1.2, 3.0), rng.uniform(0.12, 0.95)])
    return np.asarray(Image.fromarray((hsv[None, None] * 255).astype(np.uint8), "HSV").convert("RGB"))[0, 0].astype(
        np.float32
    )


def pick(rng: np.random.Generator, options) -> np.ndarray:
    return np.asarray(options[rng.integers(len(options))], np.float32)


def skin_colour(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = int(t)
    c = SKIN_TONES[i] * (1 - (t - i)) + SKIN_TONES[min(i + 1, len(SKIN_TONES) - 1)] * (t - i)
    return np.clip(c + rng.normal(0, 5, 3), 0, 255)


def pattern_params(rng: np.random.Generator) -> dict:
    """A fabric: solid most of the time, else stripes, checks, dots or a mottled print."""
    kind = str(
        rng.choice(["solid", "stripes", "checks", "dots", "mottled", "denim"], p=[0.5, 0.14, 0.1, 0.07, 0.09, 0.1])
    )
    return {
        "kind": kind,
        "freq": float(rng.uniform(12, 60)),
        "second": cloth_colour(rng),
        "axis": rng.normal(size=3),
        "phase": rng.uniform(0, 10, 3),
    }


def fabric(base: np.ndarray, pattern: dict, coords: np.ndarray) -> np.ndarray:
    """Per-pixel colour (N,3) of a fabric evaluated on 3-D texture coordinates (N,3), a solid texture."""
    kind = pattern["kind"]
    col = np.broadcast_to(base, (len(coords), 3)).astype(np.float32)
    if kind == "solid" or len(coords) == 0:
        return col
    f = pattern["freq"]
    c = coords + pattern["phase"] * 0.1
    if kind == "stripes":
        ax = pattern["axis"] / np.linalg.norm(pattern["axis"])
        m = (np.sin(c @ ax * f * 2) > 0.2)[:, None]
    elif kind == "checks":
        m = ((np.floor(c[:, 0] * f / 3) + np.floor(c[:, 2] * f / 3)) % 2 == 0)[:, None]
        m = m * 0.6
    elif kind == "dots":
        m = ((np.sin(c[:, 0] * f * 2) * np.sin(c[:, 2] * f * 2) * np.sin(c[:, 1] * f * 2 + 1)) > 0.55)[:, None]
    elif kind == "mottled":
        m = np.sin(c[:, 0] * f + np.sin(c[:, 2] * f * 0.7) * 2) * np.cos(c[:, 2] * f * 0.5 + c[:, 1] * f) > 0.3
        m = m[:, None]
    else:  # denim: fine twill noise on the base colour
        t = np.sin((c[:, 0] + c[:, 2]) * 900 + np.sin(c[:, 1] * 300) * 3)
        return np.clip(col * (1 + 0.08 * t[:, None]), 0, 255)
    return col * (1 - m) + pattern["second"][None] * m


class Backgrounds:
    """Procedural clutter and crops of bundled natural photographs without people."""

    def __init__(self) -> None:
        self.photos: list[np.ndarray] = []
        try:
            import skimage

            root = Path(skimage.__file__).parent / "data"
            for name in SKIMAGE_PEOPLE_FREE:
                if (root / name).exists():
                    self.photos.append(np.asarray(Image.open(root / name).convert("RGB")))
        except ImportError:  # the procedural backgrounds still work
            pass

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.photos and rng.random() < 0.45:
            return self._photo(rng, size)
        return self._procedural(rng, size, self._photo(rng, size) if self.photos and rng.random() < 0.3 else None)

    def _photo(self, rng: np.random.Generator, size: int) -> np.ndarray:
        img = self.photos[rng.integers(len(self.photos))]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        out = np.asarray(crop, np.float32)
        if rng.random() < 0.5:
            out = out[:, ::-1]
        return out * rng.uniform(0.6, 1.2, 3) * rng.uniform(0.6, 1.1)

    def _procedural(self, rng: np.random.Generator, size: int, base: np.ndarray | None = None) -> np.ndarray:
        # Gradient and low-frequency texture at low resolution (cheap, and reads as out-of-focus depth).
        lo = 40
        yy, xx = np.mgrid[0:lo, 0:lo].astype(np.float32) / lo
        c0, c1 = muted_colour(rng), muted_colour(rng)
        ang = rng.uniform(0, 2 * np.pi)
        t = np.clip((np.cos(ang) * xx + np.sin(ang) * yy) * rng.uniform(0.5, 1.5), 0, 1)[..., None]
        img = c0 * (1 - t) + c1 * t
        img = img * (1 + (rng.random((lo, lo, 1)) - 0.5) * rng.uniform(0, 0.3))
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        if base is not None:  # clutter drawn over a photograph
            pil = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        s = size
        # A floor/wall split as seen in rooms and streets.
        if rng.random() < 0.5:
            h0, h1 = rng.uniform(0.4, 0.9, 2) * s
            draw.polygon([(0, h0), (s, h1), (s, s), (0, s)], fill=tuple(int(v) for v in muted_colour(rng)))
        # Clutter: furniture-like boxes, poles, blobs and lines, some of them blurred.
        for _ in range(int(rng.integers(3, 16))):
            col = tuple(int(v) for v in muted_colour(rng))
            kind = rng.random()
            x0, y0 = rng.uniform(-0.2, 1, 2) * s
            if kind < 0.45:
                w, h = rng.uniform(0.03, 0.5, 2) * s
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
            elif kind < 0.65:
                r = rng.uniform(0.02, 0.25) * s
                draw.ellipse([x0 - r, y0 - r * rng.uniform(0.5, 2), x0 + r, y0 + r], fill=col)
            elif kind < 0.85:
                x1 = x0 + rng.normal(0, 0.1) * s
                draw.line([(x0, -5), (x1, s + 5)], fill=col, width=int(rng.integers(1, max(2, s // 20))))
            else:
                pts = [tuple(p) for p in (rng.uniform(-0.1, 1.1, (int(rng.integers(3, 6)), 2)) * s)]
                draw.polygon(pts, fill=col)
        if rng.random() < 0.4:  # out of focus: a cheap blur by shrinking and enlarging
            small = max(8, int(size / rng.uniform(2, 6)))
            pil = pil.resize((small, small), Image.BILINEAR).resize((size, size), Image.BILINEAR)
        return np.asarray(pil, np.float32)


def degrade(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    """Phone-camera look: colour cast, exposure, blur, sensor noise, then a JPEG of random quality."""
    # White balance, gamma, contrast and brightness folded into one lookup table per channel.
    levels = np.arange(256, dtype=np.float32)[:, None] * rng.uniform(0.88, 1.12, 3).astype(np.float32)
    levels = 255 * (np.clip(levels, 0, 255) / 255) ** rng.uniform(0.8, 1.25)
    levels = (levels - 128) * rng.uniform(0.8, 1.15) + 128 + rng.normal(0, 8)
    lut = np.clip(levels, 0, 255).astype(np.uint8)
    img = np.clip(rgb, 0, 255).astype(np.uint8)
    pil = Image.fromarray(np.stack([lut[img[..., c], c] for c in range(3)], -1))
    r = rng.random()
    if r < 0.5:  # defocus, shake or a digital zoom: resampling through a smaller image blurs cheaply
        w, h = pil.size
        factor = rng.uniform(1.25, 2.6)
        pil = pil.resize((int(w / factor), int(h / factor)), Image.BILINEAR).resize((w, h), Image.BICUBIC)
    elif r < 0.6:
        pil = pil.filter(ImageFilter.BoxBlur(rng.uniform(0.5, 1.2)))
    if rng.random() < 0.6:
        arr = np.array(pil, np.float32)
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(rng.uniform(1, 7))
        pil = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(rng.integers(40, 96)))
    return buf.getvalue()
