"""Where a training run's model comes from: its description and its starting weights.

A run started from a checkpoint (``--init``) is built as that checkpoint describes; options are
needed only to change it (:func:`starting_config`). Its weights must then load completely:
anything missing, unexpected or of another shape is an error that lists it, unless a partial
load is asked for, and then it is reported (:func:`initialise`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from engines import CheckpointError, ModelConfig, build_model, load_torchvision_weights, read_metadata
from engines.checkpoint import load_weights

from .multitask import build_joint_model, task_models

# ModelConfig fields an old run's saved command line held, from before runs stored the description.
_LEGACY_MODEL_OPTIONS = ("task", "backbone", "merge", "scales", "attention_width", "backbone_kwargs", "head_kwargs",
                         "detail_width")
# Parts of a checkpoint that act at inference only and are added by scripts/package_model.py: training
# leaves them out, so that validation scores the network itself, as before they existed.
_INFERENCE_ONLY = {"person_gate": False, "pose_guide": None}
_INFERENCE_ONLY_TENSORS = ("person_gate.",)


def tasks_of(config: ModelConfig) -> list[str]:
    """The tasks a description trains: ``task`` may join several with ``+`` for joint training."""
    return config.task.split("+")


def build_training_model(config: ModelConfig) -> torch.nn.Module:
    """A model of ``config`` with random weights; a joint task gives one network shared by its tasks."""
    tasks = tasks_of(config)
    if len(tasks) == 1:
        return build_model(config)
    options = {k: v for k, v in config.to_dict().items() if k not in ("task", "num_classes")}
    return build_joint_model(tasks=tasks, **options)


def resolved_config(model: torch.nn.Module, task: str) -> ModelConfig:
    """The description of a built training model, every default filled in (what ``last.pt`` stores)."""
    models = task_models(model)
    first = next(iter(models.values())).config
    return first if len(models) == 1 else first.replace(task=task, num_classes=None)


def run_model_config(state: Mapping[str, Any]) -> ModelConfig:
    """The model description saved in a run's ``last.pt`` (older runs saved their command line instead)."""
    if "model_config" in state:
        return ModelConfig.from_dict(state["model_config"])
    args = state["args"]
    return ModelConfig.from_dict({k: args[k] for k in _LEGACY_MODEL_OPTIONS if k in args})


def apply_changes(base: ModelConfig, changes: Mapping[str, Any]) -> ModelConfig:
    """``base`` with ``changes``; what followed from a changed task or backbone goes back to its default."""
    changes = dict(changes)
    if changes.get("task", base.task) != base.task:
        changes.setdefault("num_classes", None)  # the new task's own class count
    if changes.get("backbone", base.backbone) != base.backbone:
        changes.setdefault("attention_width", None)  # the new backbone's
    return base.replace(**changes)


def starting_config(init: Sequence[str | os.PathLike], changes: Mapping[str, Any] | None = None
                    ) -> tuple[ModelConfig, list[str]]:
    """The model a run starts from, and notes on what was left out.

    With checkpoints to start from, the description is the last one's (a joint run's shared network
    comes from it), its task the tasks of all of them joined with ``+``; without, ModelConfig's
    defaults for the parts task. ``changes`` (ModelConfig fields) apply on top. A checkpoint's
    person gate and pose guide are left out: they act at inference and are added when packaging.
    """
    notes: list[str] = []
    if not init:
        return apply_changes(ModelConfig(task="parts"), changes or {}), notes
    tasks: list[str] = []
    for path in init:
        config = _checkpoint_config(Path(path))
        tasks += [task for task in tasks_of(config) if task not in tasks]
    base = config.replace(task="+".join(tasks)) if len(tasks) > 1 else config
    if base.num_classes is not None and "+" in base.task:
        base = base.replace(num_classes=None)
    dropped = [name for name, plain in _INFERENCE_ONLY.items() if getattr(base, name) != plain]
    if dropped:
        base = base.replace(**_INFERENCE_ONLY)
        notes.append(f"{' and '.join(n.replace('_', ' ') for n in dropped)} of the checkpoint left out: inference "
                     f"only, added back when packaging (scripts/package_model.py)")
    return apply_changes(base, changes or {}), notes


def _checkpoint_config(path: Path) -> ModelConfig:
    if path.suffix == ".pt":
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return run_model_config(torch.load(path, map_location="cpu", weights_only=True))
    return read_metadata(path).model


def _torchvision_backbone(model: torch.nn.Module, path: str) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = load_torchvision_weights(model.net.backbone, state)
    return f"torchvision ImageNet weights from {path} ({len(missing)} backbone tensors left random)"


def _selfie_backbone(model: torch.nn.Module, path: str) -> str:
    from engines.importers.selfie_tflite import load_selfie_weights

    load_selfie_weights(model)
    return ("encoder initialised from MediaPipe selfie segmentation (npm @mediapipe/selfie_segmentation, "
            "Apache-2.0), pretrained on real photos")


# KIND:PATH for pretrained_backbone. Other encoders plug in here, or as "package.module:function:PATH"
# (called as function(model, path) -> description) without editing this file.
BACKBONE_INITIALISERS = {"torchvision": _torchvision_backbone, "selfie": _selfie_backbone}


def load_backbone(model: torch.nn.Module, spec: str) -> str:
    """Load pretrained encoder weights as ``KIND:PATH`` says into ``model``'s (shared) backbone; returns a note."""
    shared = next(iter(task_models(model).values()))  # a joint model's tasks share its backbone
    kind, _, path = spec.partition(":")
    if kind in BACKBONE_INITIALISERS:
        return BACKBONE_INITIALISERS[kind](shared, path)
    function, _, path = path.partition(":")
    if not function or not path:
        raise ValueError(f"pretrained backbone {spec!r}: unknown kind {kind!r}; use "
                         f"{', '.join(BACKBONE_INITIALISERS)}:PATH or package.module:function:PATH")
    return str(getattr(importlib.import_module(kind), function)(shared, path))


def initialise(model: torch.nn.Module, init: Sequence[str | os.PathLike], *, allow_partial: bool = False
               ) -> list[str]:
    """Load each checkpoint of ``init`` into ``model``, in order; returns notes for the checkpoints.

    A run's ``last.pt`` loads into the whole model. A PartCam checkpoint of one of the model's
    tasks loads into that task's model (and so the shared network); one of another task into every
    task's. Anything that does not match raises :class:`CheckpointError` listing it, unless
    ``allow_partial``: then what matches loads and the note says what did not.
    """
    models = task_models(model)
    notes = []
    for path in init:
        if str(path).endswith(".pt"):  # another run's training state: the whole model
            state = torch.load(path, map_location="cpu", weights_only=True)["model"]
            targets = {"the whole model": model}
        else:
            task = read_metadata(path).task
            state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
            targets = {task: models[task]} if task in models else models
        for name, target in targets.items():
            own = target.state_dict()
            usable = {k: v for k, v in state.items() if k in own or not k.startswith(_INFERENCE_ONLY_TENSORS)}
            try:
                report = load_weights(target, usable, allow_partial=allow_partial, source=f"{path} into {name}")
            except CheckpointError as error:
                raise CheckpointError(f"{error}; a changed model may start from what matches with a partial "
                                      f"load (--allow-partial)") from None
            detail = f"all {len(report.loaded)} tensors" if report.complete else f"partial: {report.describe()}"
            notes.append(f"{name}: initialised from {path} ({detail})")
    return notes
