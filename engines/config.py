"""The model description: one typed value that ``build_model`` takes and checkpoints store.

Every architecture option lives here once. ``build_model`` builds from it, ``model.config`` holds
the resolved value, checkpoints write ``to_dict()`` and every load (serving, ``--init``,
``--resume``) rebuilds from ``from_dict()``. Adding an option means a field here and the code that
uses it in ``engines/model.py``; nothing else copies the list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .merge import MERGES
from .pose.guide import PoseGuideConfig

DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.75, 0.5)


@dataclass(frozen=True)
class ModelConfig:
    """How a PartCam model is built. ``None`` fields take the backbone's or task's default."""

    task: str
    backbone: str = "mobilenetv3_large"
    merge: str = "attention"  # how the scales' scores are combined; "single" runs scale 1 alone
    scales: tuple[float, ...] = DEFAULT_SCALES
    attention_width: int | None = None  # hidden width of the attention head (None: the backbone's)
    attention_dropout: float = 0.5  # dropout before the attention head's last conv, as in the paper
    backbone_kwargs: Mapping[str, Any] = field(default_factory=dict)
    head_kwargs: Mapping[str, Any] = field(default_factory=dict)
    detail_width: int = 0  # > 0: a stride-4 DetailRefiner of this width after the merge
    num_classes: int | None = None  # None: the task's class count
    person_gate: bool = False  # a frozen real-photo person segmenter decides person vs background
    pose_guide: PoseGuideConfig | None = None  # skeletons steer the parts at inference

    def __post_init__(self) -> None:
        # Normalised on construction, so that equal descriptions compare equal whatever their source.
        if self.merge not in MERGES:
            raise KeyError(f"unknown merge {self.merge!r}; valid merges: {', '.join(MERGES)}")
        scales = (1.0,) if self.merge == "single" else tuple(float(s) for s in self.scales)
        if not scales or scales[0] != 1.0:
            raise ValueError(f"scales must start with 1.0, got {scales}")
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "backbone_kwargs", dict(self.backbone_kwargs or {}))
        object.__setattr__(self, "head_kwargs", dict(self.head_kwargs or {}))
        object.__setattr__(self, "detail_width", int(self.detail_width))
        object.__setattr__(self, "person_gate", bool(self.person_gate))
        if isinstance(self.pose_guide, Mapping):
            object.__setattr__(self, "pose_guide", PoseGuideConfig.from_dict(dict(self.pose_guide)))

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes``; unknown names fail with the list of valid ones."""
        _check_names(changes)
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as checkpoints store it."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["scales"] = list(self.scales)
        data["backbone_kwargs"] = dict(self.backbone_kwargs)
        data["head_kwargs"] = dict(self.head_kwargs)
        data["pose_guide"] = self.pose_guide.to_dict() if self.pose_guide is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """The inverse of ``to_dict``; unknown names fail with the list of valid ones."""
        _check_names(data)
        return cls(**data)


def _check_names(names: Mapping[str, Any]) -> None:
    valid = [f.name for f in fields(ModelConfig)]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")


def config_from(config: ModelConfig | Mapping[str, Any] | None = None, /, **options: Any) -> ModelConfig:
    """A ``ModelConfig`` from a config, a dict of options, or keyword options (which override)."""
    if config is None:
        return ModelConfig.from_dict(options)
    base = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    return base.replace(**options) if options else base

