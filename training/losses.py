"""The training loss: cross-entropy on the fused logits plus, by default, on each scale's logits.

Extra supervision (the paper's Sec. 3.3): every scale's score map gets its own cross-entropy
against the labels, besides the merged output, so that each scale learns to parse on its own
and the attention has good candidates to choose between. With ``merge="single"`` there is
only one scale and the term would repeat the main loss, so it is skipped.

Resolution: the network's logits are on a stride-8 grid. The paper downsampled the labels to
that grid; PartCam by default upsamples the logits bilinearly to the label size instead, which
trains the boundaries the evaluator scores (at full label resolution) for little extra cost
next to the backbone. ``label_grid=True`` gives the paper's behaviour.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

IGNORE_INDEX = 255


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, label_grid: bool) -> torch.Tensor:
    if label_grid:
        if labels.shape[-2:] != logits.shape[-2:]:
            labels = F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
    elif logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    valid = (labels != ignore_index).sum()
    if valid == 0:  # an all-ignore batch: zero loss that still touches the graph (DDP needs every grad)
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum") / valid


def parsing_loss(output: dict, labels: torch.Tensor, *, extra_supervision: bool = True,
                 ignore_index: int = IGNORE_INDEX, label_grid: bool = False
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its terms (``fused``, ``scale0``…) as floats for logging.

    ``output`` is the model's train-mode dict; ``labels`` is N×H×W int64 with ``ignore_index``.
    """
    labels = labels.long()
    terms = {"fused": _cross_entropy(output["logits"], labels, ignore_index, label_grid)}
    scale_logits = output.get("scale_logits") or []
    if extra_supervision and len(scale_logits) > 1:
        for index, logits in enumerate(scale_logits):
            terms[f"scale{index}"] = _cross_entropy(logits, labels, ignore_index, label_grid)
    total = torch.stack(list(terms.values())).sum()
    return total, {name: float(value.detach()) for name, value in terms.items()}
