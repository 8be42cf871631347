#!/usr/bin/env python
"""Load test for the PartCam server: N simulated phones on loopback, each sending 640×480 JPEGs
as fast as its results come back (one or two frames in flight), for a fixed time.

    python scripts/loadtest.py --clients 4 --seconds 60        # starts its own server (CPU default model)
    python scripts/loadtest.py --form labels --in-flight 2      # the page's way: label PNGs, two in flight
    python scripts/loadtest.py --idle 200                       # 200 idle connections besides the phone
    python scripts/loadtest.py --stalled 1                      # plus a phone that never reads its results
    python scripts/loadtest.py --clients 4 --seconds 600 --rss-every 10   # a soak run
    python scripts/loadtest.py --url http://127.0.0.1:8080 --server-pid 1234
    python scripts/loadtest.py --balancer --workers 1 2 --clients 4   # python -m server --workers N, each N in turn

With ``--balancer`` the phones go through the HTTPS load balancer of ``python -m server --workers N``
(or the one at ``--url``), and the table gives the aggregate fps and the frames each worker served.

Prints per-client fps, round trip p50/p99, CNN ms, queue ms, server overhead
(server_ms − cnn_ms − waiting: decode, preprocessing, colouring, encoding, hand-offs), how busy
the engine was, bytes per result, dropped frames, errors, the server's RSS, and a table of where
each frame's time went, step by step.
"""

from __future__ import annotations

import argparse
import io
import json
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
    results: list[dict] = field(default_factory=list)  # each with an added "rtt_ms" and "bytes"
    errors: list[dict] = field(default_factory=list)
    timeouts: int = 0
    replaced: int = 0  # frames in flight that a newer frame replaced on the server


def run_client(url: str, token: str | None, frames: list[bytes], task: str, view: str, form: str, in_flight: int,
               warmup_end: float, stop_at: float, stats: ClientStats, transport: str = "websocket") -> None:
    """One phone: keeps up to ``in_flight`` frames on their way; a result answers its frame and
    retires older ones still in flight (the server kept only the latest)."""
    import requests  # installed with python-socketio's client

    http = requests.Session()
    http.verify = False  # the server's self-signed certificate, on loopback
    http.trust_env = False  # else a CA bundle named in the environment turns verification back on
    client = socketio.Client(reconnection=False, http_session=http)
    changed = threading.Condition()
    outstanding: dict[int, tuple[float, float]] = {}  # id → (perf_counter, monotonic) when sent

    def record(message: dict, is_error: bool) -> None:
        now = time.perf_counter()
        with changed:
            sent = outstanding.pop(message.get("id"), None)
            for older in [i for i in outstanding if i < message.get("id", 0)]:
                del outstanding[older]
                stats.replaced += 1
            changed.notify()
        if sent is None or sent[1] < warmup_end:
            return
        if is_error:
            stats.errors.append(message)
            return
        result = dict(message)
        payload = result.pop("image", None) or result.pop("labels", None) or b""
        result["bytes"] = len(payload)
        result["rtt_ms"] = (now - sent[0]) * 1000.0
        stats.results.append(result)

    client.on("result", lambda message: record(message, False))
    client.on("error", lambda message: record(message, True))
    client.connect(url, transports=[transport], auth={"token": token} if token else None, wait_timeout=30)
    frame_id = 0
    try:
        while time.monotonic() < stop_at:
            with changed:
                if not changed.wait_for(lambda: len(outstanding) < in_flight, timeout=30):
                    stats.timeouts += len(outstanding)
                    outstanding.clear()
                frame_id += 1
                outstanding[frame_id] = (time.perf_counter(), time.monotonic())
            client.emit("frame", {"id": frame_id, "task": task, "view": view, "form": form,
                                  "image": frames[frame_id % len(frames)]})
        with changed:  # let the last answers in, so they are not counted as lost
            changed.wait_for(lambda: not outstanding, timeout=10)
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


def _waits(r: dict) -> float:
    """Time a frame spent waiting (for the worker, then for the engine), not being worked on."""
    return r["queue_ms"] + r["stages"].get("engine_wait_ms", 0.0)


