#!/usr/bin/env python3
"""Median latency of MoveNet MultiPose in PyTorch (network + decoding), eager and OpenVINO, on the CPU.

    .venv/bin/python scripts/bench_movenet.py [--sizes 256 320] [--threads 2] [--runs 50] [--no-openvino]

Input is a letterboxed real photo (skimage's astronaut) as NCHW float 0..255, batch 1. OpenVINO
converts the whole module (decoding included) from PyTorch with f32 precision, as
engines/backends/openvino.py does, and is checked against eager on the same input.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from engines.pose import letterbox, load_movenet, movenet_layout


class _Layout(torch.nn.Module):
    """One (B, 6, 56) tensor out, which OpenVINO's converter prefers to a dict."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return movenet_layout(self.model(x))


def median_ms(fn, x, runs: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 320])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--no-openvino", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from skimage import data

    model = _Layout(load_movenet()).eval()
    rows = []
    for size in args.sizes:
        image, _ = letterbox(data.astronaut(), size)
        x = torch.from_numpy(image)[None].permute(0, 3, 1, 2).float().contiguous()
        with torch.inference_mode():
            want = model(x).numpy()
            net_ms = median_ms(lambda t: model.model.heads_forward(t), x, args.runs)
            eager_ms = median_ms(model, x, args.runs)
            model_cl = model.to(memory_format=torch.channels_last)
            cl_ms = median_ms(model_cl, x.contiguous(memory_format=torch.channels_last), args.runs)
            model.to(memory_format=torch.contiguous_format)
        rows.append((size, "eager (network only)", net_ms, "-"))
        rows.append((size, "eager", eager_ms, "-"))
        rows.append((size, "eager channels_last", cl_ms, "-"))
        if not args.no_openvino:
            if "openvino_telemetry" not in sys.modules:
                sys.modules["openvino_telemetry"] = None  # no usage reports from the converter
            import openvino as ov

            t0 = time.perf_counter()
            with torch.no_grad():
                converted = ov.convert_model(model, example_input=x, input=[tuple(x.shape)])
            compiled = ov.Core().compile_model(converted, "CPU", {
                "INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32"})
            convert_s = time.perf_counter() - t0
            request = compiled.create_infer_request()
            xn = x.numpy()

            def run(t, request=request):
                return request.infer({0: t})[0]

            got = run(xn)
            kp_got, kp_want = got[0, :, :51].reshape(6, 17, 3), want[0, :, :51].reshape(6, 17, 3)
            kp_err = float(np.abs(kp_got[..., :2] - kp_want[..., :2]).max() * size)
            score_err = float(np.abs(got[0, :, 55] - want[0, :, 55]).max())
            ov_ms = median_ms(run, xn, args.runs)
            rows.append((size, f"openvino {ov.__version__.split('-')[0]} f32 (convert {convert_s:.0f} s)", ov_ms,
                         f"max kp {kp_err:.1e} px, person score {score_err:.1e}"))
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.runs} runs, batch 1")
    for size, what, ms, note in rows:
        print(f"{size}x{size} | {what:<40} | {ms:7.1f} ms | vs eager: {note}")


if __name__ == "__main__":
    main()
