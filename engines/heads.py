"""Per-scale heads: turn backbone outputs into the features the attention reads, then class scores."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbones.contract import BackboneOutputs, backbone_outputs


class LinearHead(nn.Module):
    """DeepLab's head: the backbone's last features (fc7) are the features; no extra layers."""

    def __init__(self, outputs: BackboneOutputs) -> None:
        super().__init__()
        self.out_channels = outputs.out

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return feats["out"]


class RefineBlock(nn.Module):
    """Residual depthwise-separable 3×3 conv block; starts as the identity (last BN scale 0),
    so adding it to a trained head changes nothing until it is trained."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width),
        )
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class LightHead(nn.Module):
    """LR-ASPP-style head: gated deep features, upsampled and fused with a stride-8 skip.

    An optional ``"mask"`` output of the backbone (a person-segmentation logit) is appended,
    so a person-aware encoder's silhouette reaches the classifier directly.
    """

    def __init__(self, outputs: BackboneOutputs, width: int = 128, low_width: int = 32, refine: int = 0) -> None:
        super().__init__()
        if outputs.low is None:
            raise ValueError("the light head needs a backbone with stride-8 'low' features")
        self.deep = nn.Sequential(
            nn.Conv2d(outputs.out, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.gate = nn.Conv2d(outputs.out, width, 1)
        self.low = nn.Sequential(
            nn.Conv2d(outputs.low, low_width, 1, bias=False), nn.BatchNorm2d(low_width), nn.ReLU(inplace=True)
        )
        self.uses_mask = outputs.mask is not None
        extra = outputs.mask or 0
        self.fuse = nn.Sequential(
            nn.Conv2d(width + low_width + extra, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        # 1×1 convs alone cannot see a neighbourhood at stride 8, where thin limbs and part
        # boundaries are decided; ``refine`` residual 3×3 blocks add that context cheaply.
        self.refine = nn.Sequential(*(RefineBlock(width) for _ in range(refine)))
        self.out_channels = width

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        deep, low = feats["out"], feats["low"]
        gate = torch.sigmoid(self.gate(F.adaptive_avg_pool2d(deep, 1)))
        deep = self.deep(deep) * gate
        deep = F.interpolate(deep, size=low.shape[-2:], mode="bilinear", align_corners=False)
        parts = [deep, self.low(low)]
        if self.uses_mask:
            parts.append(F.interpolate(feats["mask"], size=low.shape[-2:], mode="bilinear", align_corners=False))
        return self.refine(self.fuse(torch.cat(parts, dim=1)))


class DetailRefiner(nn.Module):
    """Sharpens the fused class scores at stride 4 with the scale-1 image's early (stride-4) features.

    Most of a stride-8 model's errors lie within a few pixels of a person's outline, where
    bilinear upsampling of coarse scores blurs the boundary. This module upsamples the fused
    scores to stride 4 and adds a correction computed from them and the early features. Its last
    conv starts at zero, so adding it to a trained model changes nothing until it is trained.
    """

    def __init__(self, num_classes: int, detail_channels: int, width: int = 32) -> None:
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(detail_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        mixed = num_classes + width
        self.correct = nn.Sequential(
            nn.Conv2d(mixed, mixed, 3, padding=1, groups=mixed, bias=False), nn.BatchNorm2d(mixed),
            nn.ReLU(inplace=True),
            nn.Conv2d(mixed, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )
        nn.init.zeros_(self.correct[-1].weight)
        nn.init.zeros_(self.correct[-1].bias)

    def forward(self, logits: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        logits = F.interpolate(logits, size=detail.shape[-2:], mode="bilinear", align_corners=False)
        return logits + self.correct(torch.cat([logits, self.project(detail)], dim=1))


HEADS: dict[str, type[nn.Module]] = {"linear": LinearHead, "light": LightHead}


class SegmentationNet(nn.Module):
    """One scale's network: backbone → head (features) → classifier (class scores).

    The backbone and classifier are separate arguments, as in torchvision's segmentation models.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.outputs = backbone_outputs(backbone, type(backbone).__name__)
        self.backbone = backbone
        self.head = head
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classify(*self.encode(x))

    def encode(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Backbone outputs and the head's features: the part that tasks sharing a backbone share."""
        backbone_out = self.backbone(x)
        return backbone_out, self.head(backbone_out)

    def classify(self, backbone_out: dict[str, torch.Tensor], features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class scores from encoded features, plus what the multi-scale wrapper and losses read."""
        out = {"features": features, "logits": self.classifier(features)}
        if self.outputs.mask is not None:  # a person-aware encoder's own silhouette, for its training loss
            out["person_logits"] = backbone_out["mask"]
        if self.outputs.detail is not None:  # early stride-4 features, for a detail refiner after the merge
            out["detail"] = backbone_out["detail"]
        return out
