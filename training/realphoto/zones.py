"""Zones drawn by eye on the real-photo benchmark images: boxes well inside one part, one clothing
class, or background, and a box around each person.

One JSON file per image in ``training/realphoto/zones/<image id>.json``::

    {"image": "obama", "size": [820, 1024],
     "persons": [[x0, y0, x1, y1], ...],
     "zones": [{"box": [x0, y0, x1, y1], "parts": "torso", "clothes": "upper clothes"},
               {"box": [...], "parts": "head", "clothes": "head & skin"},
               {"box": [...], "background": "tripod"}]}

Boxes are in image pixels, ``x1``/``y1`` exclusive. A zone names the part it lies in, the clothing
class, or both; a background zone counts as background for both tasks and says what is there.
Parts follow PASCAL-Person-Part (hands are lower arms, feet lower legs, hair and neck head);
clothes follow PartCam's classes (a coat or dress is upper clothes, a face head & skin).

To draw them, look at the image with a pixel grid, then check the boxes drawn over it::

    python -m training.realphoto.zones grid obama            # out/zones/obama-grid.png
    python -m training.realphoto.zones grid vtest_000 --crop 300,200,460,360 --step 10
    python -m training.realphoto.zones check obama           # out/zones/obama-check.png
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engines.tasks import CLOTHES, PARTS

from .benchmark_set import IMAGES, load_image

ZONES_DIR = Path(__file__).resolve().parent / "zones"
TASK_KEYS = {"parts": PARTS, "clothes": CLOTHES}
BACKGROUND = "background"


@dataclass(frozen=True)
class Zone:
    """One box and what it should be called, per task (None: not labelled for that task)."""

    box: tuple[int, int, int, int]
    parts: str | None
    clothes: str | None
    what: str = ""  # for background zones: what is there (a tripod, an out-of-focus crowd)

    def label(self, task: str) -> str | None:
        return self.parts if task == "parts" else self.clothes

    @property
    def is_background(self) -> bool:
        return self.parts == BACKGROUND


@dataclass(frozen=True)
class ImageZones:
    image: str
    size: tuple[int, int]
    persons: tuple[tuple[int, int, int, int], ...]
    zones: tuple[Zone, ...]


def _check_box(box: list, size: tuple[int, int], where: str) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise ValueError(f"{where}: a box is [x0, y0, x1, y1], got {box}")
    x0, y0, x1, y1 = (int(v) for v in box)
    width, height = size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"{where}: box {box} is empty or outside the {width}×{height} image")
    return x0, y0, x1, y1


def parse_zones(data: dict) -> ImageZones:
    """Validate one image's zone file: boxes inside the image, class names known."""
    image = data["image"]
    size = tuple(data["size"])
    persons = tuple(_check_box(box, size, f"{image} person") for box in data.get("persons", []))
    zones = []
    for index, entry in enumerate(data["zones"]):
        where = f"{image} zone {index}"
        box = _check_box(entry["box"], size, where)
        if BACKGROUND in entry:
            zones.append(Zone(box, BACKGROUND, BACKGROUND, str(entry[BACKGROUND])))
            continue
        labels = {}
        for key, task in TASK_KEYS.items():
            name = entry.get(key)
            if name is not None and (name not in task.classes or name == BACKGROUND):
                valid = ", ".join(task.classes[1:])
                raise ValueError(f"{where}: {key} {name!r} is not a {key} class; valid: {valid}")
            labels[key] = name
        if labels["parts"] is None and labels["clothes"] is None:
            raise ValueError(f"{where}: names neither a part, a clothing class nor background")
        zones.append(Zone(box, labels["parts"], labels["clothes"]))
    return ImageZones(image, size, persons, tuple(zones))


def load_zones(image_id: str, directory: Path = ZONES_DIR) -> ImageZones:
    path = directory / f"{image_id}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no zones for {image_id!r} in {directory}")
    return parse_zones(json.loads(path.read_text()))


def all_zones(directory: Path = ZONES_DIR) -> list[ImageZones]:
    """Every image's zones, in the benchmark's image order."""
    known = [spec.id for spec in IMAGES]
    files = {path.stem for path in directory.glob("*.json")}
    unknown = files - set(known)
    if unknown:
        raise ValueError(f"zone files for images the benchmark does not have: {sorted(unknown)}")
    return [load_zones(image_id, directory) for image_id in known if image_id in files]


def class_counts(images: list[ImageZones]) -> dict[str, int]:
    """How many zones name each class, keyed "task:class" (background counted once per task)."""
    counts: dict[str, int] = {}
    for image in images:
        for zone in image.zones:
            for task in TASK_KEYS:
                name = zone.label(task)
                if name:
                    counts[f"{task}:{name}"] = counts.get(f"{task}:{name}", 0) + 1
    return counts


# ----------------------------------------------------------------------------------------------
# Drawing


def zone_colour(zone: Zone) -> tuple[int, int, int]:
    if zone.is_background:
        return (255, 255, 255)
    if zone.parts is not None:
        return tuple(int(c) for c in PARTS.palette[PARTS.classes.index(zone.parts)])
    return tuple(int(c) for c in CLOTHES.palette[CLOTHES.classes.index(zone.clothes)])


