"""Eager PyTorch on the CPU: inference mode, channels_last, a thread count set once."""

from __future__ import annotations

import os
import platform
import time

import torch

from ..optimize import fuse_conv_bn
from ..predict import class_scores
from .base import Engine, log

_threads_set: int | None = None


def set_cpu_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count once per process; later calls keep the first value."""
    global _threads_set
    if _threads_set is None:
        _threads_set = int(threads or os.cpu_count() or 1)
        torch.set_num_threads(_threads_set)
        log.info("CPU engine uses %d threads", _threads_set)
    return _threads_set


class CpuEngine(Engine):
    name = "cpu"
    timing_label = "CPU time"
    batching_helps = False  # the cores are already busy with one frame
    overlap_safe = True  # every call returns new tensors

    def __init__(self, model: torch.nn.Module, input_size: int, threads: int | None = None) -> None:
        self.threads = set_cpu_threads(threads)
        model = fuse_conv_bn(model.float()).to(memory_format=torch.channels_last)
        super().__init__(model, input_size, torch.device("cpu"))

    @property
    def device_name(self) -> str:
        return f"{platform.processor() or platform.machine()} CPU, {self.threads} threads"

    def _forward(self, batch):
        batch = batch.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        out = self.model(batch)
        cnn_ms = (time.perf_counter() - start) * 1000.0
        return class_scores(out), out["attention"], cnn_ms
