"""Shared fixtures: real images and tiny real engines, small enough for a 2-core CI machine."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.launch import ServerStartError, local_server


@pytest.fixture(scope="session", autouse=True)
def _private_engine_cache(tmp_path_factory):
    """Converted and compiled programs made by tests go to a temporary folder, not the repository's cache."""
    previous = os.environ.get("PARTCAM_ENGINE_DIR")
    os.environ["PARTCAM_ENGINE_DIR"] = str(tmp_path_factory.mktemp("engine-cache"))
    yield
    if previous is None:
        os.environ.pop("PARTCAM_ENGINE_DIR", None)
    else:
        os.environ["PARTCAM_ENGINE_DIR"] = previous


def make_scene(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    """A camera-like RGB frame: a gradient backdrop, a person-ish figure and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([60 + 120 * x / width, 80 + 90 * y / height, np.full_like(x, 140.0)], axis=-1)
    cx, cy, unit = width * 0.5, height * 0.5, min(width, height) / 8
    head = (x - cx) ** 2 + (y - (cy - 2.6 * unit)) ** 2 < unit**2
    body = (abs(x - cx) < 1.2 * unit) & (abs(y - cy) < 1.6 * unit)
    legs = (abs(abs(x - cx) - 0.6 * unit) < 0.4 * unit) & (y > cy + 1.6 * unit) & (y < cy + 3.8 * unit)
    image[head] = (225, 180, 150)
    image[body] = (200, 40, 50)
    image[legs] = (40, 60, 140)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def jpeg_frame() -> bytes:
    """A real 160×120 JPEG."""
    return encode(make_scene(), quality=85)


@pytest.fixture(scope="session")
def tiny_engines():
    """Both tasks on the default architecture, untrained, at a small input size, on the CPU."""
    from engines import build_model, create_engine
    from engines.tasks import TASKS

    return {task: create_engine(build_model(task=task, backbone="mobilenetv3_large", merge="attention"),
                                backend="cpu", input_size=97) for task in TASKS}


def untrained_checkpoint_args(folder) -> list[str]:
    """``--parts P --clothes C`` for small untrained checkpoints written to ``folder``.

    Server processes in tests use these rather than the shipped models: they load fast, and the
    page and start-up banner must say the model is untrained.
    """
    from engines import build_model, save_checkpoint
    from engines.tasks import TASKS

    args: list[str] = []
    for task in TASKS:
        path = folder / f"{task}.safetensors"
        save_checkpoint(path, build_model(task=task, backbone="mobilenetv3_large"), input_size=97)
        args += [f"--{task}", str(path)]
    return args




@contextmanager
def running_server(folder: Path, *args: str, https: bool = False,
                   env: dict | None = None) -> Iterator[tuple[str, Path]]:
    """``python -m server`` for real on a free loopback port, with small untrained models.

    Yields the base URL and the server's log once ``/healthz`` answers; stops the server after.
    """
    command = ["--engine", "cpu", "--input-size", "97", *untrained_checkpoint_args(folder), *args]
    try:
        with local_server(command, folder / "server.log", https=https, timeout=90, env=env) as server:
            yield server.url, server.log_path
    except ServerStartError as error:
        pytest.fail(str(error))
