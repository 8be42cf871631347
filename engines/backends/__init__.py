"""Runtimes. ``create_engine`` picks one by name; ``auto`` takes the fastest that can run here."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from .base import BackendUnavailable, Engine, Prediction, log
from .cpu import CpuEngine
from .cuda import CudaEngine

BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "cuda", "openvino", "cpu")


def _tensorrt_engine(model, input_size: int, *, engine_path: str | os.PathLike | None, **kwargs) -> Engine:
    # Imported lazily: torch-tensorrt exists only on GPU servers.
    from .tensorrt import TensorRTEngine

    return TensorRTEngine(model, input_size, engine_path=engine_path, **kwargs)


def _openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _log_auto_choice(choice: str, reasons: list[str], what: str) -> None:
    """Log what ``auto`` picked for this engine and why.

    Per engine, not per process: a server builds one engine per task, and a task whose
    TensorRT build is missing must say so even when another task's was found. A GPU
    server that falls back from TensorRT logs a warning.
    """
    level = logging.WARNING if choice != "tensorrt" and any(r.startswith("tensorrt:") for r in reasons) \
        else logging.INFO
    log.log(level, "engine auto-selected for %s: %s%s", what, choice, f" ({'; '.join(reasons)})" if reasons else "")


def create_engine(
    path_or_model: str | os.PathLike | torch.nn.Module,
    backend: str = "auto",
    input_size: int | None = None,
    *,
    task: str | None = None,
    threads: int | None = None,
    precision: str = "fp16",
    cpu_precision: str = "auto",
    engine_path: str | os.PathLike | None = None,
) -> Engine:
    """Load a checkpoint (or take a built model) and wrap it in a runtime.

    ``backend`` is "cpu" (eager PyTorch), "openvino" (CPU), "cuda", "tensorrt" or "auto"
    (tensorrt, then cuda, then openvino, then cpu).
    A backend that cannot run here raises ``BackendUnavailable`` naming what is missing.
    ``precision`` is for GPU runtimes; ``cpu_precision`` for OpenVINO ("auto", "f32", "bf16").
    """
    if backend not in BACKENDS:
        raise KeyError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    checkpoint: str | None = None
    if isinstance(path_or_model, (str, os.PathLike, Path)):
        model = load_checkpoint(path_or_model, task=task)
        checkpoint = str(path_or_model)
    else:
        model = path_or_model
    if input_size is None:
        input_size = model.metadata.input_size if model.metadata is not None else 321

    chosen_automatically = backend == "auto"
    if backend == "auto":
        reasons: list[str] = []
        what = f"{model.config.task} ({checkpoint or 'model in memory'})"
        if torch.cuda.is_available():
            # tensorrt only where a matching engine was built; otherwise say why and use cuda.
            try:
                engine = _tensorrt_engine(model, input_size, engine_path=engine_path, precision=precision,
                                          checkpoint=checkpoint)
                _log_auto_choice("tensorrt", reasons, what)
                return engine
            except (BackendUnavailable, ValueError) as exc:
                reasons.append(f"tensorrt: {exc}")
            backend = "cuda"
        else:
            reasons.append("no CUDA GPU visible")
            backend = "openvino" if _openvino_installed() else "cpu"
            if backend == "cpu":
                reasons.append("openvino not installed")
        _log_auto_choice(backend, reasons, what)

    if backend == "openvino":
        from .openvino import OpenVinoEngine

        try:
            return OpenVinoEngine(model, input_size, threads=threads, precision=cpu_precision)
        except RuntimeError as exc:  # BackendUnavailable included
            if not chosen_automatically:
                raise
            # A runtime that cannot compile this model on this CPU must not stop the demo: eager
            # PyTorch gives the same labels, slower.
            log.warning("auto: openvino failed for %s (%s); using cpu", what, str(exc).strip().splitlines()[-1])
            backend = "cpu"
    if backend == "cpu":
        return CpuEngine(model, input_size, threads=threads)
    if backend == "cuda":
        return CudaEngine(model, input_size, precision=precision)
    return _tensorrt_engine(model, input_size, engine_path=engine_path, precision=precision, checkpoint=checkpoint)


__all__ = ["BACKENDS", "BackendUnavailable", "CpuEngine", "CudaEngine", "Engine", "Prediction", "create_engine"]
