"""Backbone registry: each entry carries its builder and the preprocessing it expects."""

from __future__ import annotations

import torch
from torch import nn

from ..preprocessing import IMAGENET
from .contract import Backbone, BackboneOutputs, BackboneSpec, backbone_outputs
from .mobilenetv3 import MobileNetV3Large, mobilenetv3_large
from .selfie import SPEC as SELFIE_SPEC
from .vgg import VGG16LargeFOV, imagenet_fc6_from_torchvision, vgg16_largefov

BACKBONES: dict[str, BackboneSpec] = {
    "vgg16_largefov": BackboneSpec(
        builder=vgg16_largefov,
        preprocessing=IMAGENET,
        head="linear",
        attention_width=512,
        description="VGG-16 DeepLab-LargeFOV, output stride 8 (the paper's network)",
    ),
    "mobilenetv3_large": BackboneSpec(
        builder=mobilenetv3_large,
        preprocessing=IMAGENET,
        head="light",
        # 64 keeps the attention merge within ~10% of max pooling's cost on a 2-core CPU.
        attention_width=64,
        description="MobileNetV3-Large dilated to output stride 16, light stride-8 head",
    ),

    "selfie": SELFIE_SPEC,
}


def register_backbone(name: str, spec: BackboneSpec) -> None:
    """Add a backbone to the registry (used by optional backbones that live in their own module)."""
    BACKBONES[name] = spec


def get_backbone_spec(name: str) -> BackboneSpec:
    """Look a backbone up by name; a wrong name fails with the list of valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(BACKBONES))}") from None


def load_torchvision_weights(backbone: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load an ImageNet checkpoint saved by torchvision (VGG-16 or MobileNetV3-Large) into a backbone.

    Classifier weights that have no place in a segmentation backbone are skipped; for VGG,
    fc6/fc7 are decimated from torchvision's fully connected layers as DeepLab did.
    Returns the backbone keys that the file did not provide.
    """
    own = backbone.state_dict()
    loaded = {k: v for k, v in state_dict.items() if k.startswith("features.") and k in own}
    for key, value in loaded.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} != backbone {tuple(own[key].shape)}")
    if isinstance(backbone, VGG16LargeFOV) and "classifier.0.weight" in state_dict:
        channels = backbone.fc6.out_channels
        w6, b6 = imagenet_fc6_from_torchvision(state_dict["classifier.0.weight"],
                                               state_dict["classifier.0.bias"], channels)
        step = 4096 // channels
        loaded.update({
            "fc6.weight": w6, "fc6.bias": b6,
            "fc7.weight": state_dict["classifier.3.weight"][::step, ::step, None, None].contiguous(),
            "fc7.bias": state_dict["classifier.3.bias"][::step].contiguous(),
        })
    if not loaded:
        raise ValueError("no torchvision backbone weights found in that state_dict")
    backbone.load_state_dict(loaded, strict=False)
    return sorted(set(own) - set(loaded))


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneOutputs",
    "BackboneSpec",
    "MobileNetV3Large",
    "VGG16LargeFOV",
    "backbone_outputs",
    "get_backbone_spec",
    "load_torchvision_weights",
    "mobilenetv3_large",
    "register_backbone",
    "vgg16_largefov",
]
