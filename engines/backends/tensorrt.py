"""TensorRT through torch-tensorrt (compiled ahead of time by scripts/build_engine.py)."""

from __future__ import annotations

from .base import BackendUnavailable
from .cuda import require_cuda


class TensorRTEngine:
    def __init__(self, model, input_size: int, *, engine_path=None, precision: str = "fp16") -> None:
        require_cuda()
        try:
            import torch_tensorrt  # noqa: F401
        except ImportError:
            raise BackendUnavailable(
                "the tensorrt backend needs torch-tensorrt (pip install -r requirements-gpu.txt on an NVIDIA server)"
            ) from None
        raise BackendUnavailable("the tensorrt backend is not built yet")
