"""What a backbone promises the heads: which feature maps its forward returns, and their channels.

Like torchvision's ``IntermediateLayerGetter`` and smp's ``EncoderMixin``, each backbone declares
its outputs up front (``outputs``), so heads, the detail refiner and the person loss are wired from
the declaration rather than by probing dictionaries at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..preprocessing import Preprocessing


@dataclass(frozen=True)
class BackboneOutputs:
    """Channels of each map a backbone returns; ``None``: it does not return that map."""

    out: int  # deepest features (stride 8 or 16): every head reads them
    low: int | None = None  # stride-8 features, the light head's skip connection
    detail: int | None = None  # stride-4 early features, for a DetailRefiner after the merge
    mask: int | None = None  # a person-segmentation logit (person-aware encoders), at the input's size

    def names(self) -> tuple[str, ...]:
        """The keys of the dict the backbone's forward returns."""
        return tuple(name for name in ("out", "low", "detail", "mask") if getattr(self, name) is not None)


@runtime_checkable
class Backbone(Protocol):
    """An ``nn.Module`` whose forward maps a normalised N×3×H×W batch to ``{key: features}``."""

    outputs: BackboneOutputs

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]: ...


def backbone_outputs(module: object, name: str) -> BackboneOutputs:
    """``module``'s declared outputs; a backbone that declares none is a programming error."""
    outputs = getattr(module, "outputs", None)
    if not isinstance(outputs, BackboneOutputs):
        raise TypeError(f"backbone {name!r} ({type(module).__name__}) does not declare its outputs "
                        "as a BackboneOutputs in .outputs")
    return outputs


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone builder plus the defaults that belong with it."""

    builder: Callable[..., nn.Module]
    preprocessing: Preprocessing
    head: str  # "linear" (fc8 on the backbone's output) or "light" (fuses a stride-8 skip)
    attention_width: int  # hidden width of the attention head suited to this backbone
    description: str
