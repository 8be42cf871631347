#!/usr/bin/env python3
"""Compile a PartCam checkpoint to a TensorRT program for one input size, batch and precision.

    python scripts/build_engine.py --checkpoint model.safetensors --input-size 513 --precision fp16 --batch 1

Steps (each timed): load the checkpoint, compile with torch-tensorrt (dynamo IR, static
shape), save the program beside its cache key, load it back, and check it against eager
PyTorch fp32 on random and image-like inputs (argmax agreement, largest logit difference).
A build whose key matches is reused. Needs an NVIDIA GPU and torch-tensorrt; without
them it prints one line saying what is missing and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from engines import CheckpointError, load_checkpoint
from engines.backends.engine_cache import (
    PRECISIONS,
    PROGRAM_FILE,
    StaleEngine,
    check_key,
    default_cache_dir,
    make_key,
    read_key,
    write_key,
)
from engines.backends.tensorrt import (
    compile_program,
    import_torch_tensorrt,
    load_program,
    missing_requirements,
    save_program,
)
from engines.importers.caffe_forward import with_recorded_resampling
from engines.predict import class_scores
from engines.preprocessing import Preprocessing

EXIT_UNAVAILABLE = 2
EXIT_CHECK_FAILED = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="PartCam checkpoint (.safetensors)")
    parser.add_argument("--input-size", type=int, default=None, help="square input size (default: the checkpoint's)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--batch", type=int, default=1, help="static batch size the program is built for")
    parser.add_argument("--out", type=Path, default=None, help="engine cache folder (default: .cache/engines)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    parser.add_argument("--min-agreement", type=float, default=0.995,
                        help="smallest acceptable argmax agreement with eager fp32 (default 0.995)")
    parser.add_argument("--check-batches", type=int, default=4, help="random and image-like batches to compare")
    args = parser.parse_args(argv)
    if args.batch < 1 or (args.input_size is not None and args.input_size < 16):
        parser.error("--batch must be ≥ 1 and --input-size ≥ 16")
    return args


class Steps:
    """Prints each step as it starts and how long it took."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def run(self, label: str, function, *args, **kwargs):
        print(f"[build] {label} ...", flush=True)
        begin = time.perf_counter()
        result = function(*args, **kwargs)
        print(f"[build] {label}: {time.perf_counter() - begin:.1f} s", flush=True)
        return result

    def total(self) -> float:
        return time.perf_counter() - self.started


def image_like_batch(batch: int, size: int, preprocessing: Preprocessing, generator: torch.Generator) -> torch.Tensor:
    """Smooth colour gradients with soft blobs, like camera frames, normalised for the model."""
    axis = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    frames = []
    for _ in range(batch):
        base = torch.rand(3, 1, 1, generator=generator) * 160 + 40
        tilt = (torch.rand(3, 2, generator=generator) - 0.5) * 120
        image = base + tilt[:, 0, None, None] * yy + tilt[:, 1, None, None] * xx
        for _ in range(6):  # blobs stand in for a person's head, limbs and clothing
            cy, cx, radius = torch.rand(3, generator=generator).tolist()
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.05 + 0.2 * radius) ** 2))
            image = image + (torch.rand(3, 1, 1, generator=generator) - 0.5) * 200 * blob
        image = image + torch.randn(3, size, size, generator=generator) * 4  # sensor noise
        frames.append(image.clamp(0, 255))
    return preprocessing.normalise(torch.stack(frames))


