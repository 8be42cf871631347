"""VGG-16 DeepLab-LargeFOV: the paper's shared network.

``features`` keeps torchvision's layer indices, so ``features.N.weight`` keys load
straight from torchvision's ``vgg16-397923af.pth``; fc6/fc7 are DeepLab's dilated
replacements for the fully connected layers.
"""

from __future__ import annotations

import torch
from torch import nn

from .contract import BackboneOutputs

# torchvision's VGG-16 "D" configuration; "M" marks a pooling layer.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16LargeFOV(nn.Module):
    """conv1–conv5 (pool4/pool5 stride 1, conv5 dilated 2) → fc6 (3×3, dilation 12) → fc7.

    Output stride 8: a 321×321 input gives a 41×41 grid. ``pool5a`` adds the 3×3 average
    pool (stride 1, pad 1) that DeepLab v1's released LargeFOV model has between pool5 and fc6.
    """

    def __init__(self, fc_channels: int = 1024, dropout: float = 0.5, pool5a: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        pool_index = 0
        for value in _VGG16_CFG:
            if value == "M":
                pool_index += 1
                # DeepLab keeps pool1–3 at stride 2 and turns pool4/pool5 into stride-1 pools;
                # ceil_mode matches Caffe, so grids equal those of the released models.
                stride = 2 if pool_index <= 3 else 1
                layers.append(nn.MaxPool2d(kernel_size=3, stride=stride, padding=1, ceil_mode=True))
            else:
                dilation = 2 if pool_index == 4 else 1  # conv5 block
                layers.append(nn.Conv2d(in_channels, value, 3, padding=dilation, dilation=dilation))
                layers.append(nn.ReLU(inplace=True))
                in_channels = value
        self.features = nn.Sequential(*layers)
        # Caffe's AVE pooling divides by the full 3×3 window at the borders too (its window may
        # reach into the padding), which is count_include_pad=True. No weights: old keys still load.
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True) if pool5a else None
        self.fc6 = nn.Conv2d(512, fc_channels, 3, padding=12, dilation=12)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout2d(dropout)
        self.outputs = BackboneOutputs(out=fc_channels)
        self.output_stride = 8

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.features(x)
        if self.pool5a is not None:
            x = self.pool5a(x)
        x = self.dropout(self.relu(self.fc6(x)))
        x = self.dropout(self.relu(self.fc7(x)))
        return {"out": x}


def vgg16_largefov(*, fc_channels: int = 1024, pool5a: bool = False) -> VGG16LargeFOV:
    """Build the DeepLab-LargeFOV backbone (weights random; see ``load_torchvision_weights``)."""
    return VGG16LargeFOV(fc_channels=fc_channels, pool5a=pool5a)


def imagenet_fc6_from_torchvision(classifier_0_weight: torch.Tensor, classifier_0_bias: torch.Tensor,
                                  fc_channels: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Decimate torchvision's 4096×(512·7·7) fc6 to DeepLab's fc_channels×512×3×3, as DeepLab did."""
    weight = classifier_0_weight.reshape(4096, 512, 7, 7)
    step = 4096 // fc_channels
    return weight[::step, :, ::3, ::3].contiguous(), classifier_0_bias[::step].contiguous()
