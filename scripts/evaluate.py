#!/usr/bin/env python
"""Score a PartCam checkpoint on a dataset: IoU per class and mIoU from one confusion matrix.

    python scripts/evaluate.py --checkpoint runs/parts/best.safetensors --dataset synthetic --root data/synth_test
    python scripts/evaluate.py --checkpoint CKPT --dataset lip --root /data/LIP --json lip.json
    python scripts/evaluate.py --checkpoint CKPT --dataset synthetic --root data/synth_test --by-person-size
    python scripts/evaluate.py --checkpoint CKPT --dataset synthetic --root data/synth_test --by-outline-distance

Each whole image is labelled by an engine (``--engine``, default eager PyTorch on the CPU), the
same code the server runs: letterboxed to the input size, class scores resized bilinearly to the
label's own resolution, then the argmax (``engines/predict.py``). Every labelled pixel counts
(255 = ignore). Prints a table like the paper's; the last line is ``mIoU: <percent>``.
``--save-labels DIR`` writes each image's predicted labels as a PNG of class indices.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engines import BACKENDS, BackendUnavailable, CheckpointError, create_engine, read_metadata
from training.datasets import DATASETS, open_dataset
from training.metrics import describe_person_size, evaluate_model, format_error_distances


def format_table(rows: list[tuple[str, dict]], class_names: list[str]) -> str:
    """A markdown table: one row per model, IoU (%) per class, then mIoU; '–' where a class is not scored."""
    header = "| model | " + " | ".join(class_names) + " | mIoU |"
    lines = [header, "|" + "---|" * (len(class_names) + 2)]
    for name, result in rows:
        cells = ["–" if result["iou"].get(c) is None else f"{100 * result['iou'][c]:.2f}" for c in class_names]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * result['miou']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a PartCam .safetensors checkpoint")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--root", type=Path, required=True, help="the dataset's folder")
    p.add_argument("--split", help="dataset split (default: val for real datasets, the whole folder for synthetic)")
    p.add_argument("--json", type=Path, help="write the result (IoU per class, mIoU, confusion matrix) here")
    p.add_argument("--input-size", type=int, help="letterbox size (default: the checkpoint's)")
    p.add_argument("--limit", type=int, help="score only the first N images")
    p.add_argument("--by-person-size", action="store_true",
                   help="also score the images by how much of them the people cover (small / medium / large)")
    p.add_argument("--by-outline-distance", action="store_true",
                   help="also break the mistakes down by distance from the true person outline")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--engine", default="cpu", choices=("auto", *BACKENDS),
                   help="runtime that labels the images, as the server's --engine (default cpu: eager float32)")
    p.add_argument("--precision", default="fp16", help="GPU engines' precision (fp16, bf16, fp32)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--save-labels", type=Path, metavar="DIR", help="write each image's labels here as a PNG")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)

    try:
        meta = read_metadata(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cls = DATASETS[args.dataset]
    if meta.task not in cls.tasks:
        print(f"error: {args.checkpoint} parses {meta.task!r}; {args.dataset} has labels for "
              f"{', '.join(cls.tasks)} only", file=sys.stderr)
        return 2
    split = args.split or ("val" if "val" in cls.splits and args.dataset != "synthetic" else None)
    try:
        dataset = open_dataset(args.dataset, args.root, split=split, task=meta.task)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    input_size = args.input_size or meta.input_size
    try:
        engine = create_engine(args.checkpoint, args.engine, input_size, threads=max(1, args.threads),
                               precision=args.precision, cpu_precision="f32")
    except (CheckpointError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    on_labels = None
    if args.save_labels:
        args.save_labels.mkdir(parents=True, exist_ok=True)

        def on_labels(index: int, labels: np.ndarray) -> None:
            Image.fromarray(labels).save(args.save_labels / f"{index:06d}.png")

    started = time.monotonic()
    result = evaluate_model(engine, dataset, limit=args.limit, batch_size=args.batch_size, progress=args.progress,
                            by_person_size=args.by_person_size, by_outline_distance=args.by_outline_distance,
                            on_labels=on_labels)
    seconds = time.monotonic() - started
    result.update(checkpoint=str(args.checkpoint), dataset=args.dataset, root=str(args.root), split=dataset.split,
                  task=meta.task, engine=engine.describe()["engine"], input_size=input_size,
                  backbone=meta.model.backbone, merge=meta.model.merge, scales=list(meta.model.scales),
                  trained_on=meta.trained_on, seconds=seconds)

    label = f"{meta.model.backbone}/{meta.model.merge}"
    print(f"\n{meta.task} on {dataset.describe()}, {result['images']} images at input {input_size}, "
          f"{seconds:.1f} s")
    print(f"checkpoint {args.checkpoint} (trained on: {meta.trained_on})\n")
    print(format_table([(label, result)], list(meta.classes)))
    if args.by_person_size:
        rows = [(describe_person_size(name, part), part) for name, part in result["by_person_size"].items()]
        print("\nby how much of the image the people cover:\n")
        print(format_table(rows, list(meta.classes)))
    if args.by_outline_distance:
        print("\nmistakes by distance from the true person outline:\n")
        print(format_error_distances(result["errors_by_outline_distance"]))
    print(f"\npixel accuracy: {100 * result['pixel_accuracy']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    print(f"mIoU: {100 * result['miou']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
