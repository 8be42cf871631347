"""Image normalisation: the one place that says how pixels become network input.

Values are in the 0–255 pixel scale so that both torchvision-style (RGB, ImageNet
mean/std) and Caffe-style (BGR, mean subtraction only) networks are expressible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Preprocessing:
    """``x = (pixel[channel_order] - mean) / std`` on 0–255 pixels."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need three values each")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            channel_order=str(data.get("channel_order", "RGB")),
        )

    def normalise(self, rgb: torch.Tensor) -> torch.Tensor:
        """N×3×H×W float RGB pixels (0–255) → network input."""
        if self.channel_order == "BGR":
            rgb = rgb.flip(1)
        mean = torch.tensor(self.mean, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        inv_std = 1.0 / torch.tensor(self.std, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        return (rgb - mean) * inv_std


IMAGENET = Preprocessing(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
CAFFE_VGG = Preprocessing(mean=(104.008, 116.669, 122.675), std=(1.0, 1.0, 1.0), channel_order="BGR")
UNIT_RANGE = Preprocessing(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0))

# Letterbox padding is mid-grey rather than black: black bars read as dark clothing.
PAD_VALUE = 128
