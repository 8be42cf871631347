"""TensorRT through torch-tensorrt: programs compiled ahead of time by scripts/build_engine.py.

Each program is compiled for one static shape (batch × 3 × size × size), which is what
lets TensorRT pick its fastest kernels and fuse the whole multi-scale graph. The engine
loads every build that matches this model, input size and precision, and runs each call
on the smallest build that holds the frames (padding the rest), so a server that built
batches 1 and 4 serves one phone or four without recompiling.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..optimize import fuse_conv_bn
from ..predict import class_scores
from .base import BackendUnavailable, Engine, log
from .engine_cache import (
    PRECISIONS,
    PROGRAM_FILE,
    EngineKey,
    built_batches,
    check_key,
    default_cache_dir,
    make_key,
    read_key,
    rebuild_command,
)

_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class TupleOutputs(torch.nn.Module):
    """The network with tensors out instead of a dict: (logits,) or (logits, attention).

    Export and TensorRT want flat tensor outputs; the attention output only exists for
    ``merge="attention"``, so the arity is fixed at construction.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.has_attention = model.config.merge == "attention"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        if self.has_attention:
            return class_scores(out), out["attention"]
        return (class_scores(out),)


def import_torch_tensorrt():
    """Import torch-tensorrt or raise BackendUnavailable saying what is missing."""
    try:
        import torch_tensorrt
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "torch_tensorrt"
        raise BackendUnavailable(
            f"the tensorrt backend needs torch-tensorrt and the TensorRT libraries ({missing} is not importable); "
            "on an NVIDIA server: pip install -r requirements-gpu.txt"
        ) from None
    except Exception as exc:
        # The wheel is there but its TensorRT libraries do not load: torch-tensorrt then raises a
        # plain Exception (or an OSError from the loader), which must not crash ``auto``.
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BackendUnavailable(f"torch-tensorrt is installed but cannot load its TensorRT libraries "
                                 f"({type(exc).__name__}: {first_line})") from None
    return torch_tensorrt


def missing_requirements() -> list[str]:
    """What this machine lacks for TensorRT, in words (empty when it has everything)."""
    missing = []
    if not torch.cuda.is_available():
        build = "CPU-only" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        missing.append(f"an NVIDIA GPU visible to torch (this torch {torch.__version__} is {build} and sees none)")
    if importlib.util.find_spec("torch_tensorrt") is None:
        missing.append("torch-tensorrt with the TensorRT libraries (pip install -r requirements-gpu.txt)")
    return missing


def require_tensorrt() -> None:
    """Raise one BackendUnavailable naming everything TensorRT lacks here."""
    missing = missing_requirements()
    if missing:
        raise BackendUnavailable(f"the tensorrt backend needs {' and '.join(missing)}")
    import_torch_tensorrt()


def _tensorrt_major() -> int:
    try:
        import tensorrt

        return int(tensorrt.__version__.split(".")[0])
    except (ImportError, ValueError, AttributeError):
        return 0