def zone_text(zone: Zone) -> str:
    if zone.is_background:
        return f"bg:{zone.what}" if zone.what else "bg"
    return "/".join(name for name in (zone.parts, zone.clothes) if name)


def _scaled(rgb: np.ndarray, crop: tuple[int, int, int, int] | None, target: int):
    x0, y0 = (crop[0], crop[1]) if crop else (0, 0)
    view = rgb[crop[1]:crop[3], crop[0]:crop[2]] if crop else rgb
    scale = max(1.0, target / max(view.shape[:2]))
    size = (round(view.shape[1] * scale), round(view.shape[0] * scale))
    image = Image.fromarray(view).resize(size, Image.Resampling.NEAREST if scale > 2 else Image.Resampling.BICUBIC)
    return image, scale, x0, y0


def draw_grid(rgb: np.ndarray, step: int, crop: tuple[int, int, int, int] | None = None,
              target: int = 1100) -> Image.Image:
    """The image (or a crop of it), enlarged, with grid lines every ``step`` image pixels, labelled."""
    image, scale, x0, y0 = _scaled(rgb, crop, target)
    draw = ImageDraw.Draw(image)
    height, width = rgb.shape[:2]
    x_end, y_end = (crop[2], crop[3]) if crop else (width, height)
    for x in range((x0 // step + 1) * step, x_end, step):
        u = (x - x0) * scale
        major = x % (step * 5) == 0
        draw.line([(u, 0), (u, image.height)], fill=(255, 255, 0) if major else (0, 255, 255), width=1)
        draw.text((u + 2, 2), str(x), fill=(255, 255, 0))
        draw.text((u + 2, image.height - 12), str(x), fill=(255, 255, 0))
    for y in range((y0 // step + 1) * step, y_end, step):
        v = (y - y0) * scale
        major = y % (step * 5) == 0
        draw.line([(0, v), (image.width, v)], fill=(255, 255, 0) if major else (0, 255, 255), width=1)
        draw.text((2, v + 2), str(y), fill=(255, 255, 0))
        draw.text((image.width - 30, v + 2), str(y), fill=(255, 255, 0))
    return image


def draw_zones(rgb: np.ndarray, zones: ImageZones, crop: tuple[int, int, int, int] | None = None,
               target: int = 1100) -> Image.Image:
    """The image with every person box (grey) and zone (its class colour, labelled) drawn on it."""
    image, scale, x0, y0 = _scaled(rgb, crop, target)
    draw = ImageDraw.Draw(image)

    def rect(box):
        return [(box[0] - x0) * scale, (box[1] - y0) * scale, (box[2] - x0) * scale - 1, (box[3] - y0) * scale - 1]

    for box in zones.persons:
        draw.rectangle(rect(box), outline=(160, 160, 160), width=1)
    for zone in zones.zones:
        r = rect(zone.box)
        draw.rectangle(r, outline=zone_colour(zone), width=2)
        draw.text((r[0] + 3, r[1] + 2), zone_text(zone), fill=zone_colour(zone), stroke_width=1, stroke_fill=(0, 0, 0))
    return image


def _crop_arg(text: str | None) -> tuple[int, int, int, int] | None:
    if not text:
        return None
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 4:
        raise argparse.ArgumentTypeError("--crop is x0,y0,x1,y1")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw zones by eye: a grid to read coordinates, a check to look at.")
    parser.add_argument("action", choices=("grid", "check", "validate"))
    parser.add_argument("image", nargs="?", help="benchmark image id (validate: all when omitted)")
    parser.add_argument("--crop", default=None, help="x0,y0,x1,y1: only this part of the image, enlarged")
    parser.add_argument("--step", type=int, default=None, help="grid spacing in image pixels")
    parser.add_argument("--out", type=Path, default=Path("out/zones"))
    args = parser.parse_args(argv)
    if args.action == "validate":
        checked = [load_zones(args.image)] if args.image else all_zones()
        counts = class_counts(checked)
        total = sum(len(z.zones) for z in checked)
        print(f"{len(checked)} images, {total} zones, {sum(len(z.persons) for z in checked)} person boxes")
        for key in sorted(counts):
            print(f"  {key:28s} {counts[key]}")
        return 0
    if not args.image:
        parser.error(f"{args.action} needs an image id")
    rgb, _ = load_image(args.image)
    crop = _crop_arg(args.crop)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.action == "grid":
        span = max((crop[2] - crop[0], crop[3] - crop[1]) if crop else rgb.shape[:2])
        step = args.step or max(5, round(span / 20 / 5) * 5)
        image = draw_grid(rgb, step, crop)
        suffix = f"-{args.crop.replace(',', '_')}" if crop else ""
        path = args.out / f"{args.image}-grid{suffix}.png"
    else:
        image = draw_zones(rgb, load_zones(args.image), crop)
        suffix = f"-{args.crop.replace(',', '_')}" if crop else ""
        path = args.out / f"{args.image}-check{suffix}.png"
    image.save(path)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
