"""Pose guidance: a real-trained multi-person pose model steers which part is which.

:class:`PoseGuide` runs MoveNet MultiPose (``movenet.py``) on the model's own letterboxed input and
fuses its skeletons with the gated network's output (``skeleton.py``). It sits after the person
gate in :class:`engines.model.MultiScaleSegmenter` and is used at inference only; training, the
attention-to-scale network and its extra supervision are untouched.

The pose weights are MoveNet's own, fetched at set-up and converted once (``load_movenet``); they
are not stored in PartCam checkpoints, which record only the guide's settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..preprocessing import Preprocessing
from .skeleton import fuse

# State-dict keys under this prefix (relative to the guide) are the pose model's: never saved.
POSE_MODEL_PREFIX = "pose."


@dataclass(frozen=True)
class PoseGuideConfig:
    """How the guide runs; stored in checkpoints as ``pose_guide``."""

    model: str = "movenet-multipose"
    # MoveNet's input sizes (multiples of 32): the frame's letterbox is resized to each and the
    # people of all passes are pooled. A large size finds small people; a small one finds people
    # so close that they overflow the large pass's view of them.
    input_sizes: tuple[int, ...] = (288, 192)
    mode: str = "fused"  # "fused" (network + skeleton) or "rules" (skeleton only, inside the gate)
    weight: float = 8.0  # fused: nats of part score per radius of distance from a part's shape
    reach: float = 2.0  # person pixels further than this many radii from every skeleton: background
    fill: float = 0.7  # pixels within this many radii of a skeleton's shapes: person, whatever the gate says
    prior_stride: int = 4  # the skeleton priors are drawn at 1/prior_stride of the input, then upsampled
    keypoint_threshold: float = 0.3
    person_threshold: float = 0.2

    def __post_init__(self) -> None:
        if self.model != "movenet-multipose":
            raise ValueError(f"unknown pose model {self.model!r}; valid: movenet-multipose")
        object.__setattr__(self, "input_sizes", tuple(int(v) for v in self.input_sizes))
        if not self.input_sizes or any(v % 32 or v < 64 for v in self.input_sizes):
            raise ValueError(f"pose input_sizes must be multiples of 32, at least 64, got {self.input_sizes}")
        if self.mode not in ("fused", "rules"):
            raise ValueError(f"unknown pose fusion mode {self.mode!r}; valid: fused, rules")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_sizes"] = list(self.input_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PoseGuideConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            valid = ", ".join(cls.__dataclass_fields__)
            raise ValueError(f"unknown pose_guide settings {sorted(unknown)}; valid: {valid}")
        return cls(**data)


class PoseGuide(nn.Module):
    """Skeletons from MoveNet on the model's input, fused with the gated log-probabilities."""

    def __init__(self, config: PoseGuideConfig, preprocessing: Preprocessing, task: str,
                 pose_model: nn.Module | None = None) -> None:
        super().__init__()
        from .movenet import MoveNetMultiPose, load_movenet

        self.config = config
        self.task = task
        self.pose = pose_model if pose_model is not None else load_movenet()
        if not isinstance(self.pose, MoveNetMultiPose):
            raise TypeError("the pose model must be a MoveNetMultiPose")
        self.pose.requires_grad_(False)
        # The guide sees the segmenter's normalised input; these undo it to 0–255 RGB.
        order = [2, 1, 0] if preprocessing.channel_order == "BGR" else [0, 1, 2]
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)
        self._register_state_dict_hook(_drop_pose_weights)

    def train(self, mode: bool = True) -> PoseGuide:
        super().train(mode)
        self.pose.eval()  # frozen
        return self

    def skeletons(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """MoveNet's people for the normalised input ``x`` (N×3×S×S letterboxed frames), pooled
        over the configured input sizes: keypoints (N, 6·passes, 17, 3), boxes (N, 6·passes, 5)."""
        pixels = (x * self.std + self.mean).index_select(1, self.order).clamp(0, 255)
        passes = []
        for size in self.config.input_sizes:
            view = pixels
            if tuple(view.shape[-2:]) != (size, size):
                # Plain bilinear: antialiasing would cost more than it gives at these mild ratios.
                view = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
            passes.append(self.pose(view))
        return {key: torch.cat([p[key] for p in passes], dim=1) for key in ("keypoints", "boxes")}

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The grid the fusion runs on for input ``x``: ``prior_stride`` times coarser, rounded up."""
        stride = self.config.prior_stride
        return -(-int(x.shape[-2]) // stride), -(-int(x.shape[-1]) // stride)

    def forward(self, x: torch.Tensor, gated: torch.Tensor) -> torch.Tensor:
        """Gated log-probabilities on :meth:`grid` (or the input's size) → pose-guided ones on the grid."""
        people = self.skeletons(x)
        stride = 1 if tuple(gated.shape[-2:]) == self.grid(x) else self.config.prior_stride
        return fuse(gated, people["keypoints"], self.task, mode=self.config.mode, weight=self.config.weight,
                    reach=self.config.reach, fill=self.config.fill, prior_stride=stride,
                    person_scores=people["boxes"][..., 4],
                    threshold=self.config.keypoint_threshold, min_person_score=self.config.person_threshold)


def _drop_pose_weights(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """Checkpoints keep the guide's settings, not MoveNet's weights (fetched at set-up instead)."""
    for key in [k for k in state_dict if k.startswith(prefix + POSE_MODEL_PREFIX)]:
        del state_dict[key]