def cuda_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` with its index: torch-tensorrt turns a bare ``cuda`` into ``cuda:None`` and fails."""
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        raise ValueError(f"TensorRT runs on CUDA devices, not {device}")
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def compile_program(model: torch.nn.Module, input_size: int, batch: int, precision: str,
                    device: torch.device | str | None = None):
    """Compile ``model`` with torch-tensorrt's dynamo path for one static input shape.

    fp16 is expressed in the graph itself (fp16 weights and input): TensorRT 11, which
    torch-tensorrt 2.13 uses, only builds strongly typed networks, so the old
    ``enabled_precisions`` switch is used only where an older TensorRT still needs it.
    Returns (compiled module, example input). A model whose checkpoint records Caffe's resizing
    is compiled with it (see engines/importers/caffe_forward.py).
    """
    from ..importers.caffe_forward import with_recorded_resampling

    torch_tensorrt = import_torch_tensorrt()
    dtype = _DTYPES[precision]
    device = cuda_device(device)
    network = with_recorded_resampling(model)
    module = TupleOutputs(fuse_conv_bn(network)).to(device=device, dtype=dtype).eval()
    example = torch.randn(batch, 3, input_size, input_size, device=device, dtype=dtype)
    with torch.no_grad():
        exported = torch.export.export(module, (example,))
    settings: dict = {
        "arg_inputs": [torch_tensorrt.Input(shape=tuple(example.shape), dtype=dtype)],
        "device": device,
        "min_block_size": 1,
        "require_full_compilation": False,
    }
    parameters = inspect.signature(torch_tensorrt.dynamo.compile).parameters
    if "use_explicit_typing" in parameters:
        settings["use_explicit_typing"] = True
    elif precision == "fp16" and _tensorrt_major() < 11:
        settings["enabled_precisions"] = {torch.half}
    settings = {k: v for k, v in settings.items() if k in parameters or "kwargs" in parameters}
    compiled = torch_tensorrt.dynamo.compile(exported, **settings)
    return compiled, example


def save_program(compiled, folder: str | os.PathLike, example: torch.Tensor) -> Path:
    """Save a compiled program as an exported program (needs torch-tensorrt's C++ runtime to load)."""
    torch_tensorrt = import_torch_tensorrt()
    path = Path(folder) / PROGRAM_FILE
    torch_tensorrt.save(compiled, str(path), output_format="exported_program", arg_inputs=[example])
    return path


def load_program(folder: str | os.PathLike) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """Load a saved program as a callable module."""
    torch_tensorrt = import_torch_tensorrt()
    loaded = torch_tensorrt.load(str(Path(folder) / PROGRAM_FILE))
    return loaded.module() if hasattr(loaded, "module") else loaded


def _engine_folder(engine_path: str | os.PathLike) -> Path:
    path = Path(engine_path)
    return path.parent if path.name == PROGRAM_FILE else path


def plan_chunks(frames: int, batches: list[int]) -> list[tuple[int, int]]:
    """Split ``frames`` into (frames in chunk, compiled batch to run it on) pairs.

    Each chunk runs on the smallest compiled batch that holds it; beyond the largest, full
    chunks of the largest batch. Padding is the price of static shapes, kept minimal.
    """
    if frames < 1 or not batches:
        return []
    batches = sorted(set(batches))
    plan, left = [], frames
    while left > 0:
        fitting = [b for b in batches if b >= left]
        run = fitting[0] if fitting else batches[-1]
        take = min(left, run)
        plan.append((take, run))
        left -= take
    return plan


def find_builds(expected: EngineKey, *, engine_path: str | os.PathLike | None = None, batch: int | None = None,
                cache_dir: str | os.PathLike | None = None, checkpoint: str = "CHECKPOINT"
                ) -> list[tuple[Path, EngineKey]]:
    """The builds to load for ``expected``, each checked against its key.json; stale ones are refused.

    ``checkpoint`` is the path put into the rebuild command of the error messages.
    """
    if engine_path is not None:
        folder = _engine_folder(engine_path)
        if not (folder / PROGRAM_FILE).is_file():
            raise BackendUnavailable(f"no TensorRT program at {folder / PROGRAM_FILE}; "
                                     f"build one with: {rebuild_command(expected, checkpoint)}")
        found = read_key(folder)
        wanted = expected if batch else dataclasses.replace(expected, batch=found.batch)
        check_key(wanted, found, folder, checkpoint)
        return [(folder, found)]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    batches = [batch] if batch else built_batches(root, expected)
    builds = []
    for size in batches:
        wanted = dataclasses.replace(expected, batch=size)
        folder = root / wanted.folder_name
        if not (folder / PROGRAM_FILE).is_file():
            continue
        check_key(wanted, read_key(folder), folder, checkpoint)
        builds.append((folder, wanted))
    if not builds:
        raise BackendUnavailable(
            f"no TensorRT engine built for this {expected.backbone}/{expected.merge} checkpoint at "
            f"{expected.input_size} px, {expected.precision}, in {root}; build one with: "
            f"{rebuild_command(expected, checkpoint)}")
    return builds


class TensorRTEngine(Engine):
    """Runs programs built by scripts/build_engine.py; CNN time comes from CUDA events."""

    name = "tensorrt"
    timing_label = "GPU time"
    batching_helps = True

    def __init__(self, model: torch.nn.Module, input_size: int, *, engine_path: str | os.PathLike | None = None,
                 precision: str = "fp16", batch: int | None = None, cache_dir: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, checkpoint: str | os.PathLike | None = None) -> None:
        require_tensorrt()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown TensorRT precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.precision = precision
        self.dtype = _DTYPES[precision]
        device = cuda_device(device)
        super().__init__(model, input_size, device)
        self._programs: dict[int, Callable] = {}
        started = time.perf_counter()
        expected = make_key(model, input_size=self.input_size, batch=batch or 1, precision=self.precision,
                            gpu=torch.cuda.get_device_name(self.device))
        builds = find_builds(expected, engine_path=engine_path, batch=batch, cache_dir=cache_dir,
                             checkpoint=str(checkpoint) if checkpoint is not None else "CHECKPOINT")
        with torch.cuda.device(self.device):
            for folder, key in builds:
                self._programs[key.batch] = load_program(folder)
                log.info("TensorRT program loaded: %s", folder)
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
        log.info("TensorRT engine on %s, %s, batches %s, ready in %.1f s", self.device_name, precision,
                 sorted(self._programs), time.perf_counter() - started)

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device)

    def describe(self) -> dict:
        info = super().describe()
        info.update(precision=self.precision, batches=sorted(self._programs))
        return info

    def _forward(self, batch):
        # The serving thread's current device is 0: events and programs must run on this engine's.
        with torch.cuda.device(self.device):
            batch = batch.to(self.device, self.dtype).contiguous()
            logits, attention, offset = [], [], 0
            self._start.record()
            for take, run in plan_chunks(batch.shape[0], list(self._programs)):
                chunk = batch[offset:offset + take]
                if take < run:  # static shapes: pad with blank frames, drop their outputs below
                    chunk = torch.cat([chunk, chunk.new_zeros((run - take, *chunk.shape[1:]))])
                outputs = self._programs[run](chunk)
                logits.append(outputs[0][:take])
                if len(outputs) > 1:
                    attention.append(outputs[1][:take])
                offset += take
            self._end.record()
            self._end.synchronize()
            cnn_ms = self._start.elapsed_time(self._end)
        return torch.cat(logits), (torch.cat(attention) if attention else None), cnn_ms
