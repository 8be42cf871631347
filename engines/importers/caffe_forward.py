"""Run an imported Caffe model the way Caffe ran it: DeepLab's Interp resizing and mean padding.

PartCam's own multi-scale model resizes with bilinear ``align_corners=False`` and the
``(L − 1)·s + 1`` size rule. DeepLab's ``Interp`` layer aligns corners and computes sizes by
integer shrink and zoom factors; with the authors' weights the two disagree on several
percent of pixels. An imported checkpoint records Caffe's behaviour in its metadata
(``inference``); the engines wrap the model in :class:`CaffeResampling` and pad frames with
the mean colour, so an imported model computes what Caffe computed.

Recorded settings (``CheckpointMetadata.inference``)::

    {"resize": "caffe",                 # Interp semantics for every resize in the network
     "pad": "mean",                     # letterbox with the mean colour at the bottom-right
     "input_interp": [[], [[4, 3]], [[2, 1]]]}   # per model scale: its [shrink, zoom] Interp chain
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn
from torch.nn import functional as F


def interp_size(length: int, shrink: int = 1, zoom: int = 1) -> int:
    """DeepLab Interp's output length: shrink first, ``(L − 1) // s + 1``, then zoom, ``L + (L − 1)(z − 1)``."""
    length = (int(length) - 1) // int(shrink) + 1
    return length + (length - 1) * (int(zoom) - 1)


def interp(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize as DeepLab's Interp does it: corners aligned, a copy when the size is unchanged."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=True)


def chain_for_scale(scale: float) -> list[list[int]]:
    """The [shrink, zoom] Interp that makes scale ``scale`` (0.75 → [[4, 3]], 0.5 → [[2, 1]], 1 → [])."""
    if scale == 1.0:
        return []
    fraction = Fraction(scale).limit_denominator(16)
    return [[fraction.denominator, fraction.numerator]]


class CaffeResampling(nn.Module):
    """A ``MultiScaleSegmenter`` run with Caffe's resizing; same inputs and ``{"logits", "attention"}`` out.

    Logits and attention come back at the input's size, as Caffe's final ``zoom_factor: 8`` Interp
    gives them (exactly so for input sides 8k + 1, such as 321 and 513).
    """

    def __init__(self, model: nn.Module, input_interp: Sequence[Sequence[Sequence[int]]]) -> None:
        super().__init__()
        for extra in ("person_gate", "refiner", "pose_guide"):
            if getattr(model, extra, None) is not None:
                raise ValueError(f"Caffe resampling applies to imported Caffe models; this one has a {extra}")
        scales = getattr(model, "scales", (1.0,))
        if len(input_interp) != len(scales):
            raise ValueError(f"{len(input_interp)} Interp chains recorded for {len(scales)} scales")
        self.model = model
        self.input_interp = [[(int(s), int(z)) for s, z in chain] for chain in input_interp]
        # Engines read these from the model they run.
        self.config = model.config
        self.preprocessing = model.preprocessing
        self.metadata = model.metadata

    def scaled_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        inputs = []
        for chain in self.input_interp:
            y = x
            for shrink, zoom in chain:
                y = interp(y, (interp_size(y.shape[-2], shrink, zoom), interp_size(y.shape[-1], shrink, zoom)))
            inputs.append(y)
        return inputs

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        model = self.model
        outputs = [model.net(y) for y in self.scaled_inputs(x)]
        grid = outputs[0]["logits"].shape[-2:]
        logits = [interp(out["logits"], grid) for out in outputs]
        features = [interp(out["features"], grid) for out in outputs] if model.merge.uses_features else []
        fused, attention = model.merge(features, logits)
        size = x.shape[-2:]
        return {"logits": interp(fused, size), "attention": interp(attention, size) if attention is not None else None}


def recorded_inference(model: nn.Module) -> dict:
    """The inference settings a model's checkpoint recorded (empty for PartCam's own models)."""
    metadata = getattr(model, "metadata", None)
    return dict(getattr(metadata, "inference", None) or {})


def with_recorded_resampling(model: nn.Module) -> nn.Module:
    """``model`` wrapped in :class:`CaffeResampling` if its checkpoint says so, else ``model`` itself."""
    if isinstance(model, CaffeResampling):
        return model
    settings = recorded_inference(model)
    if settings.get("resize") != "caffe":
        return model
    chains = settings.get("input_interp") or [chain_for_scale(s) for s in getattr(model, "scales", (1.0,))]
    return CaffeResampling(model, chains)


def pad_colour(model: nn.Module, default: float) -> float | tuple[float, float, float]:
    """Letterbox fill in RGB pixels: the mean colour for Caffe models (zero after normalising), else ``default``."""
    if recorded_inference(model).get("pad") != "mean":
        return default
    preprocessing = model.preprocessing
    mean = tuple(float(v) for v in preprocessing.mean)
    return mean[::-1] if preprocessing.channel_order == "BGR" else mean
