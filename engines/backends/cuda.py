"""CUDA: half precision, channels_last, CUDA-graph replay for fixed shapes, CUDA-event timing."""

from __future__ import annotations

import torch

from ..optimize import fuse_conv_bn
from .base import BackendUnavailable, Engine, log

PRECISIONS: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def require_cuda() -> None:
    """Raise BackendUnavailable unless a CUDA GPU is usable from this torch."""
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise BackendUnavailable(
            f"the cuda backend needs an NVIDIA GPU and a CUDA build of torch; this torch {torch.__version__} "
            f"is {build} and sees no GPU"
        )


def _outputs(out: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    return out["logits"], out["attention"]


class CudaEngine(Engine):
    """Runs the model on an NVIDIA GPU.

    The model is a private copy with BatchNorm folded into the convolutions, cast to fp16
    (or bf16, or fp32) and laid out channels_last, which is what the tensor cores want.
    Each (batch, size) shape is captured once as a CUDA graph and replayed, which removes
    the per-kernel launch cost that dominates small networks. CNN time comes from CUDA
    events around the replay, so the readout can honestly say "GPU time".
    """

    name = "cuda"
    timing_label = "GPU time"
    batching_helps = True

    def __init__(self, model: torch.nn.Module, input_size: int, *, precision: str = "fp16",
                 cuda_graphs: bool = True, device: str | torch.device = "cuda") -> None:
        require_cuda()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise BackendUnavailable(f"{torch.cuda.get_device_name(device)} has no bf16 support; use fp16")
        self.dtype = PRECISIONS[precision]
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        device = torch.device(device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        # A private copy: .to() would otherwise turn the caller's model into fp16 on the GPU.
        runtime_model = fuse_conv_bn(model).to(device=device, dtype=self.dtype, memory_format=torch.channels_last)
        super().__init__(runtime_model, input_size, device)
        # Shapes are fixed per engine, so cuDNN's autotuner pays for itself after the first call.
        torch.backends.cudnn.benchmark = True
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        log.info("CUDA engine on %s, %s, channels_last, CUDA graphs %s", self.device_name, precision,
                 "on" if cuda_graphs else "off")

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device)

    def describe(self) -> dict:
        info = super().describe()
        info.update(precision=self.precision, cuda_graphs=self.cuda_graphs)
        return info

    def _capture(self, shape: tuple[int, ...]):
        """Warm up on a side stream (cuDNN picks its algorithms there), then capture one forward."""
        static_in = torch.zeros(shape, device=self.device, dtype=self.dtype).contiguous(
            memory_format=torch.channels_last)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self.model(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Each shape keeps its own memory pool: sharing one is only safe when graphs replay in
        # capture order, and frames arrive in batches of any size in any order.
        with torch.cuda.graph(graph):
            static_out = _outputs(self.model(static_in))
        return graph, static_in, static_out

    def _graph_for(self, shape: tuple[int, ...]):
        entry = self._graphs.get(shape)
        if entry is None:
            try:
                entry = self._capture(shape)
            except RuntimeError as exc:  # an op that cannot be captured: stay correct, run eagerly
                log.warning("CUDA graph capture failed for shape %s (%s); running eagerly",
                            shape, str(exc).splitlines()[0])
                self.cuda_graphs = False
                return None
            self._graphs[shape] = entry
            log.info("CUDA graph captured for input %s", "×".join(map(str, shape)))
        return entry

    def _forward(self, batch):
        batch = batch.to(self.dtype).contiguous(memory_format=torch.channels_last)
        entry = self._graph_for(tuple(batch.shape)) if self.cuda_graphs else None
        if entry is not None:
            graph, static_in, (logits, attention) = entry
            static_in.copy_(batch)
            self._start.record()
            graph.replay()
            self._end.record()
            # The graph rewrites its outputs on the next replay: hand out copies.
            logits = logits.clone()
            attention = attention.clone() if attention is not None else None
        else:
            self._start.record()
            logits, attention = _outputs(self.model(batch))
            self._end.record()
        self._end.synchronize()
        return logits, attention, self._start.elapsed_time(self._end)
