"""MobileNetV3-Large, dilated for dense prediction.

Module names mirror torchvision's ``mobilenet_v3_large`` (``features.N.block.M...``),
so an ImageNet checkpoint from torchvision loads into ``features`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .contract import BackboneOutputs


def _make_divisible(value: float, divisor: int = 8) -> int:
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class ConvBNAct(nn.Sequential):
    """Conv → BatchNorm → optional activation (torchvision's Conv2dNormActivation layout)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, dilation: int = 1,
                 groups: int = 1, activation: type[nn.Module] | None = nn.ReLU) -> None:
        padding = (kernel - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch, eps=0.001, momentum=0.01),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale), inplace=True)), inplace=True)
        return x * scale


@dataclass(frozen=True)
class _Bneck:
    in_ch: int
    kernel: int
    expanded: int
    out_ch: int
    use_se: bool
    hardswish: bool
    stride: int
    dilation: int = 1


class InvertedResidual(nn.Module):
    def __init__(self, cfg: _Bneck) -> None:
        super().__init__()
        act = nn.Hardswish if cfg.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.in_ch:
            layers.append(ConvBNAct(cfg.in_ch, cfg.expanded, 1, activation=act))
        stride = 1 if cfg.dilation > 1 else cfg.stride
        layers.append(ConvBNAct(cfg.expanded, cfg.expanded, cfg.kernel, stride, cfg.dilation,
                                groups=cfg.expanded, activation=act))
        if cfg.use_se:
            layers.append(SqueezeExcitation(cfg.expanded, _make_divisible(cfg.expanded // 4)))
        layers.append(ConvBNAct(cfg.expanded, cfg.out_ch, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = cfg.stride == 1 and cfg.in_ch == cfg.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class MobileNetV3Large(nn.Module):
    """Returns ``{"out": 960 channels at the output stride, "low": 40 channels at stride 8,
    "detail": 24 channels at stride 4}``."""

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        d16 = 2 if output_stride == 8 else 1  # dilation replacing the stride-16 step
        d32 = {8: 4, 16: 2, 32: 1}[output_stride]
        settings = [
            _Bneck(16, 3, 16, 16, False, False, 1),
            _Bneck(16, 3, 64, 24, False, False, 2),
            _Bneck(24, 3, 72, 24, False, False, 1),
            _Bneck(24, 5, 72, 40, True, False, 2),
            _Bneck(40, 5, 120, 40, True, False, 1),
            _Bneck(40, 5, 120, 40, True, False, 1),
            _Bneck(40, 3, 240, 80, False, True, 2, d16),
            _Bneck(80, 3, 200, 80, False, True, 1, d16),
            _Bneck(80, 3, 184, 80, False, True, 1, d16),
            _Bneck(80, 3, 184, 80, False, True, 1, d16),
            _Bneck(80, 3, 480, 112, True, True, 1, d16),
            _Bneck(112, 3, 672, 112, True, True, 1, d16),
            _Bneck(112, 5, 672, 160, True, True, 2, d32),
            _Bneck(160, 5, 960, 160, True, True, 1, d32),
            _Bneck(160, 5, 960, 160, True, True, 1, d32),
        ]
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, stride=2, activation=nn.Hardswish)]
        layers.extend(InvertedResidual(cfg) for cfg in settings)
        layers.append(ConvBNAct(160, 960, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.detail_index = 3  # last block at stride 4 (24 channels)
        self.low_level_index = 6  # last block at stride 8 (40 channels)
        self.outputs = BackboneOutputs(out=960, low=40, detail=24)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = detail = None
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == self.detail_index:
                detail = x
            elif index == self.low_level_index:
                low = x
        return {"out": x, "low": low, "detail": detail}


def mobilenetv3_large(*, output_stride: int = 16) -> MobileNetV3Large:
    """Build the dilated MobileNetV3-Large backbone (weights random)."""
    return MobileNetV3Large(output_stride=output_stride)
