"""CUDA: half precision, channels_last, CUDA-graph replay for fixed shapes, CUDA-event timing."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..optimize import fuse_conv_bn
from ..predict import class_scores
from .base import BackendUnavailable, Engine, log

PRECISIONS: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GRAPH_BATCHES: tuple[int, ...] = (1, 2, 4, 8)  # captured at start-up; other batch sizes are padded up


def require_cuda() -> None:
    """Raise BackendUnavailable unless a CUDA GPU is usable from this torch."""
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise BackendUnavailable(
            f"the cuda backend needs an NVIDIA GPU and a CUDA build of torch; this torch {torch.__version__} "
            f"is {build} and sees no GPU"
        )


def _outputs(out: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    return class_scores(out), out["attention"]


def padded_batches(frames: int, captured: Sequence[int]) -> list[tuple[int, int]]:
    """(frames, captured batch to run them on) chunks: the smallest captured size that holds them,
    full chunks of the largest beyond it (the TensorRT path pads the same way)."""
    from .tensorrt import plan_chunks  # pure Python; importing it does not import torch-tensorrt

    return plan_chunks(frames, list(captured))


class CudaEngine(Engine):
    """Runs the model on an NVIDIA GPU.

    The model is a private copy with BatchNorm folded into the convolutions, cast to fp16
    (or bf16, or fp32) and laid out channels_last, which is what the tensor cores want.
    At start-up one CUDA graph per batch size in ``graph_batches`` is captured (all sharing
    one memory pool) and then replayed, padding a batch up to the next captured size; that
    removes the per-kernel launch cost that dominates small networks and keeps captures off
    the serving path. CNN time comes from CUDA events around the replay, so the readout can
    honestly say "GPU time".
    """

    name = "cuda"
    timing_label = "GPU time"
    batching_helps = True

    def __init__(self, model: torch.nn.Module, input_size: int, *, precision: str = "fp16",
                 cuda_graphs: bool = True, device: str | torch.device = "cuda",
                 graph_batches: Sequence[int] = GRAPH_BATCHES) -> None:
        require_cuda()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        device = torch.device(device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise BackendUnavailable(f"{torch.cuda.get_device_name(device)} has no bf16 support; use fp16")
        self.dtype = PRECISIONS[precision]
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        # A private copy: .to() would otherwise turn the caller's model into fp16 on the GPU.
        runtime_model = fuse_conv_bn(model).to(device=device, dtype=self.dtype, memory_format=torch.channels_last)
        super().__init__(runtime_model, input_size, device)
        # Shapes are fixed per engine, so cuDNN's autotuner pays for itself after the first call.
        torch.backends.cudnn.benchmark = True
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}
        with torch.cuda.device(self.device):
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            # One pool for all of this engine's graphs. Sharing is safe here because every graph's
            # static input and outputs stay referenced (the allocator never hands their memory to
            # another capture) and replays run one at a time on this engine's stream.
            self._pool = torch.cuda.graph_pool_handle() if cuda_graphs else None
            if cuda_graphs:
                for batch in sorted(set(int(b) for b in graph_batches)):
                    if not self._capture_batch(batch):
                        break
        log.info("CUDA engine on %s, %s, channels_last, CUDA graphs %s", self.device_name, precision,
                 f"for batches {sorted(self._graphs)}" if self.cuda_graphs else "off")

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device)

    def describe(self) -> dict:
        info = super().describe()
        info.update(precision=self.precision, cuda_graphs=self.cuda_graphs, graph_batches=sorted(self._graphs))
        return info

    def _capture(self, shape: tuple[int, ...]):
        """Warm up on a side stream (cuDNN picks its algorithms there), then capture one forward."""
        static_in = torch.zeros(shape, device=self.device, dtype=self.dtype).contiguous(
            memory_format=torch.channels_last)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                self.model(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), torch.inference_mode():
            static_out = _outputs(self.model(static_in))
        return graph, static_in, static_out

    def _capture_batch(self, batch: int) -> bool:
        """Capture the graph for ``batch`` frames; on failure run eagerly from now on."""
        shape = (batch, 3, self.input_size, self.input_size)
        try:
            self._graphs[batch] = self._capture(shape)
        except RuntimeError as exc:  # an op that cannot be captured: stay correct, run eagerly
            log.warning("CUDA graph capture failed for shape %s (%s); running eagerly",
                        shape, str(exc).splitlines()[0])
            self.cuda_graphs = False
            self._graphs.clear()
            return False
        log.info("CUDA graph captured for input %s", "×".join(map(str, shape)))
        return True

    def _forward(self, batch):
        # The serving thread's current device is 0: capture, replay and events must use this engine's.
        with torch.cuda.device(self.device):
            batch = batch.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
            if self.cuda_graphs and self._graphs and tuple(batch.shape[1:]) == (3, self.input_size, self.input_size):
                logits, attention, offset = [], [], 0
                self._start.record()
                for take, run in padded_batches(batch.shape[0], list(self._graphs)):
                    graph, static_in, (out_logits, out_attention) = self._graphs[run]
                    static_in[:take].copy_(batch[offset:offset + take])
                    if take < run:  # padding frames: zeros, their outputs are dropped
                        static_in[take:].zero_()
                    graph.replay()
                    # The graph rewrites its outputs on the next replay: keep copies.
                    logits.append(out_logits[:take].clone())
                    if out_attention is not None:
                        attention.append(out_attention[:take].clone())
                    offset += take
                self._end.record()
                logits_out = torch.cat(logits)
                attention_out = torch.cat(attention) if attention else None
            else:
                self._start.record()
                logits_out, attention_out = _outputs(self.model(batch))
                self._end.record()
            self._end.synchronize()
            return logits_out, attention_out, self._start.elapsed_time(self._end)
