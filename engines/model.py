"""The attention-to-scale model: one shared network run at several scales, then merged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import get_backbone_spec
from .heads import HEADS, DetailRefiner, SegmentationNet
from .merge import MERGES, AttentionMerge, AverageMerge, MaxMerge, ScaleMerge, SingleScale
from .person_gate import PersonGate
from .preprocessing import Preprocessing
from .tasks import get_task

DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.75, 0.5)


def scaled_size(length: int, scale: float) -> int:
    """Caffe's shrink rule, (L − 1)·s + 1: 321 px gives 241 and 161, the grids of the paper's models."""
    return max(1, int((length - 1) * scale) + 1)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class MultiScaleSegmenter(nn.Module):
    """Runs ``net`` on the input at each scale with shared weights and merges the score maps.

    Eval mode returns ``{"logits", "attention"}``; train mode adds ``"scale_logits"``, each
    scale's scores on the same grid as ``"logits"``, for the extra supervision loss, and, for a
    person-aware encoder, ``"person_logits"``: its own person mask at scale 1.
    """

    def __init__(self, net: SegmentationNet, scales: Sequence[float], merge: ScaleMerge,
                 person_gate: nn.Module | None = None, refiner: DetailRefiner | None = None,
                 pose_guide: nn.Module | None = None) -> None:
        super().__init__()
        self.person_gate = person_gate
        self.pose_guide = pose_guide
        self.refiner = refiner
        if not scales or scales[0] != 1.0:
            raise ValueError(f"scales must start with 1.0, got {tuple(scales)}")
        self.net = net
        self.scales = tuple(float(s) for s in scales)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor] | None]:
        return self.fuse(x, [self.net(xs) for xs in self.scaled_inputs(x)])

    def scaled_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input at each of the model's scales, scale 1 first."""
        height, width = int(x.shape[-2]), int(x.shape[-1])  # static sizes keep tracing/export simple
        return [x if scale == 1.0 else _resize(x, (scaled_size(height, scale), scaled_size(width, scale)))
                for scale in self.scales]

    def fuse(self, x: torch.Tensor, outputs: Sequence[dict[str, torch.Tensor]]
             ) -> dict[str, torch.Tensor | list[torch.Tensor] | None]:
        """Merge the per-scale network outputs (one per entry of ``scaled_inputs(x)``) into the result."""
        features: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        grid: Sequence[int] | None = None
        person_logits = None
        for out in outputs:
            if grid is None:
                grid = out["logits"].shape[-2:]
                person_logits = out.get("person_logits")
            logits.append(_resize(out["logits"], grid))
            if self.merge.uses_features:
                features.append(_resize(out["features"], grid))
        fused, attention = self.merge(features, logits)
        if self.refiner is not None:  # the merged scores, sharpened at stride 4 by scale 1's early features
            fused = self.refiner(fused, outputs[0]["detail"])
        if self.pose_guide is not None and not self.training:
            # The guide fuses on its own coarser grid: gate straight onto it, not the input's size.
            grid = self.pose_guide.grid(x)
            if self.person_gate is not None:
                fused = self.person_gate(x, fused, size=grid)
            else:
                fused = torch.log_softmax(_resize(fused, grid), dim=1)
            fused = self.pose_guide(x, fused)
        elif self.person_gate is not None and not self.training:
            fused = self.person_gate(x, fused)  # log-probabilities at the input's size
        result: dict[str, torch.Tensor | list[torch.Tensor] | None] = {"logits": fused, "attention": attention}
        if self.training:
            result["scale_logits"] = logits
            if person_logits is not None:
                result["person_logits"] = person_logits
        return result


