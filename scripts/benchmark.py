#!/usr/bin/env python3
"""PartCam's CNN benchmark: parameters, GFLOPs and CNN time for each model, as a table and JSON.

CPU (default): MobileNetV3 and VGG16-LargeFOV × attention / max / average / single merge,
at 321 px, timed through the CPU engine (channels_last, inference mode, fixed threads).

    python scripts/benchmark.py --json out/benchmark-cpu.json
    python scripts/benchmark.py --backbones mobilenetv3_large --merges attention max --sizes 321 513
    python scripts/benchmark.py --checkpoints models/parts.safetensors runs/r5/best-parts.safetensors

``--checkpoints`` times the given trained models instead (CPU only), interleaved with each other,
at each ``--sizes`` (default: each checkpoint's own input size).

GPU (``--device cuda``): the attention models at 321 and 513 px, batch 1 and 4, on eager
fp32, the cuda engine in fp16 without and with CUDA graphs, and TensorRT fp16 (compiled in
process; skipped with the reason when torch-tensorrt is missing). Times are CUDA events.

    python scripts/benchmark.py --device cuda --json out/benchmark-gpu.json

Models have random weights (speed does not depend on them). GFLOPs count 2 per
multiply-add (torch.utils.flop_counter). The timed runs of the models that share a
backbone and size are interleaved, so a neighbour's load hits every merge alike and the
attention/max ratio stays fair on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from engines import BACKBONES, MERGES, BackendUnavailable, build_model
from engines.backends.base import Engine

ORIGINAL_DEMO_MS = 300.0  # the original demo's GPU time per frame (0.300–0.351 s)
RATIO_TARGET = 1.15  # attention merge may cost at most 15% more than max merge
GPU_BACKENDS: tuple[str, ...] = ("eager-fp32", "cuda-fp16", "cuda-graphs", "tensorrt-fp16")
# Per-backbone default repeats on a CPU: VGG takes about a second a frame there.
CPU_REPEATS = {"vgg16_largefov": 5}
DEFAULT_CPU_REPEATS = 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PartCam CNN benchmark (see the module docstring)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=None,
                        help="default: mobilenetv3_large vgg16_largefov")
    parser.add_argument("--merges", nargs="+", choices=MERGES, default=None,
                        help="default: all four on cpu, attention on cuda")
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help="default: 321 on cpu, 321 513 on cuda")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="cuda only; default: 1 4")
    parser.add_argument("--backends", nargs="+", choices=GPU_BACKENDS, default=list(GPU_BACKENDS),
                        help="cuda only")
    parser.add_argument("--cpu-backends", nargs="+", choices=("cpu", "openvino"), default=["cpu", "openvino"],
                        help="cpu only: eager PyTorch (cpu) and/or OpenVINO")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed runs per model (default: {DEFAULT_CPU_REPEATS} on cpu, 5 for VGG; 100 on cuda)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 2 on cpu, 10 on cuda)")
    parser.add_argument("--checkpoints", nargs="+", type=Path, default=None,
                        help="cpu only: time these PartCam checkpoints instead of models built by name")
    parser.add_argument("--frame", type=lambda t: tuple(int(v) for v in t.lower().split("x")), default=(640, 480),
                        metavar="WxH", help="with --checkpoints: the frame size for frame-to-labels times "
                                            "(default 640x480, a phone's)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (cpu only)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.backbones = args.backbones or ["mobilenetv3_large", "vgg16_largefov"]
    args.merges = args.merges or (["attention"] if gpu else ["attention", "max", "average", "single"])
    if args.checkpoints and gpu:
        parser.error("--checkpoints is for the cpu benchmark")
    args.sizes = args.sizes or ([321, 513] if gpu else None if args.checkpoints else [321])
    args.batches = args.batches or ([1, 4] if gpu else [1])
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    if min(args.sizes or [16]) < 16 or min(args.batches) < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error("sizes must be ≥ 16, batches and repeats ≥ 1")
    return args


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a time that was measured)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(fraction * len(ordered))) - 1)]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: torch.nn.Module, size: int) -> float:
    """GFLOPs of one size×size frame, counted on the meta device (shapes only, no arithmetic)."""
    shadow = copy.deepcopy(model).eval().to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        shadow(torch.zeros(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 1e9


def test_frame(size: int, seed: int = 0) -> np.ndarray:
    """A size×size uint8 RGB frame with smooth structure, so no letterbox resize is timed or needed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    frame = 120 + 80 * np.sin(6 * xx[..., None] + rng.uniform(0, 6, 3)) * np.cos(4 * yy[..., None])
    frame += rng.normal(0, 6, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def summarise(times_ms: list[float], batch: int, gflops: float, gpu: bool) -> dict:
    median = statistics.median(times_ms)
    row = {
        "median_ms": median,
        "p90_ms": percentile(times_ms, 0.90),
        "fps": 1000.0 * batch / median,
        "runs": len(times_ms),
    }
    if gpu:
        row["p99_ms"] = percentile(times_ms, 0.99)
        row["tflops"] = gflops * batch / median  # GFLOP per ms is TFLOP per s
        row["speedup_vs_demo"] = ORIGINAL_DEMO_MS / (median / batch)
    return row


def time_interleaved(engines: dict[str, Engine], frames: list[np.ndarray], warmup: int,
                     repeats: dict[str, int], wall: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """CNN milliseconds of each engine, as the engine itself reports them, runs interleaved.

    ``wall``, when given, also gets each call's whole time, frames in to labels out (letterbox,
    network, upsampling and argmax, resize to the frame)."""
    for engine in engines.values():
        for _ in range(warmup):
            engine.infer(frames)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for round_index in range(max(repeats.values())):
        for name, engine in engines.items():
            if round_index < repeats[name]:
                started = time.perf_counter()
                times[name].append(engine.infer(frames)[0].cnn_ms)
                if wall is not None:
                    wall.setdefault(name, []).append((time.perf_counter() - started) * 1000)
    return times


def model_info(backbone: str, merge: str, size: int, model: torch.nn.Module | None = None
               ) -> tuple[torch.nn.Module, dict]:
    """The model (built with random weights unless given) and its static description."""
    if model is None:
        torch.manual_seed(0)
        model = build_model(task="parts", backbone=backbone, merge=merge).eval()
    info = {
        "backbone": backbone,
        "merge": merge,
        "scales": list(model.scales),
        "input_size": size,
        "params_m": count_parameters(model) / 1e6,
        "gflops": count_gflops(model, size),
    }
    return model, info


def time_cpu_group(group: dict[str, tuple[dict, str, Engine]], size: int, repeats: int, warmup: int,
                   frame: np.ndarray | None = None) -> list[dict]:
    """One result row per ``key: (model info, backend name, engine)``, all timed interleaved on one
    frame: ``frame`` (then frame-to-labels times are recorded too) or a size×size test frame."""
    engines = {key: engine for key, (_, _, engine) in group.items()}
    wall: dict[str, list[float]] = {}
    times = time_interleaved(engines, [frame if frame is not None else test_frame(size)], warmup,
                             dict.fromkeys(engines, repeats), wall if frame is not None else None)
    rows = []
    for key, (info, backend, engine) in group.items():
        row = {**info, "device": engine.device_name, "backend": backend, "batch": 1, "timing": engine.timing_label}
        row.update(summarise(times[key], 1, row["gflops"], gpu=False))
        if frame is not None:
            row["frame"] = f"{frame.shape[1]}x{frame.shape[0]}"
            row["frame_to_labels_median_ms"] = statistics.median(wall[key])
        rows.append(row)
    return rows


def run_checkpoints(args: argparse.Namespace) -> list[dict]:
    """CPU times of trained checkpoints, all timed interleaved at each size."""
    from engines import load_checkpoint
    from engines.backends import create_engine

    models = {path: load_checkpoint(path) for path in args.checkpoints}
    sizes = args.sizes or sorted({model.metadata.input_size for model in models.values()})
    repeats = args.repeats or DEFAULT_CPU_REPEATS
    results = []
    for size in sizes:
        group = {}
        for path, model in models.items():
            _, info = model_info(model.config.backbone, model.config.merge, size, model=model)
            for backend in args.cpu_backends:
                engine = create_engine(model, backend, size, threads=args.threads)
                group[f"{path}|{backend}"] = ({**info, "checkpoint": str(path)}, backend, engine)
        print(f"[bench] {len(models)} checkpoints at {size}: {len(group)} checkpoint/backend pairs × {repeats} runs",
              flush=True)
        width, height = args.frame
        frame = np.ascontiguousarray(test_frame(max(width, height))[:height, :width])
        results.extend(time_cpu_group(group, size, repeats, args.warmup, frame))
    return results


def run_cpu(args: argparse.Namespace) -> list[dict]:
    from engines.backends import create_engine

    if args.checkpoints:
        return run_checkpoints(args)
    results = []
    for backbone in args.backbones:
        repeats = args.repeats or CPU_REPEATS.get(backbone, DEFAULT_CPU_REPEATS)
        for size in args.sizes:
            group = {}
            for merge in args.merges:
                model, info = model_info(backbone, merge, size)
                for backend in args.cpu_backends:
                    group[f"{merge}/{backend}"] = (info, backend, create_engine(model, backend, size,
                                                                                 threads=args.threads))
            print(f"[bench] {backbone} at {size}: {len(group)} merge/backend pairs × {repeats} runs", flush=True)
            results.extend(time_cpu_group(group, size, repeats, args.warmup))
    return results


def gpu_engine(backend: str, model: torch.nn.Module, size: int, batch: int) -> Engine:
    """One GPU runtime for the benchmark; raises BackendUnavailable with the reason to skip it."""
    from engines.backends.cuda import CudaEngine

    if backend == "eager-fp32":
        return CudaEngine(model, size, precision="fp32", cuda_graphs=False)
    if backend == "cuda-fp16":
        return CudaEngine(model, size, precision="fp16", cuda_graphs=False)
    if backend == "cuda-graphs":
        return CudaEngine(model, size, precision="fp16", cuda_graphs=True)
    return InProcessTensorRT(model, size, batch)


class InProcessTensorRT(Engine):
    """TensorRT fp16 compiled in this process for one static batch (no cache: weights are random)."""

    name = "tensorrt"
    timing_label = "GPU time"
    batching_helps = True

    def __init__(self, model: torch.nn.Module, size: int, batch: int) -> None:
        from engines.backends.tensorrt import compile_program, require_tensorrt

        require_tensorrt()
        device = torch.device("cuda", torch.cuda.current_device())
        super().__init__(model, size, device)
        started = time.perf_counter()
        try:
            self.program, _ = compile_program(model, size, batch, "fp16", device)
        except Exception as exc:  # a converter gap is a result to report, not a crash
            raise BackendUnavailable(f"torch-tensorrt could not compile it: {str(exc).splitlines()[0]}") from None
        self.compile_s = time.perf_counter() - started
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def _forward(self, batch):
        batch = batch.half().contiguous()
        self._start.record()
        outputs = self.program(batch)
        self._end.record()
        self._end.synchronize()
        return outputs[0], (outputs[1] if len(outputs) > 1 else None), self._start.elapsed_time(self._end)


def run_cuda(args: argparse.Namespace) -> list[dict]:
    if not torch.cuda.is_available():
        raise SystemExit("benchmark: --device cuda needs an NVIDIA GPU and a CUDA build of torch; "
                         f"this torch {torch.__version__} sees none")
    repeats = args.repeats or 100
    results = []
    for backbone in args.backbones:
        for merge in args.merges:
            for size in args.sizes:
                model, info = model_info(backbone, merge, size)
                for batch in args.batches:
                    frames = [test_frame(size, seed) for seed in range(batch)]
                    for backend in args.backends:
                        row = {**info, "backend": backend, "batch": batch, "timing": "GPU time"}
                        label = f"{backbone}/{merge} {size}px batch {batch} {backend}"
                        try:
                            engine = gpu_engine(backend, model, size, batch)
                        except BackendUnavailable as exc:
                            print(f"[bench] {label}: skipped ({exc})", flush=True)
                            results.append({**row, "skipped": str(exc)})
                            continue
                        print(f"[bench] {label}", flush=True)
                        times = time_interleaved({backend: engine}, frames, args.warmup, {backend: repeats})[backend]
                        row["device"] = engine.device_name
                        if hasattr(engine, "compile_s"):
                            row["compile_s"] = engine.compile_s
                        row.update(summarise(times, batch, info["gflops"], gpu=True))
                        results.append(row)
                        del engine
                        torch.cuda.empty_cache()
    return results


def attention_ratios(results: list[dict]) -> list[dict]:
    """Attention median over max median, per backbone, size, batch and backend."""
    index = {(r["backbone"], r["input_size"], r["batch"], r["backend"], r["merge"]): r
             for r in results if "median_ms" in r and "checkpoint" not in r}
    ratios = []
    for (backbone, size, batch, backend, merge), row in index.items():
        other = index.get((backbone, size, batch, backend, "max"))
        if merge == "attention" and other is not None:
            ratio = row["median_ms"] / other["median_ms"]
            ratios.append({"backbone": backbone, "input_size": size, "batch": batch, "backend": backend,
                           "attention_ms": row["median_ms"], "max_ms": other["median_ms"], "ratio": ratio,
                           "target": RATIO_TARGET, "meets_target": ratio <= RATIO_TARGET})
    return ratios


def format_table(results: list[dict], gpu: bool) -> str:
    if gpu:
        header = ["model", "merge", "size", "batch", "backend", "params M", "GFLOPs/frame", "median ms",
                  "p90 ms", "p99 ms", "fps", "TFLOP/s", "vs 0.30 s demo"]
    else:
        header = ["model", "merge", "scales", "size", "backend", "params M", "GFLOPs", "median ms", "p90 ms",
                  "fps", "vs max"]
        if any("frame_to_labels_median_ms" in row for row in results):
            frames = sorted({row["frame"] for row in results if "frame" in row})
            header.append(f"frame→labels median ms ({', '.join(frames)})")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    max_median = {(r["backbone"], r["input_size"], r["batch"], r["backend"]): r["median_ms"]
                  for r in results if r["merge"] == "max" and "median_ms" in r and "checkpoint" not in r}
    for r in results:
        common = [r.get("checkpoint", r["backbone"]), r["merge"]]
        if "median_ms" not in r:
            lines.append("| " + " | ".join([*common, str(r["input_size"]), str(r["batch"]), r["backend"],
                                            f"skipped: {r['skipped']}"]) + " |")
            continue
        if gpu:
            cells = [*common, str(r["input_size"]), str(r["batch"]), r["backend"], f"{r['params_m']:.1f}",
                     f"{r['gflops']:.1f}", f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                     f"{r['fps']:.0f}", f"{r['tflops']:.1f}", f"{r['speedup_vs_demo']:.0f}×"]
        else:
            reference = max_median.get((r["backbone"], r["input_size"], r["batch"], r["backend"]))
            ratio = f"{r['median_ms'] / reference:.2f}×" if reference else "–"
            cells = [*common, str(len(r["scales"])), str(r["input_size"]), r["backend"], f"{r['params_m']:.1f}",
                     f"{r['gflops']:.1f}", f"{r['median_ms']:.0f}", f"{r['p90_ms']:.0f}", f"{r['fps']:.1f}", ratio]
            if any("frame_to_labels_median_ms" in row for row in results):
                cells.append(f"{r['frame_to_labels_median_ms']:.0f}" if "frame_to_labels_median_ms" in r else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict:
    env = {
        "device": args.device,
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_before": list(os.getloadavg()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if args.device == "cpu":
        env["threads"] = args.threads
    elif torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment(args)
    started = time.perf_counter()
    results = run_cuda(args) if args.device == "cuda" else run_cpu(args)
    ratios = attention_ratios(results)
    env["load_average_after"] = list(os.getloadavg())
    env["seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(format_table(results, gpu=args.device == "cuda"))
    if ratios:
        print()
        for r in ratios:
            verdict = "meets" if r["meets_target"] else "misses"
            print(f"attention/max, {r['backbone']} at {r['input_size']} px ({r['backend']}, batch {r['batch']}): "
                  f"{r['attention_ms']:.1f} / {r['max_ms']:.1f} ms = {r['ratio']:.3f} "
                  f"({verdict} the ≤ {RATIO_TARGET:.2f} target)")
    load = env["load_average_before"]
    print(f"\n{args.device}: {env.get('gpu', env['cpu'])}, torch {env['torch']}, "
          f"load average before {load[0]:.2f}, after {env['load_average_after'][0]:.2f}, {env['seconds']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "results": results, "attention_vs_max": ratios},
                                        indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
