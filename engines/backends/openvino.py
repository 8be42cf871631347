"""OpenVINO on the CPU: the same network converted from PyTorch, about twice as fast as eager torch.

Precision is pinned to f32 so labels match the PyTorch model exactly; OpenVINO would
otherwise pick bf16 on CPUs that support it.

Converting from PyTorch traces the network, which takes seconds per model; the converted
program (OpenVINO IR, f32) is cached under ``<engine cache>/openvino/`` keyed by the model's
weights and architecture, the input size, the OpenVINO and torch versions and the source of
``engines/`` (so an edited forward pass is converted afresh), so a restart
loads it instead. A cache entry that cannot be read is converted again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import settings
from ..optimize import fuse_conv_bn
from ..predict import class_scores
from .base import BackendUnavailable, Engine, log
from .cpu import set_cpu_threads
from .engine_cache import default_cache_dir, model_sha256

IR_FORMAT = 1
IR_FILE = "model.xml"


def _import_openvino():
    """Import OpenVINO with its model converter's usage telemetry off.

    The converter reports each conversion to Google Analytics through ``openvino_telemetry``
    from a forked process; PartCam sends nothing off the machine, and a fork inside the
    eventlet server duplicates it. Without that package the converter uses its own no-op stub.
    """
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # makes its import fail, selecting the stub
    import openvino

    return openvino


class _TupleOutputs(torch.nn.Module):
    """OpenVINO's converter wants tensors out, not a dict."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        if out["attention"] is None:
            return (class_scores(out),)
        return class_scores(out), out["attention"]


def _network_code_digest() -> str:
    """A hash of the network's source files: a changed forward pass must not reuse an old program."""
    digest = hashlib.sha256()
    root = settings.engines_dir()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ir_cache_folder(model: torch.nn.Module, input_size: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted program for this model and input size lives (whether or not it exists yet)."""
    import openvino

    key = {"model": model_sha256(model), "input_size": int(input_size), "openvino": openvino.__version__,
           "torch": torch.__version__, "format": IR_FORMAT, "code": _network_code_digest()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    name = f"{model.config.backbone}-{model.config.merge}-{int(input_size)}px-{digest[:16]}"
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "openvino" / name


def _save_ir(ov, converted, folder: Path) -> None:
    """Write the IR into a temporary sibling folder, then rename it into place, so readers never see half a file."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + "."))
    try:
        # compress_to_fp16=False: the saved weights stay f32, so cached and fresh engines give identical labels.
        ov.save_model(converted, str(staging / IR_FILE), compress_to_fp16=False)
        for path in staging.iterdir():
            path.chmod(0o644)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


PRECISIONS = ("auto", "f32", "bf16")


def _choose_precision(core, precision: str) -> str:
    """The inference precision to compile with (see ``OpenVinoEngine``)."""
    if precision == "auto":
        precision = os.environ.get("PARTCAM_OPENVINO_PRECISION", "auto")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "auto":
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        precision = "bf16" if "BF16" in capabilities else "f32"
    return precision


class OpenVinoEngine(Engine):
    name = "openvino"
    timing_label = "CPU time"
    batching_helps = False
    overlap_safe = True  # every call returns new tensors

    def __init__(self, model: torch.nn.Module, input_size: int, threads: int | None = None, *,
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 precision: str = "auto") -> None:
        """``precision``: "f32" (labels identical to eager PyTorch), "bf16" (the CPU's bfloat16
        units: about 1.4× faster here, labels agree on about 98.5%), or "auto": bf16 where the CPU
        computes it natively (AMX or AVX-512 BF16), else f32; ``$PARTCAM_OPENVINO_PRECISION``
        overrides "auto"."""
        try:
            ov = _import_openvino()
        except ImportError:
            raise BackendUnavailable("the openvino backend needs the openvino package (pip install openvino)") from None
        self.threads = set_cpu_threads(threads)
        super().__init__(model.float().eval(), input_size, torch.device("cpu"))
        started = time.perf_counter()
        core = ov.Core()
        self.cache_folder = ir_cache_folder(self.model, self.input_size, cache_dir) if use_cache else None
        self.loaded_from_cache = False
        converted = None
        if self.cache_folder is not None and (self.cache_folder / IR_FILE).is_file():
            try:
                converted = core.read_model(str(self.cache_folder / IR_FILE))
                self.loaded_from_cache = True
            except Exception as exc:  # a damaged cache entry must not stop the server: convert again
                log.warning("OpenVINO cache entry %s is unreadable (%s); converting again", self.cache_folder, exc)
        if converted is None:
            converted = self._convert(ov)
            if self.cache_folder is not None:
                try:
                    _save_ir(ov, converted, self.cache_folder)
                except OSError as exc:  # a read-only cache only costs start-up time
                    log.warning("could not cache the OpenVINO program in %s (%s)", self.cache_folder, exc)
        self.precision = _choose_precision(core, precision)
        self.snippets = True
        settings = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": self.precision}
        try:
            compiled = core.compile_model(converted, "CPU", settings)
        except RuntimeError as exc:
            # OpenVINO's fused-kernel generator ("snippets") runs out of vector registers for the
            # pose guide's subgraphs on CPUs without AVX-512 (16 registers instead of 32). The same
            # program compiles without it, a little slower, rather than not at all.
            if "snippet" not in str(exc):
                raise
            log.warning("OpenVINO could not fuse kernels on this CPU (%s); compiling without snippets",
                        str(exc).strip().splitlines()[-1])
            compiled = core.compile_model(converted, "CPU", {**settings, "SNIPPETS_MODE": "DISABLE"})
            self.snippets = False
        self._outputs = compiled.outputs
        self._request = compiled.create_infer_request()
        log.info("OpenVINO engine ready in %.1f s (%d threads, %s, %s)", time.perf_counter() - started,
                 self.threads, self.precision, "cached program" if self.loaded_from_cache else "converted from PyTorch")

    def _convert(self, ov):
        example = torch.zeros(1, 3, self.input_size, self.input_size)
        with torch.no_grad(), warnings.catch_warnings():
            # Tracing fixes every shape; that is intended, as the program is compiled per input size.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return ov.convert_model(_TupleOutputs(fuse_conv_bn(self.model)), example_input=example,
                                    input=[(1, 3, self.input_size, self.input_size)])

    @property
    def device_name(self) -> str:
        return f"{platform.processor() or platform.machine()} CPU, {self.threads} threads (OpenVINO)"

    def _forward(self, batch):
        logits, attention, total_ms = [], [], 0.0
        for frame in batch.numpy():  # compiled for batch 1: the CPU gains nothing from batching
            start = time.perf_counter()
            result = self._request.infer({0: np.ascontiguousarray(frame[None])})
            total_ms += (time.perf_counter() - start) * 1000.0
            logits.append(torch.from_numpy(np.array(result[self._outputs[0]])))
            if len(self._outputs) > 1:
                attention.append(torch.from_numpy(np.array(result[self._outputs[1]])))
        return torch.cat(logits), (torch.cat(attention) if attention else None), total_ms