def build_model(
    *,
    task: str,
    backbone: str = "mobilenetv3_large",
    merge: str = "attention",
    scales: Sequence[float] = DEFAULT_SCALES,
    attention_width: int | None = None,
    backbone_kwargs: dict | None = None,
    head_kwargs: dict | None = None,
    detail_width: int = 0,
    num_classes: int | None = None,
    person_gate: bool = False,
    pose_guide: dict | None = None,
) -> MultiScaleSegmenter:
    """Build an attention-to-scale model with random weights.

    ``merge="single"`` runs scale 1 alone whatever ``scales`` says. ``person_gate`` adds a frozen
    real-photo person segmenter that decides person vs background at inference
    (``engines/person_gate.py``; load its weights with ``load_selfie_weights``). ``detail_width`` > 0
    adds a ``DetailRefiner`` of that width after the merge, for backbones with stride-4
    ``"detail"`` features; the fused scores then come out at stride 4. ``pose_guide`` (settings of
    :class:`engines.pose.guide.PoseGuideConfig`) adds a real-trained pose model whose skeletons
    steer the part labels at inference (its weights come from the set-up cache, not the checkpoint).
    The model carries its
    configuration in ``model.config`` so that checkpoints can record it.
    """
    task_spec = get_task(task)
    spec = get_backbone_spec(backbone)
    if merge not in MERGES:
        raise KeyError(f"unknown merge {merge!r}; valid merges: {', '.join(MERGES)}")
    scales = (1.0,) if merge == "single" else tuple(float(s) for s in scales)
    classes = num_classes if num_classes is not None else task_spec.num_classes
    width = attention_width if attention_width is not None else spec.attention_width

    body = spec.builder(**(backbone_kwargs or {}))
    try:
        head = HEADS[spec.head](body.channels, **(head_kwargs or {}))
    except TypeError as exc:  # an option this backbone's head does not have
        raise ValueError(f"{spec.head} head of {backbone}: bad head_kwargs {head_kwargs!r} ({exc})") from None
    classifier = nn.Conv2d(head.out_channels, classes, 1)
    net = SegmentationNet(body, head, classifier)
    refiner = None
    if detail_width:
        if "detail" not in body.channels:
            raise ValueError(f"{backbone} has no stride-4 detail features for detail_width={detail_width}")
        refiner = DetailRefiner(classes, body.channels["detail"], width=int(detail_width))

    merge_module: ScaleMerge
    if merge == "attention":
        merge_module = AttentionMerge(head.out_channels, len(scales), width=width)
    else:
        merge_module = {"max": MaxMerge, "average": AverageMerge, "single": SingleScale}[merge]()
    gate = PersonGate(spec.preprocessing) if person_gate else None
    guide = None
    if pose_guide is not None:
        from .pose.guide import PoseGuide, PoseGuideConfig

        guide = PoseGuide(PoseGuideConfig.from_dict(pose_guide), spec.preprocessing, task)
    model = MultiScaleSegmenter(net, scales, merge_module, person_gate=gate, refiner=refiner, pose_guide=guide)
    model.config = {
        "task": task,
        "backbone": backbone,
        "merge": merge,
        "scales": list(scales),
        "attention_width": width,
        "backbone_kwargs": dict(backbone_kwargs or {}),
        "head_kwargs": dict(head_kwargs or {}),
        "detail_width": int(detail_width),
        "num_classes": classes,
        "person_gate": bool(person_gate),
        "pose_guide": guide.config.to_dict() if guide is not None else None,
    }
    model.preprocessing = spec.preprocessing
    return model


def add_person_gate(model: MultiScaleSegmenter) -> MultiScaleSegmenter:
    """Give ``model`` a frozen person gate with MediaPipe's selfie weights, in place; returns it.

    The parsing weights are untouched: the gate only moves the person/background decision at
    inference (``engines/person_gate.py``). Works for any backbone, since the gate undoes the
    model's own input normalisation.
    """
    from .backbones.selfie import load_selfie_weights  # converts the npm TFLite file on first use

    if model.person_gate is not None:
        raise ValueError("model already has a person gate")
    gate = PersonGate(model.preprocessing)
    load_selfie_weights(gate)
    model.person_gate = gate.to(next(model.parameters()).device).train(model.training)
    model.config = {**getattr(model, "config", {}), "person_gate": True}
    return model


def add_pose_guide(model: MultiScaleSegmenter, settings: dict | None = None) -> MultiScaleSegmenter:
    """Give a trained ``model`` pose guidance (``engines/pose/guide.py``), in place; returns it.

    ``settings`` are :class:`PoseGuideConfig` fields (defaults for the rest). The network's weights
    are untouched: the guide acts on its output at inference.
    """
    from .pose.guide import PoseGuide, PoseGuideConfig

    config = PoseGuideConfig.from_dict(settings or {})
    guide = PoseGuide(config, model.preprocessing, model.config["task"])
    model.pose_guide = guide.to(next(model.parameters()).device).train(model.training)
    model.config = {**model.config, "pose_guide": config.to_dict()}
    return model


def default_preprocessing(backbone: str) -> Preprocessing:
    """The normalisation a backbone was designed for."""
    return get_backbone_spec(backbone).preprocessing
