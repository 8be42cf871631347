"""Person gating: a frozen real-photo person segmenter decides person vs background.

Parsing heads trained on synthetic people learn a background class from synthetic scenes, and
on real photos they miss people dressed unlike the renders (a spacesuit, a dark uniform). The
gate keeps MediaPipe's selfie-segmentation network exactly as it was trained on real photos
(frozen, never fine-tuned) and factors the output as P(person) × P(part | person):

    log p'(background) = log(1 − m),    log p'(part c) = log m + log softmax_{c ≠ background}(logits)

where m is the gate's person probability. The part scores come from the attention-to-scale
model; only the person/background decision moves to the gate.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .numerics import log_sigmoid
from .preprocessing import Preprocessing


class PersonGate(nn.Module):
    def __init__(self, preprocessing: Preprocessing) -> None:
        super().__init__()
        from .backbones.selfie import selfie_encoder

        self.segmenter = selfie_encoder()
        self.segmenter.requires_grad_(False)
        # The gate sees the model's normalised input; these undo that normalisation to [0, 1] RGB.
        order = [2, 1, 0] if preprocessing.channel_order == "BGR" else [0, 1, 2]
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PersonGate:
        super().train(mode)
        self.segmenter.eval()  # frozen: BatchNorm-free, but keep it in inference behaviour regardless
        return self

    def person_logit(self, x: torch.Tensor) -> torch.Tensor:
        """N×1×H×W person logit at the input's size."""
        pixels = (x * self.std + self.mean).index_select(1, self.order) / 255.0
        return self.segmenter(pixels)["mask"]

    def forward(self, x: torch.Tensor, logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Gated log-probabilities (background is class 0) at ``size``, by default the input's."""
        size = tuple(size) if size is not None else tuple(x.shape[-2:])
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        person = self.person_logit(x)
        if person.shape[-2:] != size:
            # Shrinking averages (the mask's detail is not lost to aliasing); growing interpolates.
            shrink = person.shape[-2] > size[0]
            person = F.adaptive_avg_pool2d(person, size) if shrink else F.interpolate(
                person, size=size, mode="bilinear", align_corners=False)
        parts = torch.log_softmax(logits[:, 1:], dim=1)
        return torch.cat([log_sigmoid(-person), log_sigmoid(person) + parts], dim=1)
