#!/usr/bin/env python3
"""How well do PartCam checkpoints parse real people? Silhouette IoU on real photos, no labels needed.

The photos are real photos of people shipped inside installed packages (scikit-image, matplotlib).
The reference person mask comes from MediaPipe Pose (BlazePose, npm ``@mediapipe/pose``) on refined
person crops, a different model from the selfie-segmentation encoder inside the network, run with
``ai-edge-litert`` (see ``training/realphoto/reference.py`` for exactly how).

Silhouette IoU = IoU of (our label != background) and (reference probability > 0.5), per photo and
averaged over photos. The part shares say which of our labels cover the reference person's pixels.

    python scripts/real_photos.py --checkpoint models/parts.safetensors
    python scripts/real_photos.py --checkpoint A.safetensors --checkpoint B.safetensors \\
        --out docs/real_photos.jpg --json out/real_photos.json

One overlay grid is written to ``--out``: per photo, the photo | the reference mask | each
checkpoint's parts overlay (coloured with the task palette); each photo's row is also written
larger beside it as ``<out>_<photo>.jpg``. JPEGs are kept under 500 KB.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from engines import create_engine
from engines.tasks import TASKS
from training.realphoto.measure import (
    legend_strip,
    overlay_grid,
    part_fractions,
    photo_row,
    predict_labels,
    save_jpeg,
    silhouette_iou,
)
from training.realphoto.photos import PHOTO_SOURCES, available_photos
from training.realphoto.reference import MODEL_VARIANTS, NOT_INSTALLED, BlazePoseReference, model_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, type=Path,
                        help="a PartCam checkpoint; repeat to compare several in one table")
    parser.add_argument("--name", action="append", default=None,
                        help="a short column name per --checkpoint, in order (default: file stem)")
    parser.add_argument("--engine", default="cpu", help="engine backend (default cpu)")
    parser.add_argument("--input-size", type=int, default=None, help="network input size (default: checkpoint's)")
    parser.add_argument("--flip", action="store_true", help="also run the mirrored photo and merge (see measure.py)")
    parser.add_argument("--photos", nargs="+", default=None,
                        help=f"photos to use (default all installed): {', '.join(s.name for s in PHOTO_SOURCES)}")
    parser.add_argument("--reference-model", choices=MODEL_VARIANTS, default="heavy",
                        help="BlazePose landmark model variant (default heavy)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/real_photos.jpg"), help="overlay grid JPEG")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    return parser.parse_args(argv)


def column_names(checkpoints: list[Path], names: list[str] | None) -> list[str]:
    if names is None:
        names = [path.stem for path in checkpoints]
    if len(names) != len(checkpoints):
        raise SystemExit(f"--name given {len(names)} times for {len(checkpoints)} checkpoints")
    if len(set(names)) != len(names):
        raise SystemExit(f"column names must differ: {names} (use --name)")
    return names


ALL_PERSON = "(all person)"


def format_table(photos: list[str], names: list[str], ious: dict[str, dict[str, float]]) -> str:
    """photo × checkpoint silhouette IoU, with the mean over photos as the last row.

    The "(all person)" column is what labelling every pixel as a part would score (the reference
    mask's coverage): a model must beat it to be finding people rather than painting everything.
    """
    names = [*names, ALL_PERSON]
    width = max(12, *(len(name) for name in names))
    first = max(12, *(len(photo) for photo in photos))
    lines = ["silhouette IoU (ours: label != background; reference: BlazePose mask > 0.5)",
             f"{'photo':<{first}}" + "".join(f"  {name:>{width}}" for name in names)]
    for photo in photos:
        lines.append(f"{photo:<{first}}" + "".join(f"  {ious[name][photo]:>{width}.3f}" for name in names))
    means = [float(np.mean([ious[name][p] for p in photos])) for name in names]
    lines.append(f"{'mean':<{first}}" + "".join(f"  {m:>{width}.3f}" for m in means))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = column_names(args.checkpoint, args.name)
    if not model_path(args.reference_model).is_file():
        print(NOT_INSTALLED, file=sys.stderr)
        return 2
    photos = available_photos(args.photos)
    if not photos:
        print("no photos found: install scikit-image and matplotlib (requirements-dev.txt)", file=sys.stderr)
        return 2

    reference_model = BlazePoseReference(args.reference_model, threads=args.threads)
    references = {}
    print(f"reference: BlazePose {args.reference_model}, {reference_model.refinements} refined crops averaged")
    for photo in photos:
        ref = reference_model(photo.rgb)
        references[photo.name] = ref
        print(f"  {photo.name:<12} {photo.rgb.shape[1]}x{photo.rgb.shape[0]}  person coverage "
              f"{ref.mask().mean():.3f}  pose presence {ref.presence:.3f}")

    results: dict = {"reference_model": f"pose_landmark_{args.reference_model}.tflite", "flip": args.flip,
                     "photos": {}, "checkpoints": {}}
    for photo in photos:
        results["photos"][photo.name] = {
            "source": f"{photo.source.package}: {photo.source.relative_path}",
            "licence": photo.source.licence,
            "reference_coverage": float(references[photo.name].mask().mean()),
            "pose_presence": references[photo.name].presence,
        }
    ious: dict[str, dict[str, float]] = {}
    labels_by: dict[str, dict[str, np.ndarray]] = {}
    tasks = set()
    for name, checkpoint in zip(names, args.checkpoint):
        engine = create_engine(checkpoint, backend=args.engine, input_size=args.input_size, threads=args.threads)
        task = engine.metadata.task if engine.metadata else "parts"
        tasks.add(task)
        classes = TASKS[task].classes
        ious[name], labels_by[name] = {}, {}
        entry = {"path": str(checkpoint), "task": task, "input_size": engine.input_size,
                 "trained": engine.trained, "photos": {}}
        for photo in photos:
            labels = predict_labels(engine, photo.rgb, flip=args.flip)
            reference = references[photo.name].mask()
            iou = silhouette_iou(labels, reference)
            fractions = part_fractions(labels, reference, len(classes))
            ious[name][photo.name] = iou
            labels_by[name][photo.name] = labels
            entry["photos"][photo.name] = {"silhouette_iou": iou,
                                           "reference_pixels_as": dict(zip(classes, map(float, fractions))),
                                           "ours_coverage": float((labels != 0).mean())}
        entry["mean_silhouette_iou"] = float(np.mean(list(ious[name].values())))
        results["checkpoints"][name] = entry

    photo_names = [photo.name for photo in photos]
    ious[ALL_PERSON] = {photo.name: float(references[photo.name].mask().mean()) for photo in photos}
    print()
    print(format_table(photo_names, names, ious))
    print()
    print("share of the reference person's pixels given each label")
    for name in names:
        classes = TASKS[results["checkpoints"][name]["task"]].classes
        print(f"  {name}:  " + "  ".join(f"{c[:10]:>10}" for c in classes))
        for photo in photo_names:
            shares = results["checkpoints"][name]["photos"][photo]["reference_pixels_as"]
            print(f"    {photo:<12}" + "  ".join(f"{shares[c]:>10.2f}" for c in classes))

    rows = []
    for photo in photos:
        predictions = [(name, labels_by[name][photo.name], ious[name][photo.name],
                        TASKS[results["checkpoints"][name]["task"]].palette) for name in names]
        rows.append(photo_row(photo, references[photo.name].mask(), predictions))
    grid = overlay_grid(rows)
    legends = [legend_strip(task, grid.width) for task in sorted(tasks, key=list(TASKS).index)]
    sheet = Image.new("RGB", (grid.width, grid.height + sum(legend.height for legend in legends)))
    sheet.paste(grid, (0, 0))
    top = grid.height
    for legend in legends:
        sheet.paste(legend, (0, top))
        top += legend.height
    size = save_jpeg(sheet, args.out)
    print(f"\noverlays: {args.out} ({size / 1000:.0f} KB)")
    for photo, row in zip(photos, rows):
        # One larger sheet per photo too, e.g. docs/real_photos_astronaut.jpg, for the README.
        single = overlay_grid([row], tile_size=320)
        path = args.out.with_name(f"{args.out.stem}_{photo.name}.jpg")
        print(f"          {path} ({save_jpeg(single, path) / 1000:.0f} KB)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
