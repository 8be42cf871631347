"""``python -m server``: load the models, print where to point the phone, and serve.

HTTPS on every address by default (phones only give a camera to secure pages); ``--http``
serves plain HTTP, which a browser on this machine (http://localhost) may still use.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import warnings

ASYNC_MODES = ("eventlet", "threading")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description="PartCam live human-parsing demo server.")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8443 with HTTPS, 8080 with --http)")
    parser.add_argument("--engine", default="auto", choices=("auto", "cpu", "openvino", "cuda", "tensorrt"),
                        help="runtime; auto takes tensorrt, cuda, openvino, then cpu")
    parser.add_argument("--parts", metavar="CKPT", help="parts checkpoint (default models/parts.safetensors)")
    parser.add_argument("--clothes", metavar="CKPT", help="clothes checkpoint (default models/clothes.safetensors)")
    parser.add_argument("--input-size", type=int, default=None, help="network input size (default: the model's)")
    parser.add_argument("--http", action="store_true", help="plain HTTP (phones get no camera; for localhost)")
    parser.add_argument("--cert", help="TLS certificate (PEM); default: a cached self-signed one")
    parser.add_argument("--key", help="TLS private key (PEM) for --cert")
    parser.add_argument("--token", help="refuse Socket.IO connections that do not present this token")
    parser.add_argument("--async-mode", default="eventlet", choices=ASYNC_MODES, help="server concurrency model")
    parser.add_argument("--max-frame-mb", type=float, default=4.0, help="largest accepted frame in MB (default 4)")
    parser.add_argument("--log-requests", action="store_true", help="log every HTTP request")
    scale = parser.add_argument_group("several processes (docs/scale-out.md)")
    scale.add_argument("--workers", type=int, metavar="N",
                       help="run N server processes behind a sticky HTTPS load balancer (HAProxy) on --port, "
                            "sharing Redis; one per GPU on GPU servers, the CPU's threads split between them")
    scale.add_argument("--redis", metavar="URL",
                       help="share this Redis (redis://host:6379/0) with the other server processes; with "
                            "--workers, use it instead of starting a private redis-server")
    scale.add_argument("--worker-name", metavar="NAME", help="this process's name in results and /healthz "
                                                             "(default host:port)")
    scale.add_argument("--threads", type=int, metavar="T", help="CPU threads for the engines (default: all cores)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be 1 or more")
    if args.workers is not None and args.worker_name:
        parser.error("--worker-name names one process; --workers names its own")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be 1 or more")
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    if args.port is None:
        args.port = 8080 if args.http else 8443
    return args


def page_urls(scheme: str, host: str, port: int, token: str | None) -> list[str]:
    """The URLs to print: each LAN address when listening on all of them, else the given host."""
    from urllib.parse import quote

    from .certs import lan_addresses

    hosts = (lan_addresses() or ["127.0.0.1"]) if host in ("0.0.0.0", "") else [host]
    if scheme == "http":
        hosts = ["localhost", *hosts]
    suffix = f"/?token={quote(token)}" if token else "/"
    return [f"{scheme}://{h}:{port}{suffix}" for h in hosts]


def print_qr(url: str) -> None:
    import qrcode

    qr = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(url)
    qr.print_ascii(out=sys.stdout, invert=True)


def print_phone_urls(scheme: str, urls: list[str]) -> None:
    """Where to point the phone: each URL, the certificate or HTTP caveat, and a QR code."""
    print("\nOpen on a phone on the same Wi-Fi:")
    for url in urls:
        print(f"  {url}")
    if scheme == "https":
        print("  (the certificate is self-signed: accept the browser's warning once)")
    else:
        print("  (plain HTTP: only http://localhost gets a camera; drop --http for phones)")
    print_qr(urls[1] if scheme == "http" and len(urls) > 1 else urls[0])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.workers is not None:
        from .scaleout import supervise  # a plain process: no eventlet, no torch

        raise SystemExit(supervise(args))
    if args.async_mode == "eventlet":
        _eventlet().monkey_patch()
        # Under eventlet every Python thread is a green thread on the hub's OS thread, so a library
        # that forks from "a thread" (OpenVINO's converter sends telemetry through multiprocessing)
        # forks the whole running server: the copy serves the same sockets and swallows frames
        # until it exits. A forked copy must never run; exec-based subprocesses are unaffected.
        os.register_at_fork(after_in_child=lambda: os._exit(0))  # before anything else opens sockets or threads
        from .eventlet_fixes import speed_up_websockets

        speed_up_websockets()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from .app import ServerSettings, create_server
    from .workers import default_worker_name, redact_url

    settings = ServerSettings(engine=args.engine, parts=args.parts, clothes=args.clothes, input_size=args.input_size,
                              token=args.token, async_mode=args.async_mode,
                              max_frame_bytes=int(args.max_frame_mb * 1024 * 1024), redis=args.redis,
                              worker=args.worker_name or default_worker_name(args.port), threads=args.threads)
    server = create_server(settings)
    cert = key = None
    if not args.http:
        if args.cert:
            cert, key = args.cert, args.key
        else:
            from .certs import ensure_certificate

            cert, key = map(str, ensure_certificate())
    scheme = "http" if args.http else "https"
    urls = page_urls(scheme, args.host, args.port, args.token)
    if args.redis:  # one of several processes: phones reach it through the balancer, not these URLs
        for task, engine in server.engines.items():
            print(f"{task}: {engine.name} on {engine.device_name}, input {engine.input_size} px", flush=True)
        print(f"worker {server.worker} serving on {scheme}://{args.host}:{args.port}, sharing "
              f"{redact_url(args.redis)}", flush=True)
        serve(server.app, args, cert, key)
        return

    untrained = [task for task, engine in server.engines.items() if not engine.trained]
    print("\nPartCam is starting.", flush=True)
    if untrained:
        print(f"  NOTE: the {' and '.join(untrained)} model(s) are UNTRAINED (random weights): overlays are noise.")
    for task, engine in server.engines.items():
        print(f"  {task}: {engine.name} on {engine.device_name}, input {engine.input_size} px")
    print_phone_urls(scheme, urls)
    sys.stdout.flush()

    serve(server.app, args, cert, key)


def serve(app, args: argparse.Namespace, cert: str | None, key: str | None) -> None:
    if args.async_mode == "eventlet":
        serve_eventlet(app, args.host, args.port, cert, key, args.log_requests)
    else:
        serve_threading(app, args.host, args.port, cert, key)


def _eventlet():
    """eventlet, without its deprecation notice: it is the chosen default, and the mode is a setting."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
        import eventlet
    return eventlet


def make_listener(host: str, port: int, cert: str | None = None, key: str | None = None):
    """An eventlet listening socket with TCP_NODELAY, wrapped in TLS when a certificate is given."""
    listener = _eventlet().listen((host, port))
    # Without this each binary Socket.IO message waits ~40 ms for Nagle + delayed ACK;
    # on Linux accepted connections inherit the option from the listening socket.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if cert:
        from eventlet.green import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        listener = context.wrap_socket(listener, server_side=True)
    return listener


def serve_eventlet(app, host: str, port: int, cert: str | None, key: str | None, log_requests: bool) -> None:
    _eventlet()
    import eventlet.wsgi

    eventlet.wsgi.server(make_listener(host, port, cert, key), app, log_output=log_requests, socket_timeout=60)


def serve_threading(app, host: str, port: int, cert: str | None, key: str | None) -> None:
    from werkzeug.serving import make_server

    server = make_server(host, port, app, threaded=True, ssl_context=(cert, key) if cert else None)
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.serve_forever()


if __name__ == "__main__":
    main()
