"""Ways to merge the per-scale score maps: the paper's attention, plus max, average and single."""

from __future__ import annotations

import torch
from torch import nn


class ScaleMerge(nn.Module):
    """Base: ``forward(features, logits)`` → (fused logits, per-scale weights or None).

    ``features`` and ``logits`` are lists over scales, already on the scale-1 grid.
    """

    uses_features = False

    def forward(self, features: list[torch.Tensor], logits: list[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class AttentionMerge(ScaleMerge):
    """Attention to scale: 3×3 conv → ReLU → dropout → 1×1 conv to S, softmax over scales,
    then g_i,c = Σ_s w_i^s · f_i,c^s."""

    uses_features = True

    def __init__(self, feature_channels: int, num_scales: int, width: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(feature_channels * num_scales, width, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout2d(dropout)
        self.score = nn.Conv2d(width, num_scales, 1)

    def forward(self, features, logits):
        weights = torch.softmax(self.score(self.dropout(self.relu(self.conv(torch.cat(features, dim=1))))), dim=1)
        fused = logits[0] * weights[:, 0:1]
        for s in range(1, len(logits)):
            fused = fused + logits[s] * weights[:, s : s + 1]
        return fused, weights


class MaxMerge(ScaleMerge):
    """Max pooling over scales (the attention weights' one-hot limit)."""

    def forward(self, features, logits):
        return torch.stack(logits).amax(dim=0), None


class AverageMerge(ScaleMerge):
    """Average pooling over scales (attention with w = 1/S)."""

    def forward(self, features, logits):
        return torch.stack(logits).mean(dim=0), None


class SingleScale(ScaleMerge):
    """Scale 1 alone."""

    def forward(self, features, logits):
        return logits[0], None


MERGES: tuple[str, ...] = ("attention", "max", "average", "single")
