"""OpenVINO on the CPU: the same network converted from PyTorch, about twice as fast as eager torch.

Precision is pinned to f32 so labels match the PyTorch model exactly; OpenVINO would
otherwise pick bf16 on CPUs that support it.
"""

from __future__ import annotations

import platform
import sys
import time
import warnings

import numpy as np
import torch

from ..optimize import fuse_conv_bn
from .base import BackendUnavailable, Engine, log
from .cpu import set_cpu_threads


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
            return (out["logits"],)
        return out["logits"], out["attention"]


class OpenVinoEngine(Engine):
    name = "openvino"
    timing_label = "CPU time"
    batching_helps = False

    def __init__(self, model: torch.nn.Module, input_size: int, threads: int | None = None) -> None:
        try:
            ov = _import_openvino()
        except ImportError:
            raise BackendUnavailable("the openvino backend needs the openvino package (pip install openvino)") from None
        self.threads = set_cpu_threads(threads)
        super().__init__(model.float().eval(), input_size, torch.device("cpu"))
        started = time.perf_counter()
        example = torch.zeros(1, 3, self.input_size, self.input_size)
        with torch.no_grad(), warnings.catch_warnings():
            # Tracing fixes every shape; that is intended, as the program is compiled per input size.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            converted = ov.convert_model(_TupleOutputs(fuse_conv_bn(self.model)), example_input=example,
                                         input=[(1, 3, self.input_size, self.input_size)])
        compiled = ov.Core().compile_model(converted, "CPU", {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        })
        self._outputs = compiled.outputs
        self._request = compiled.create_infer_request()
        log.info("OpenVINO engine ready in %.1f s (%d threads, f32)", time.perf_counter() - started, self.threads)

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
