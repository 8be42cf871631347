#!/usr/bin/env python
"""Load test for the PartCam server: N simulated phones on loopback, each sending 640×480 JPEGs
as fast as its results come back, for a fixed time.

    python scripts/loadtest.py --clients 4 --seconds 60        # starts its own server (CPU default model)
    python scripts/loadtest.py --url http://127.0.0.1:8080 --server-pid 1234

Prints per-client fps, round trip p50/p99, CNN ms, queue ms, server overhead
(server_ms − cnn_ms − queue_ms: decode, preprocessing, colouring, encoding, hand-offs), dropped
frames, errors, and the server's RSS after warm-up and at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import socketio
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.launch import ServerStartError, local_server


def synthetic_frames(count: int = 4, width: int = 640, height: int = 480, quality: int = 80) -> list[bytes]:
    """Camera-like JPEGs: a lit backdrop, a person-shaped figure, texture and sensor noise."""
    frames = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        image = np.stack([90 + 100 * x / width, 70 + 120 * y / height, 150 - 60 * x / width], axis=-1)
        image += 18 * np.sin(x / 23.0 + seed)[..., None] * np.cos(y / 31.0)[..., None]
        cx = width * (0.4 + 0.05 * seed)
        head = (x - cx) ** 2 + (y - 120) ** 2 < 45**2
        torso = (abs(x - cx) < 70) & (y > 165) & (y < 330)
        legs = (abs(abs(x - cx) - 35) < 25) & (y >= 330)
        arms = (abs(abs(x - cx) - 90) < 18) & (y > 170) & (y < 320)
        image[head] = (220, 175, 145)
        image[torso] = (40 + 40 * seed, 60, 170)
        image[arms] = (210, 165, 135)
        image[legs] = (50, 50, 60)
        image += rng.normal(0, 5, image.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
        frames.append(buffer.getvalue())
    return frames


@dataclass
class ClientStats:
    results: list[dict] = field(default_factory=list)  # each with an added "rtt_ms"
    errors: list[dict] = field(default_factory=list)
    timeouts: int = 0


def run_client(url: str, token: str | None, frames: list[bytes], task: str, view: str, warmup_end: float,
               stop_at: float, stats: ClientStats) -> None:
    client = socketio.Client(reconnection=False)
    answered = threading.Event()
    reply: dict = {}

    @client.on("result")
    def on_result(message):
        reply["result"] = message
        answered.set()

    @client.on("error")
    def on_error(message):
        reply["error"] = message
        answered.set()

    client.connect(url, transports=["websocket"], auth={"token": token} if token else None, wait_timeout=30)
    frame_id = 0
    try:
        while time.monotonic() < stop_at:
            frame_id += 1
            reply.clear()
            answered.clear()
            sent = time.perf_counter()
            sent_mono = time.monotonic()
            client.emit("frame", {"id": frame_id, "task": task, "view": view, "image": frames[frame_id % len(frames)]})
            if not answered.wait(timeout=30):
                stats.timeouts += 1
                continue
            rtt_ms = (time.perf_counter() - sent) * 1000.0
            if sent_mono < warmup_end:
                continue
            if "error" in reply:
                stats.errors.append(reply["error"])
            else:
                result = dict(reply["result"])
                result.pop("image", None)
                result["rtt_ms"] = rtt_ms
                stats.results.append(result)
    finally:
        client.disconnect()


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured time, after the warm-up")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of traffic not counted")
    parser.add_argument("--url", help="an already running server (default: start one with --http on loopback)")
    parser.add_argument("--server-pid", type=int, help="the running server's pid, for RSS with --url")
    parser.add_argument("--token")
    parser.add_argument("--engine", default="auto", help="engine for the server this script starts")
    parser.add_argument("--input-size", type=int, help="network input size for the server this script starts")
    parser.add_argument("--task", default="parts")
    parser.add_argument("--view", default="overlay", choices=("overlay", "attention"))
    args, server_args = parser.parse_known_args()

    with ExitStack() as stack:
        if args.url:
            url, pid = args.url, args.server_pid
        else:
            command = ["--engine", args.engine, *(["--input-size", str(args.input_size)] if args.input_size else []),
                       *server_args]
            log_path = Path(tempfile.mkstemp(prefix="partcam-loadtest-", suffix=".log")[1])
            print(f"server log: {log_path}", file=sys.stderr)
            try:
                server = stack.enter_context(local_server(command, log_path))
            except ServerStartError as error:
                raise SystemExit(str(error)) from None
            url, pid = server.url, server.process.pid
        with urllib.request.urlopen(f"{url}/api/info", timeout=10) as response:
            import json

            info = json.load(response)
        frames = synthetic_frames()
        rss_idle = rss_mb(pid)
        start = time.monotonic()
        warmup_end = start + args.warmup
        stop_at = warmup_end + args.seconds
        stats = [ClientStats() for _ in range(args.clients)]
        threads = [threading.Thread(target=run_client, args=(url, args.token, frames, args.task, args.view,
                                                             warmup_end, stop_at, s), daemon=True) for s in stats]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, warmup_end - time.monotonic()))
        rss_before = rss_mb(pid)
        for thread in threads:
            thread.join()
        rss_after = rss_mb(pid)

    results = [r for s in stats for r in s.results]
    rtt = [r["rtt_ms"] for r in results]
    cnn = [r["cnn_ms"] for r in results]
    queue = [r["queue_ms"] for r in results]
    overhead = [r["server_ms"] - r["cnn_ms"] - r["queue_ms"] for r in results]
    beyond_cnn = [r["rtt_ms"] - r["cnn_ms"] for r in results]
    fps = [len(s.results) / args.seconds for s in stats]
    errors = sum(len(s.errors) for s in stats) + sum(s.timeouts for s in stats)
    model = info["tasks"][args.task]["model"]
    load = os.getloadavg()

    def fmt(value: float | None, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:.1f}{unit}"

    print(f"\nPartCam load test: {args.clients} client(s), {args.seconds:.0f} s measured after {args.warmup:.0f} s "
          f"warm-up, {args.task}/{args.view}, 640×480 JPEG frames of {statistics.mean(map(len, frames)) / 1024:.0f} KB")
    print(f"server: {model['engine']} on {info['device']}, input {model['input_size']} px, scales {model['scales']}, "
          f"merge {model['merge']}, trained={model['trained']}; load average at end {load[0]:.2f} {load[1]:.2f}")
    print()
    print("| clients | fps per client (mean, min) | round trip p50 / p99 ms | CNN ms p50 | queue ms p50 "
          "| server overhead ms p50 / p99 | round trip − CNN ms p50 | dropped | errors | RSS MB after warm-up → end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.clients} | {statistics.mean(fps):.1f}, {min(fps):.1f} | {percentile(rtt, 50):.1f} / "
          f"{percentile(rtt, 99):.1f} | {percentile(cnn, 50):.1f} | {percentile(queue, 50):.1f} | "
          f"{percentile(overhead, 50):.1f} / {percentile(overhead, 99):.1f} | {percentile(beyond_cnn, 50):.1f} | "
          f"{sum(r['dropped'] for r in results)} | {errors} | {fmt(rss_before)} → {fmt(rss_after)} "
          f"({'n/a' if rss_before is None or rss_after is None else f'{rss_after - rss_before:+.1f}'}) |")
    print(f"\nframes measured: {len(results)}; RSS before any traffic: {fmt(rss_idle, ' MB')}")
    if errors:
        print("errors:", [e for s in stats for e in s.errors][:5], f"timeouts: {sum(s.timeouts for s in stats)}")


if __name__ == "__main__":
    main()
