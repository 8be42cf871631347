#!/usr/bin/env python
"""Parse images, folders of images and videos offline, with the demo's models.

    python scripts/parse.py photo.jpg holiday/ clip.mp4 --out parsed/
    python scripts/parse.py clip.mp4 --task clothes --labels --engine cpu

Per image: ``OUT/NAME.png``, single-channel, pixel = class index, at the image's own size, and
``OUT/NAME-overlay.jpg``. Per video: ``OUT/NAME-overlay.mp4``, plus ``OUT/NAME/000000.png``...
(one label map per frame) with ``--labels``. A bad input gets one line on stderr and the rest
go on; the exit status is 1 when anything failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from server.codec import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, FrameError, decode_image, encode_jpeg, encode_label_png
from server.overlay import DEFAULT_OPACITY, colourise_parts

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
# Offline files may come from any camera or editor; the live server keeps to JPEG and PNG.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF")


class InputError(Exception):
    """One input that cannot be parsed; the message is the line the user sees."""


@dataclass
class Totals:
    """What the run did, for the summary line and the exit status."""

    cnn_ms: list[float] = field(default_factory=list)
    frames: int = 0
    failed: list[str] = field(default_factory=list)


def collect_inputs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files to parse (folders expanded to their images and videos, sorted) and one error line per bad path."""
    files: list[Path] = []
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not found:
                errors.append(f"{path}: no images or videos in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


class OutputNames:
    """``NAME`` for each input, made unique when two inputs share a file name."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def __call__(self, path: Path) -> str:
        name, count = path.stem, 1
        while name in self._used:
            count += 1
            name = f"{path.stem}-{count}"
        self._used.add(name)
        return name


def parse_image(path: Path, engine, palette: np.ndarray, out_dir: Path, name: str, opacity: float) -> float:
    """One image → NAME.png (class indices) and NAME-overlay.jpg; returns the CNN milliseconds."""
    try:
        rgb = decode_image(path.read_bytes(), DEFAULT_MAX_SIDE, DEFAULT_MAX_PIXELS, formats=IMAGE_FORMATS,
                           exif_orient=True)
    except FrameError as error:
        raise InputError(f"{path}: {error.message}") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    [prediction] = engine.infer([rgb])
    (out_dir / f"{name}.png").write_bytes(encode_label_png(prediction.labels))
    overlay = colourise_parts(rgb, prediction.labels, palette, opacity)
    (out_dir / f"{name}-overlay.jpg").write_bytes(encode_jpeg(overlay, quality=90))
    return prediction.cnn_ms


def _quiet_cv2():
    """OpenCV with FFmpeg's and its own log lines off: a bad input gets our one line, not a screenful."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    import cv2

    return cv2


def parse_video(path: Path, engine, palette: np.ndarray, out_dir: Path, name: str, opacity: float,
                write_labels: bool, totals: Totals) -> None:
    """A video → NAME-overlay.mp4 (and NAME/NNNNNN.png per frame with ``write_labels``)."""
    from tqdm import tqdm

    cv2 = _quiet_cv2()
    capture = cv2.VideoCapture(str(path))
    try:
        ok, bgr = capture.read() if capture.isOpened() else (False, None)
        if not ok or bgr is None:
            raise InputError(f"{path}: not a readable video (corrupt, empty or an unsupported codec)")
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if 0 < fps < 1000 else 25.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        height, width = bgr.shape[:2]
        target = out_dir / f"{name}-overlay.mp4"
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise InputError(f"{path}: cannot write {target} (no MPEG-4 encoder in this OpenCV build)")
        label_dir = out_dir / name
        if write_labels:
            label_dir.mkdir(parents=True, exist_ok=True)
        index = 0
        try:
            with tqdm(total=total, desc=path.name, unit="frame", leave=True) as bar:
                while ok:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    [prediction] = engine.infer([rgb])
                    totals.cnn_ms.append(prediction.cnn_ms)
                    totals.frames += 1
                    overlay = np.asarray(colourise_parts(rgb, prediction.labels, palette, opacity))
                    writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                    if write_labels:
                        (label_dir / f"{index:06d}.png").write_bytes(encode_label_png(prediction.labels))
                    index += 1
                    bar.set_postfix(cnn_ms=f"{prediction.cnn_ms:.0f}")
                    bar.update()
                    ok, bgr = capture.read()
        finally:
            writer.release()
    finally:
        capture.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 when every input was parsed, 1 otherwise.")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="an image, a folder of images, or a video")
    parser.add_argument("--task", default="parts", choices=("parts", "clothes"))
    parser.add_argument("--out", type=Path, default=Path("parsed"), help="output folder (default ./parsed)")
    parser.add_argument("--engine", default="auto", choices=("auto", "cpu", "openvino", "cuda", "tensorrt"),
                        help="runtime, as for the server (auto: tensorrt, cuda, openvino, then cpu)")
    parser.add_argument("--checkpoint", help="model to use (default: the demo's, models/TASK.safetensors)")
    parser.add_argument("--input-size", type=int, help="network input size (default: the model's)")
    parser.add_argument("--labels", action="store_true", help="for videos, also write one label PNG per frame")
    parser.add_argument("--opacity", type=float, default=DEFAULT_OPACITY, help="overlay opacity 0..1 (default 0.6)")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    files, errors = collect_inputs(args.inputs)
    totals = Totals(failed=list(errors))
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if not files:
        return 1
    args.out.mkdir(parents=True, exist_ok=True)

    from engines.shipped import load_default_engine, settle_glue_threads
    from engines.tasks import TASKS

    engine = load_default_engine(args.task, args.checkpoint, backend=args.engine, input_size=args.input_size)
    settle_glue_threads([engine])
    if not engine.trained:
        print(f"warning: the {args.task} model is UNTRAINED (random weights): the labels are noise", file=sys.stderr)
    palette = TASKS[args.task].palette
    names = OutputNames()
    images = [f for f in files if f.suffix.lower() not in VIDEO_SUFFIXES]
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    started = time.perf_counter()
    if images:
        with tqdm(images, desc="images", unit="image") as bar:
            for path in bar:
                try:
                    cnn_ms = parse_image(path, engine, palette, args.out, names(path), args.opacity)
                except InputError as error:
                    totals.failed.append(str(error))
                    tqdm.write(f"error: {error}", file=sys.stderr)
                    continue
                totals.cnn_ms.append(cnn_ms)
                totals.frames += 1
                bar.set_postfix(cnn_ms=f"{cnn_ms:.0f}")
    for path in videos:
        try:
            parse_video(path, engine, palette, args.out, names(path), args.opacity, args.labels, totals)
        except InputError as error:
            totals.failed.append(str(error))
            tqdm.write(f"error: {error}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    if totals.frames:
        cnn = statistics.median(totals.cnn_ms)
        print(f"{totals.frames} frame(s) in {elapsed:.1f} s: {totals.frames / elapsed:.1f} fps overall, "
              f"CNN {cnn:.1f} ms per frame (median, {engine.timing_label}) on {engine.name}; output in {args.out}")
    if totals.failed:
        print(f"{len(totals.failed)} input(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
