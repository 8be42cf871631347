"""The attention-to-scale model: one shared network run at several scales, then merged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import backbone_outputs, get_backbone_spec
from .config import DEFAULT_SCALES, ModelConfig, config_from
from .heads import HEADS, DetailRefiner, SegmentationNet
from .merge import AttentionMerge, AverageMerge, MaxMerge, ScaleMerge, SingleScale
from .person_gate import PersonGate
from .preprocessing import Preprocessing
from .tasks import get_task

__all__ = ["DEFAULT_SCALES", "ModelConfig", "MultiScaleSegmenter", "add_person_gate", "add_pose_guide",
           "build_model", "scaled_size"]


def scaled_size(length: int, scale: float) -> int:
    """Caffe's shrink rule, (L − 1)·s + 1: 321 px gives 241 and 161, the grids of the paper's models."""
    return max(1, int((length - 1) * scale) + 1)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


ScoreKind = Literal["logits", "log_probs"]


class MultiScaleSegmenter(nn.Module):
    """Runs ``net`` on the input at each scale with shared weights and merges the score maps.

    In eval mode the result holds the class scores under one key that says what they are:
    ``"logits"`` (raw scores) for the network alone, ``"log_probs"`` (log-probabilities) once a
    person gate or pose guide has decided them; see :attr:`score_kind`. Either way they lie on a
    grid that spans the whole input (the network's stride-8 grid, the pose guide's 1/4 grid, or
    the input's own pixels), so the labels come from resizing them to the input
    (``engines/predict.py``). ``"attention"`` holds the scale weights or None.

    Train mode returns ``"logits"`` plus ``"scale_logits"``, each scale's scores on the same grid,
    for the extra supervision loss, and, for a person-aware encoder, ``"person_logits"``: its own
    person mask at scale 1.
    """

    metadata: Any  # the CheckpointMetadata it was loaded from; None when built in memory

    def __init__(self, net: SegmentationNet, scales: Sequence[float], merge: ScaleMerge,
                 person_gate: nn.Module | None = None, refiner: DetailRefiner | None = None,
                 pose_guide: nn.Module | None = None, *, config: ModelConfig,
                 preprocessing: Preprocessing) -> None:
        super().__init__()
        self.person_gate = person_gate
        self.pose_guide = pose_guide
        self.refiner = refiner
        if not scales or scales[0] != 1.0:
            raise ValueError(f"scales must start with 1.0, got {tuple(scales)}")
        self.net = net
        self.scales = tuple(float(s) for s in scales)
        self.merge = merge
        self.config = config
        self.preprocessing = preprocessing
        self.metadata = None

    @property
    def score_kind(self) -> ScoreKind:
        """What the eval-mode scores are, and so the key they come under."""
        return "log_probs" if self.person_gate is not None or self.pose_guide is not None else "logits"

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
        kind = "logits" if self.training else self.score_kind
        result: dict[str, torch.Tensor | list[torch.Tensor] | None] = {kind: fused, "attention": attention}
        if self.training:
            result["scale_logits"] = logits
            if person_logits is not None:
                result["person_logits"] = person_logits
        return result


def build_model(config: ModelConfig | Mapping[str, Any] | None = None, /, **options: Any) -> MultiScaleSegmenter:
    """Build an attention-to-scale model with random weights from its description.

    ``config`` is a :class:`ModelConfig` (or its dict form); keyword ``options`` are its fields and
    override it, so ``build_model(task="parts", merge="max")`` also works. ``merge="single"`` runs
    scale 1 alone whatever ``scales`` says. ``person_gate`` adds a frozen real-photo person segmenter
    (``engines/person_gate.py``; load its weights with ``load_selfie_weights``). ``detail_width`` > 0
    adds a ``DetailRefiner`` after the merge, for backbones with stride-4 detail features; the fused
    scores then come out at stride 4. ``pose_guide`` adds a real-trained pose model whose skeletons
    steer the part labels at inference (its weights come from the set-up cache, not the checkpoint).
    ``model.config`` holds the description with every default filled in.
    """
    config = config_from(config, **options)
    task_spec = get_task(config.task)
    spec = get_backbone_spec(config.backbone)
    config = config.replace(
        num_classes=config.num_classes if config.num_classes is not None else task_spec.num_classes,
        attention_width=config.attention_width if config.attention_width is not None else spec.attention_width,
    )
    classes = config.num_classes

    body = spec.builder(**config.backbone_kwargs)
    outputs = backbone_outputs(body, config.backbone)
    try:
        head = HEADS[spec.head](outputs, **config.head_kwargs)
    except TypeError as exc:  # an option this backbone's head does not have
        raise ValueError(f"{spec.head} head of {config.backbone}: bad head_kwargs {dict(config.head_kwargs)!r} "
                         f"({exc})") from None
    classifier = nn.Conv2d(head.out_channels, classes, 1)
    net = SegmentationNet(body, head, classifier)
    refiner = None
    if config.detail_width:
        if outputs.detail is None:
            raise ValueError(f"{config.backbone} has no stride-4 detail features for "
                             f"detail_width={config.detail_width}")
        refiner = DetailRefiner(classes, outputs.detail, width=config.detail_width)

    merge_module: ScaleMerge
    if config.merge == "attention":
        merge_module = AttentionMerge(head.out_channels, len(config.scales), width=config.attention_width,
                                      dropout=config.attention_dropout)
    else:
        merge_module = {"max": MaxMerge, "average": AverageMerge, "single": SingleScale}[config.merge]()
    gate = PersonGate(spec.preprocessing) if config.person_gate else None
    guide = None
    if config.pose_guide is not None:
        from .pose.guide import PoseGuide

        guide = PoseGuide(config.pose_guide, spec.preprocessing, config.task)
    return MultiScaleSegmenter(net, config.scales, merge_module, person_gate=gate, refiner=refiner,
                               pose_guide=guide, config=config, preprocessing=spec.preprocessing)


def add_person_gate(model: MultiScaleSegmenter) -> MultiScaleSegmenter:
    """Give ``model`` a frozen person gate with MediaPipe's selfie weights, in place; returns it.

    The parsing weights are untouched: the gate only moves the person/background decision at
    inference (``engines/person_gate.py``). Works for any backbone, since the gate undoes the
    model's own input normalisation.
    """
    from .importers.selfie_tflite import load_selfie_weights  # converts the npm TFLite file on first use

    if model.person_gate is not None:
        raise ValueError("model already has a person gate")
    gate = PersonGate(model.preprocessing)
    load_selfie_weights(gate)
    model.person_gate = gate.to(next(model.parameters()).device).train(model.training)
    model.config = model.config.replace(person_gate=True)
    return model


def add_pose_guide(model: MultiScaleSegmenter, settings: dict | None = None) -> MultiScaleSegmenter:
    """Give a trained ``model`` pose guidance (``engines/pose/guide.py``), in place; returns it.

    ``settings`` are :class:`PoseGuideConfig` fields (defaults for the rest). The network's weights
    are untouched: the guide acts on its output at inference.
    """
    from .pose.guide import PoseGuide, PoseGuideConfig

    config = PoseGuideConfig.from_dict(settings or {})
    guide = PoseGuide(config, model.preprocessing, model.config.task)
    model.pose_guide = guide.to(next(model.parameters()).device).train(model.training)
    model.config = model.config.replace(pose_guide=config)
    return model

