"""The training loss: cross-entropy on the fused logits plus, by default, on each scale's logits.

Extra supervision (the paper's Sec. 3.3): every scale's score map gets its own cross-entropy
against the labels, besides the merged output, so that each scale learns to parse on its own
and the attention has good candidates to choose between. With ``merge="single"`` there is
only one scale and the term would repeat the main loss, so it is skipped.

Resolution: the network's logits are on a stride-8 grid. The paper downsampled the labels to
that grid; PartCam by default upsamples the logits bilinearly to the label size instead, which
trains the boundaries the evaluator scores (at full label resolution) for little extra cost
next to the backbone. ``label_grid=True`` gives the paper's behaviour.

Rare classes (bags, shoes: about 1% and 0.2% of synthetic pixels) are easily never predicted at
all, which costs a whole class's IoU. ``class_weights`` (see :func:`balanced_class_weights`)
scale each pixel's term by its class's weight; the loss stays a weighted mean.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from engines.tasks import IGNORE_INDEX


def balanced_class_weights(pixel_counts: np.ndarray, power: float = 0.5, max_weight: float = 10.0) -> torch.Tensor:
    """Median-frequency balancing softened by ``power``: w_c = (median_freq / freq_c) ** power.

    ``power=1`` is full median-frequency balancing, 0 leaves every class at 1. Classes never
    seen get ``max_weight``; no weight exceeds it.
    """
    counts = np.asarray(pixel_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.sum() <= 0:
        raise ValueError("pixel_counts must be a non-empty 1-D array with some pixels")
    freq = counts / counts.sum()
    median = np.median(freq[freq > 0])
    with np.errstate(divide="ignore"):
        weights = np.where(freq > 0, (median / freq) ** power, max_weight)
    return torch.tensor(np.minimum(weights, max_weight), dtype=torch.float32)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, label_grid: bool,
                   class_weights: torch.Tensor | None = None) -> torch.Tensor:
    if label_grid:
        if labels.shape[-2:] != logits.shape[-2:]:
            labels = F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
    elif logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    valid = (labels != ignore_index).sum()
    if valid == 0:  # an all-ignore batch: zero loss that still touches the graph (DDP needs every grad)
        return logits.sum() * 0.0
    if class_weights is not None:  # a mean weighted by each pixel's class weight
        return F.cross_entropy(logits, labels, weight=class_weights.to(logits), ignore_index=ignore_index)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum") / valid


def person_mask_loss(person_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Binary cross-entropy of a person-aware encoder's silhouette against "any labelled part".

    Keeping the encoder's mask right on training images keeps it a cue the parsing head can
    trust; otherwise the head learns to ignore a mask that is poor on synthetic scenes.
    """
    if person_logits.shape[-2:] != labels.shape[-2:]:
        person_logits = F.interpolate(person_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    valid = labels != ignore_index
    if not valid.any():
        return person_logits.sum() * 0.0
    target = (labels != 0).float()
    return F.binary_cross_entropy_with_logits(person_logits[:, 0][valid], target[valid])


def parsing_loss(output: dict, labels: torch.Tensor, *, extra_supervision: bool = True,
                 ignore_index: int = IGNORE_INDEX, label_grid: bool = False, person_weight: float = 0.0,
                 class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its terms (``fused``, ``scale0``…, ``person``) as floats for logging.

    ``output`` is the model's train-mode dict; ``labels`` is N×H×W int64 with ``ignore_index``.
    ``person_weight`` > 0 adds :func:`person_mask_loss` when the model has a person mask;
    ``class_weights`` (one per class) weight the parsing terms.
    """
    labels = labels.long()
    terms = {"fused": _cross_entropy(output["logits"], labels, ignore_index, label_grid, class_weights)}
    scale_logits = output.get("scale_logits") or []
    if extra_supervision and len(scale_logits) > 1:
        for index, logits in enumerate(scale_logits):
            terms[f"scale{index}"] = _cross_entropy(logits, labels, ignore_index, label_grid, class_weights)
    if person_weight > 0 and output.get("person_logits") is not None:
        terms["person"] = person_weight * person_mask_loss(output["person_logits"], labels, ignore_index)
    total = torch.stack(list(terms.values())).sum()
    return total, {name: float(value.detach()) for name, value in terms.items()}
