"""Numerically safe building blocks that survive conversion to other runtimes."""

from __future__ import annotations

import torch


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log σ(x), finite for every finite x.

    ``F.logsigmoid`` is exact in PyTorch, but OpenVINO converts it to log(sigmoid(x)), which
    underflows to −inf below about −88: min(x, 0) − log1p(e^−|x|) is exact and stays finite."""
    return torch.clamp(x, max=0.0) - torch.log1p(torch.exp(-torch.abs(x)))