STAGES = (  # (label, how to get it from a result)
    ("queue wait (for the worker)", lambda r: r["queue_ms"]),
    ("prepared, waiting for the engine", lambda r: r["stages"].get("engine_wait_ms", 0.0)),
    ("decode", lambda r: r["stages"]["decode_ms"]),
    ("preprocess", lambda r: r["stages"]["preprocess_ms"]),
    ("engine: CNN", lambda r: r["cnn_ms"]),
    ("engine: runtime call beyond the CNN", lambda r: r["stages"]["forward_ms"] - r["cnn_ms"]),
    ("labels at the frame's size", lambda r: r["stages"]["labels_ms"]),
    ("waiting for the encoding thread", lambda r: r["stages"].get("finish_wait_ms", 0.0)),
    ("colour + encode", lambda r: r["stages"]["encode_ms"]),
    ("hand-offs (dispatcher, worker threads, emit)", lambda r: r["server_ms"] - _waits(r) - sum(
        r["stages"].get(k, 0.0) for k in ("decode_ms", "preprocess_ms", "forward_ms", "labels_ms", "encode_ms",
                                         "finish_wait_ms"))),
    ("server total (receive → emit)", lambda r: r["server_ms"]),
    ("network + client (round trip − server)", lambda r: r["rtt_ms"] - r["server_ms"]),
    ("round trip", lambda r: r["rtt_ms"]),
)


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
    parser.add_argument("--form", default="jpeg", choices=("jpeg", "labels"),
                        help="result form: the overlay JPEG, or the label PNG the page paints itself")
    parser.add_argument("--in-flight", type=int, default=1, choices=(1, 2), help="frames each phone keeps in flight")
    parser.add_argument("--idle", type=int, default=0, help="idle Socket.IO connections held open besides the phones")
    parser.add_argument("--stalled", type=int, default=0,
                        help="phones that send 30 frames/s and never read their results")
    parser.add_argument("--rss-every", type=float, default=0.0, help="sample the server's RSS every N seconds")
    parser.add_argument("--balancer", action="store_true",
                        help="through the load balancer of `python -m server --workers N` (or --url's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], metavar="N",
                        help="with --balancer: worker counts, measured one after the other (e.g. 1 2)")
    parser.add_argument("--transport", default="websocket", choices=("websocket", "polling", "both"),
                        help="with --balancer: the phones' Engine.IO transport (both: alternate)")
    parser.add_argument("--https", action="store_true",
                        help="with --balancer: HTTPS at the balancer (python-socketio's threaded client drops "
                             "WebSocket connections over TLS now and then; browsers do not)")
    args, server_args = parser.parse_known_args()
    if args.balancer:
        run_balancer(args, server_args)
        return

    from server.rawsocket import IdleCrowd, StalledSender

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
            info = json.load(response)
        frames = synthetic_frames()
        rss_idle = rss_mb(pid)
        if args.idle:
            crowd = IdleCrowd(url, args.idle, args.token)
            stack.callback(crowd.close)
            print(f"{args.idle} idle connections open; server RSS {rss_mb(pid)} MB", file=sys.stderr)
        stalled = [StalledSender(url, frames, token=args.token, receive_buffer=64 * 1024)
                   for _ in range(args.stalled)]
        for sender in stalled:
            stack.callback(sender.close)
        start = time.monotonic()
        warmup_end = start + args.warmup
        stop_at = warmup_end + args.seconds
        stats = [ClientStats() for _ in range(args.clients)]
        threads = [threading.Thread(target=run_client, args=(url, args.token, frames, args.task, args.view, args.form,
                                                             args.in_flight, warmup_end, stop_at, s), daemon=True)
                   for s in stats]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, warmup_end - time.monotonic()))
        rss_before = rss_mb(pid)
        samples: list[tuple[float, float | None]] = []
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=args.rss_every or None)
                if args.rss_every:
                    samples.append((time.monotonic() - warmup_end, rss_mb(pid)))
                    break
        rss_after = rss_mb(pid)
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
            health = json.load(response)
        stalled_sent = sum(sender.sent for sender in stalled)

    results = [r for s in stats for r in s.results]
    if not results:
        raise SystemExit(f"no results measured; errors: {[e for s in stats for e in s.errors][:3]}")
    rtt = [r["rtt_ms"] for r in results]
    cnn = [r["cnn_ms"] for r in results]
    queue = [_waits(r) for r in results]
    overhead = [r["server_ms"] - r["cnn_ms"] - _waits(r) for r in results]
    beyond_cnn = [r["rtt_ms"] - r["cnn_ms"] for r in results]
    fps = [len(s.results) / args.seconds for s in stats]
    sizes = [r["bytes"] for r in results]
    busy = sum(cnn) / (args.seconds * 1000.0)  # share of the measured time the engine ran the CNN
    errors = sum(len(s.errors) for s in stats) + sum(s.timeouts for s in stats)
    model = info["tasks"][args.task]["model"]
    load = os.getloadavg()

    def fmt(value: float | None, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:.1f}{unit}"

    extras = ", ".join(x for x in (f"{args.idle} idle connections" if args.idle else "",
                                   f"{args.stalled} stalled sender(s), {stalled_sent} frames sent unread"
                                   if args.stalled else "") if x)
    print(f"\nPartCam load test: {args.clients} client(s), {args.seconds:.0f} s measured after {args.warmup:.0f} s "
          f"warm-up, {args.task}/{args.view}, result form {args.form}, {args.in_flight} in flight, 640×480 JPEG "
          f"frames of {statistics.mean(map(len, frames)) / 1024:.0f} KB{'; ' + extras if extras else ''}")
    print(f"server: {model['engine']} on {info['device']}, input {model['input_size']} px, scales {model['scales']}, "
          f"merge {model['merge']}, trained={model['trained']}; load average at end {load[0]:.2f} {load[1]:.2f}")
    print()
    print("| clients | form | in flight | fps per client (mean, min) | round trip p50 / p99 ms | CNN ms p50 "
          "| waiting ms p50 | server overhead ms p50 / p99 | round trip − CNN ms p50 | engine busy | KB per result p50 "
          "| dropped | errors | RSS MB after warm-up → end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.clients} | {args.form} | {args.in_flight} | {statistics.mean(fps):.1f}, {min(fps):.1f} | "
          f"{percentile(rtt, 50):.1f} / {percentile(rtt, 99):.1f} | {percentile(cnn, 50):.1f} | "
          f"{percentile(queue, 50):.1f} | {percentile(overhead, 50):.1f} / {percentile(overhead, 99):.1f} | "
          f"{percentile(beyond_cnn, 50):.1f} | {busy:.0%} | {percentile(sizes, 50) / 1024:.1f} | "
          f"{sum(r['dropped'] for r in results)} | {errors} | {fmt(rss_before)} → {fmt(rss_after)} "
          f"({'n/a' if rss_before is None or rss_after is None else f'{rss_after - rss_before:+.1f}'}) |")
    print("\n| step | ms p50 | ms p90 | ms p99 |")
    print("|---|---|---|---|")
    for label, get in STAGES:
        values = [get(r) for r in results]
        print(f"| {label} | " + " | ".join(f"{percentile(values, q):.2f}" for q in (50, 90, 99)) + " |")
    print(f"\nframes measured: {len(results)}; replaced in flight: {sum(s.replaced for s in stats)}; "
          f"RSS before any traffic: {fmt(rss_idle, ' MB')}; server health at end: {health}")
    if samples:
        known = [(t, v) for t, v in samples if v is not None]
        if known:
            low, high = min(v for _, v in known), max(v for _, v in known)
            print(f"RSS samples every {args.rss_every:g} s: min {low:.1f} MB, max {high:.1f} MB, "
                  f"first {known[0][1]:.1f} → last {known[-1][1]:.1f} MB ({known[-1][1] - known[0][1]:+.1f})")
    if errors:
        print("errors:", [e for s in stats for e in s.errors][:5], f"timeouts: {sum(s.timeouts for s in stats)}")


