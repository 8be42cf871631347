"""Training the parts and clothes models together: one shared network, a classifier and attention per task.

The two tasks read the same people, so the backbone and head are shared and run once per scale;
each task keeps its own classifier and scale merge. Every task's model is an ordinary
``MultiScaleSegmenter`` whose backbone and head are the shared modules, so it is saved,
evaluated and served on its own like any other checkpoint. On a CPU this trains both shipped
models for little more than the cost of one.

Labels of several tasks travel through augmentation as one uint8 map (``encode_labels``), so
scaling, cropping and padding treat them identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from engines import build_model
from engines.model import MultiScaleSegmenter
from engines.tasks import get_task

from .datasets.base import IGNORE_INDEX, ParsingDataset, read_label


class JointSegmenter(nn.Module):
    """Several tasks' attention-to-scale models sharing one backbone and head.

    ``forward`` returns ``{task: that model's output}``, computing the shared part once per scale.
    """

    def __init__(self, models: dict[str, MultiScaleSegmenter]) -> None:
        super().__init__()
        if not models:
            raise ValueError("a joint model needs at least one task")
        first = next(iter(models.values()))
        for task, model in models.items():
            if model.net.backbone is not first.net.backbone or model.net.head is not first.net.head:
                raise ValueError(f"the {task!r} model does not share the backbone and head of the others")
            if model.scales != first.scales:
                raise ValueError(f"the {task!r} model runs scales {model.scales}, the others {first.scales}")
        self.tasks = nn.ModuleDict(models)
        self.preprocessing = first.preprocessing

    @property
    def shared(self) -> MultiScaleSegmenter:
        return next(iter(self.tasks.values()))

    def forward(self, x: torch.Tensor) -> dict[str, dict]:
        per_task: dict[str, list[dict]] = {task: [] for task in self.tasks}
        for xs in self.shared.scaled_inputs(x):
            backbone_out, features = self.shared.net.encode(xs)
            for task, model in self.tasks.items():
                per_task[task].append(model.net.classify(backbone_out, features))
        return {task: model.fuse(x, per_task[task]) for task, model in self.tasks.items()}


def task_models(model: nn.Module) -> dict[str, MultiScaleSegmenter]:
    """``{task: MultiScaleSegmenter}``: each task of a joint model, or the one task of a plain model."""
    if isinstance(model, JointSegmenter):
        return dict(model.tasks.items())
    return {model.config.task: model}


def build_joint_model(*, tasks: Sequence[str], **kwargs) -> JointSegmenter:
    """``build_model`` for each task, then one backbone and head shared by all (random weights)."""
    models = {task: build_model(task=task, **kwargs) for task in tasks}
    first = next(iter(models.values()))
    for model in models.values():
        model.net.backbone = first.net.backbone
        model.net.head = first.net.head
    return JointSegmenter(models)


def _label_bases(tasks: Sequence[str]) -> list[int]:
    """Each task's label values take ``num_classes + 1`` codes: its classes plus its ignore slot."""
    bases = [get_task(task).num_classes + 1 for task in tasks]
    if math.prod(bases) > 256:
        raise ValueError(f"the label maps of {', '.join(tasks)} do not fit one uint8 code")
    return bases


def encode_labels(labels: Sequence[np.ndarray], tasks: Sequence[str]) -> np.ndarray:
    """Per-task H×W uint8 maps (255 = ignore) → one uint8 map; all-background stays 0."""
    code = np.zeros(labels[0].shape, dtype=np.int32)
    place = 1
    for label, base in zip(labels, _label_bases(tasks)):
        label = label.astype(np.int32)
        if ((label >= base - 1) & (label != IGNORE_INDEX)).any():
            raise ValueError(f"label values must be below {base - 1} or {IGNORE_INDEX}")
        code += np.where(label == IGNORE_INDEX, base - 1, label) * place
        place *= base
    return code.astype(np.uint8)


def decode_labels(code: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    """The inverse of ``encode_labels`` on a batch: ``{task: labels}`` with 255 for ignored pixels."""
    code = code.long()
    out = {}
    place = 1
    for task, base in zip(tasks, _label_bases(tasks)):
        labels = (code // place) % base
        out[task] = torch.where(labels == base - 1, torch.full_like(labels, IGNORE_INDEX), labels)
        place *= base
    return out


class JointLabels(torch.utils.data.Dataset):
    """One source with labels for several tasks (e.g. the synthetic people): image + encoded labels.

    Built from that source opened once per task; the images must be the same files.
    """

    def __init__(self, datasets: Sequence[ParsingDataset]) -> None:
        if not datasets:
            raise ValueError("no datasets given")
        images = [[image for image, _ in d.samples] for d in datasets]
        if any(paths != images[0] for paths in images[1:]):
            raise ValueError(f"{datasets[0].name}: the tasks' label folders do not cover the same images")
        if any(d.flip_lut() is not None for d in datasets):
            raise ValueError("joint training needs mirror-invariant labels (no left/right classes)")
        self.datasets = list(datasets)
        self.tasks = [d.task for d in datasets]
        self.task = "+".join(self.tasks)
        self.name = datasets[0].name
        self.transform = None

    def __len__(self) -> int:
        return len(self.datasets[0])

    def flip_lut(self) -> None:
        return None

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, first = self.datasets[0].read(index)
        labels = [first] + [d.lut[read_label(d.samples[index][1])] for d in self.datasets[1:]]
        if any(label.shape != first.shape for label in labels):
            raise ValueError(f"{self.datasets[0].samples[index][0]}: the tasks' label maps differ in size")
        return rgb, encode_labels(labels, self.tasks)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        rgb, labels = self.read(int(index))
        return (rgb, labels) if self.transform is None else self.transform(rgb, labels, seed)

    def describe(self) -> str:
        return f"{self.datasets[0].describe()}, labels for {' and '.join(self.tasks)}"

