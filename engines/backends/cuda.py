"""CUDA: half precision, channels_last, CUDA-graph replay for fixed shapes, CUDA-event timing."""

from __future__ import annotations

import torch

from .base import BackendUnavailable, Engine, log


def require_cuda() -> None:
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise BackendUnavailable(
            f"the cuda backend needs an NVIDIA GPU and a CUDA build of torch; this torch {torch.__version__} "
            f"is {build} and sees no GPU"
        )


class CudaEngine(Engine):
    """Runs the model on an NVIDIA GPU.

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
        dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
        if precision not in dtypes:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(dtypes)}")
        self.dtype = dtypes[precision]
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        device = torch.device(device)
        model = model.eval().to(device=device, dtype=self.dtype, memory_format=torch.channels_last)
        super().__init__(model, input_size, device)
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, dict]] = {}
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        log.info("CUDA engine on %s, %s, graphs %s", self.device_name, precision, "on" if cuda_graphs else "off")

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device)

    def _graph_for(self, shape: tuple[int, ...]):
        entry = self._graphs.get(shape)
        if entry is None:
            static_in = torch.zeros(shape, device=self.device, dtype=self.dtype).contiguous(
                memory_format=torch.channels_last)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up lets cuDNN pick its algorithms before capture
                    self.model(static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_in)
            entry = (graph, static_in, static_out)
            self._graphs[shape] = entry
        return entry

    def _forward(self, batch):
        batch = batch.to(self.dtype).contiguous(memory_format=torch.channels_last)
        if self.cuda_graphs:
            graph, static_in, static_out = self._graph_for(tuple(batch.shape))
            static_in.copy_(batch)
            self._start.record()
            graph.replay()
            self._end.record()
            out = static_out
        else:
            self._start.record()
            out = self.model(batch)
            self._end.record()
        self._end.synchronize()
        cnn_ms = self._start.elapsed_time(self._end)
        attention = out["attention"].clone() if out["attention"] is not None else None
        return out["logits"].clone(), attention, cnn_ms