def _get_json(url: str) -> dict:
    import ssl

    context = ssl._create_unverified_context()  # the balancer's self-signed certificate, on loopback
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return json.load(response)


def measure_balancer(url: str, args: argparse.Namespace, frames: list[bytes]) -> tuple[list[ClientStats], dict]:
    """The phones through the balancer for the warm-up and the measured time; their stats and /healthz."""
    start = time.monotonic()
    warmup_end = start + args.warmup
    stop_at = warmup_end + args.seconds
    stats = [ClientStats() for _ in range(args.clients)]
    transports = ["websocket", "polling"] if args.transport == "both" else [args.transport]
    threads = [threading.Thread(target=run_client, daemon=True,
                                args=(url, args.token, frames, args.task, args.view, args.form, args.in_flight,
                                      warmup_end, stop_at, s, transports[i % len(transports)]))
               for i, s in enumerate(stats)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stats, _get_json(f"{url}/healthz")


def run_balancer(args: argparse.Namespace, server_args: list[str]) -> None:
    """``--balancer``: the same phones against 1, 2, ... workers behind the balancer, one table."""
    frames = synthetic_frames()
    rows = []
    info: dict = {}
    counts: list[int | None] = [None] if args.url else list(args.workers)
    for count in counts:
        with ExitStack() as stack:
            if args.url:
                url = args.url
            else:
                command = ["--workers", str(count), "--engine", args.engine,
                           *(["--input-size", str(args.input_size)] if args.input_size else []), *server_args]
                log_path = Path(tempfile.mkstemp(prefix=f"partcam-loadtest-{count}w-", suffix=".log")[1])
                print(f"{count} worker(s): supervisor log {log_path}", file=sys.stderr)
                try:
                    url = stack.enter_context(local_server(command, log_path, https=args.https)).url
                except ServerStartError as error:
                    raise SystemExit(str(error)) from None
            info = _get_json(f"{url}/api/info")
            stats, health = measure_balancer(url, args, frames)
        results = [r for s in stats for r in s.results]
        per_worker: dict[str, int] = {}
        for r in results:
            per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + 1
        fps = [len(s.results) / args.seconds for s in stats]
        rtt = [r["rtt_ms"] for r in results]
        cnn = [r["cnn_ms"] for r in results]
        errors = sum(len(s.errors) + s.timeouts for s in stats)
        load = os.getloadavg()[0]
        rows.append((count or len(health.get("workers", {})), fps, per_worker, rtt, cnn, errors, health, load))
    model = info["tasks"][args.task]["model"]
    print(f"\nPartCam load test through the balancer ({'HTTPS' if args.https else 'HTTP'}): {args.clients} "
          f"client(s) over {args.transport}, "
          f"{args.seconds:.0f} s measured after {args.warmup:.0f} s warm-up, {args.task}/{args.view}, result form "
          f"{args.form}, {args.in_flight} in flight, 640×480 JPEG frames; {model['engine']} engines, input "
          f"{model['input_size']} px, trained={model['trained']}; {os.cpu_count()} CPU cores here")
    print()
    print("| workers | aggregate fps | fps per client (mean, min) | frames per worker | round trip p50 / p99 ms "
          "| CNN ms p50 | errors | load average at end |")
    print("|---|---|---|---|---|---|---|---|")
    for count, fps, per_worker, rtt, cnn, errors, _health, load in rows:
        spread = ", ".join(f"{name} {frames_done}" for name, frames_done in sorted(per_worker.items()))
        print(f"| {count} | {sum(fps):.1f} | {statistics.mean(fps):.1f}, {min(fps):.1f} | {spread} | "
              f"{percentile(rtt, 50):.1f} / {percentile(rtt, 99):.1f} | {percentile(cnn, 50):.1f} | {errors} "
              f"| {load:.2f} |")
    for count, *_rest, health, _load in rows:
        print(f"\n{count} worker(s), health at end: " + json.dumps(
            {name: {k: record.get(k) for k in ("frames_done", "errors", "clients")}
             for name, record in health.get("workers", {}).items()}))


if __name__ == "__main__":
    main()