def compare_with_eager(program, model: torch.nn.Module, size: int, batch: int, precision: str,
                       batches: int, device: torch.device) -> dict:
    """Argmax agreement and the largest logit difference against eager fp32 on the GPU."""
    # A true fp32 reference: no TF32 in cuDNN convolutions or matmuls while it runs.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    # What the engines run: imported Caffe models with Caffe's resizing, as recorded.
    reference = with_recorded_resampling(model.float().to(device).eval())
    dtype = torch.float16 if precision == "fp16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    results = {}
    for kind in ("random", "image-like"):
        agree = total = 0
        largest = 0.0
        for _ in range(batches):
            if kind == "random":
                x = torch.randn(batch, 3, size, size, generator=generator)
            else:
                x = image_like_batch(batch, size, model.preprocessing, generator)
            x = x.to(device)
            with torch.inference_mode():
                expected = class_scores(reference(x)).float()
                got = program(x.to(dtype))[0].float()
            agree += int((expected.argmax(1) == got.argmax(1)).sum())
            total += expected.shape[0] * expected.shape[2] * expected.shape[3]
            largest = max(largest, float((expected - got).abs().max()))
        results[kind] = {"agreement": agree / total, "max_logit_diff": largest}
    return results


def time_program(program, size: int, batch: int, precision: str, device: torch.device, runs: int = 50) -> dict:
    """Median and p99 milliseconds per call, from CUDA events."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    with torch.inference_mode():
        for index in range(runs + 10):
            start.record()
            program(x)
            end.record()
            end.synchronize()
            if index >= 10:
                times.append(start.elapsed_time(end))
    times.sort()
    p99 = times[min(len(times), math.ceil(0.99 * len(times))) - 1]  # nearest-rank percentile
    return {"median_ms": statistics.median(times), "p99_ms": p99}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_requirements()
    if missing:
        print(f"build_engine: cannot build a TensorRT engine here: needs {' and '.join(missing)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        import_torch_tensorrt()
    except Exception as exc:  # one line, whatever the broken install says
        print(f"build_engine: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE

    steps = Steps()
    device = torch.device("cuda", torch.cuda.current_device())
    try:
        model = steps.run("load checkpoint", load_checkpoint, args.checkpoint)
    except CheckpointError as exc:
        print(f"build_engine: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    size = args.input_size or model.metadata.input_size
    key = steps.run("hash weights", make_key, model, input_size=size, batch=args.batch, precision=args.precision)
    root = args.out or default_cache_dir()
    folder = root / key.folder_name
    print(f"[build] {key.backbone}/{key.merge} at {size}×{size}, batch {args.batch}, {args.precision}, "
          f"on {key.gpu}; torch {key.torch}, torch-tensorrt {key.torch_tensorrt}, TensorRT {key.tensorrt}")

    reuse = False
    if (folder / PROGRAM_FILE).is_file() and not args.force:
        try:
            check_key(key, read_key(folder), folder, args.checkpoint)
            reuse = True
            print(f"[build] a matching build exists in {folder}; reusing it (--force rebuilds)")
        except StaleEngine as exc:
            print(f"[build] replacing a stale build: {exc}")

    if not reuse:
        compiled, example = steps.run("compile with torch-tensorrt", compile_program, model, size, args.batch,
                                      args.precision, device)
        staging = root / (key.folder_name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        steps.run("save program", save_program, compiled, staging, example)
        del compiled
        write_key(staging, key)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)

    program = steps.run("load saved program", load_program, folder)
    check = steps.run("compare with eager fp32", compare_with_eager, program, model, size, args.batch,
                      args.precision, args.check_batches, device)
    ok = True
    for kind, result in check.items():
        passed = result["agreement"] >= args.min_agreement
        ok &= passed
        print(f"[build] {kind:>10} inputs: argmax agreement {100 * result['agreement']:.3f}% "
              f"(need ≥ {100 * args.min_agreement:.1f}%), largest logit difference {result['max_logit_diff']:.4g}"
              f"{'' if passed else '  FAILED'}")
    timing = steps.run("time program", time_program, program, size, args.batch, args.precision, device)
    print(f"[build] GPU time per batch of {args.batch}: median {timing['median_ms']:.2f} ms, "
          f"p99 {timing['p99_ms']:.2f} ms")
    if not ok:
        shutil.rmtree(folder, ignore_errors=True)
        print("build_engine: the compiled program disagrees with eager PyTorch; it was removed", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"[build] done in {steps.total():.1f} s: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
