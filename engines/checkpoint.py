"""Checkpoints: weights and metadata in one safetensors file.

safetensors holds only tensors and a JSON header, so loading a checkpoint can never
execute code. The metadata (task, architecture, preprocessing, provenance) is the single
source of truth for how a model was built and how its input must be prepared.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .model import MultiScaleSegmenter, build_model
from .preprocessing import Preprocessing
from .tasks import get_task

FORMAT_NAME = "partcam-checkpoint"
# 2: the architecture is one ``model`` object (engines/config.py). 1: its fields sat at the top
# level; such files still load (``_upgrade``).
FORMAT_VERSION = 2
_HEADER_KEY = "partcam"


class CheckpointError(Exception):
    """A checkpoint could not be used; the message is one line that says why."""


@dataclass
class CheckpointMetadata:
    """A checkpoint's header: what the model is (``model``), how to feed it, and where it came from."""

    model: ModelConfig
    classes: list[str]
    input_size: int
    preprocessing: dict
    trained: bool = False
    trained_on: str = "nothing (random weights)"
    metrics: dict = field(default_factory=dict)
    # How engines feed and resample the network; empty means PartCam's own (grey letterbox,
    # bilinear without corner alignment). Imported Caffe models record Caffe's, see
    # engines/importers/caffe_forward.py.
    inference: dict = field(default_factory=dict)
    notes: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def preprocessing_spec(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> CheckpointMetadata:
        data = _upgrade(dict(data))
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**{**data, "model": ModelConfig.from_dict(data["model"]), "format_version": FORMAT_VERSION})


def _upgrade(data: dict) -> dict:
    """Format 1 → 2: gather the top-level architecture fields into ``model``."""
    if int(data.get("format_version", 1)) >= 2:
        return data
    architecture = {f.name for f in fields(ModelConfig)}
    model = {key: data.pop(key) for key in list(data) if key in architecture}
    model.setdefault("num_classes", len(data.get("classes", [])) or None)
    data["model"] = model
    return data


def metadata_for(model: MultiScaleSegmenter, **overrides) -> CheckpointMetadata:
    """Metadata describing ``model``; keyword arguments fill or override fields."""
    preprocessing = overrides.pop("preprocessing", model.preprocessing)
    if isinstance(preprocessing, Preprocessing):
        preprocessing = preprocessing.to_dict()
    values = {
        "model": model.config,
        "classes": list(get_task(model.config.task).classes),
        "input_size": 321,
        "preprocessing": preprocessing,
    }
    unknown = set(overrides) - {f.name for f in fields(CheckpointMetadata)}
    if unknown:
        raise TypeError(f"unknown checkpoint metadata field(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    return CheckpointMetadata(**values)


def save_checkpoint(path: str | os.PathLike, model: MultiScaleSegmenter, *, half: bool = False,
                    **metadata) -> CheckpointMetadata:
    """Write ``model`` and its metadata atomically (temp file + rename). ``half`` stores fp16 weights."""
    meta = metadata_for(model, **metadata)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.half()
        state[key] = value.contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={_HEADER_KEY: json.dumps(meta.to_dict())})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return meta


def read_metadata(path: str | os.PathLike) -> CheckpointMetadata:
    """Read only the metadata header (cheap; no weights are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            if header_len <= 0 or header_len > min(100_000_000, path.stat().st_size - 8):
                raise CheckpointError(f"{path}: not a PartCam checkpoint (no valid safetensors header)")
            header = json.loads(handle.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt checkpoint header") from None
    raw = (header.get("__metadata__") or {}).get(_HEADER_KEY) if isinstance(header, dict) else None
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without PartCam metadata")
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{path}: not a PartCam checkpoint")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format {data['format_version']} is newer than this "
                                  f"PartCam understands ({FORMAT_VERSION})")
        return CheckpointMetadata.from_dict(data)
    except CheckpointError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed PartCam metadata ({exc})") from None


# State-dict keys never stored in checkpoints: the pose model's weights come from the set-up cache.
NOT_STORED_PREFIXES: tuple[str, ...] = ("pose_guide.pose.",)


@dataclass
class LoadReport:
    """What ``load_weights`` matched: tensors loaded, and those missing, unexpected or of another shape."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "key: file shape vs model shape"

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 8) -> str:
        """One line: the counts, then up to ``limit`` names of each kind."""
        parts = [f"{len(self.loaded)} tensors loaded"]
        for kind, names in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.mismatched)):
            if names:
                more = f", … {len(names) - limit} more" if len(names) > limit else ""
                parts.append(f"{len(names)} {kind}: {', '.join(names[:limit])}{more}")
        return "; ".join(parts)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], *, allow_partial: bool = False,
                 source: str = "checkpoint") -> LoadReport:
    """Load ``state`` into ``model`` by name; anything that does not match is an error listing it.

    ``allow_partial`` loads what matches (name and shape) and returns the report instead, for
    deliberately changed architectures (fine-tuning with a new head, say): the caller reports it.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(NOT_STORED_PREFIXES)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    report = LoadReport(loaded=sorted(usable), missing=missing, unexpected=unexpected, mismatched=mismatched)
    if not report.complete and not allow_partial:
        raise CheckpointError(f"{source}: weights do not match the model ({report.describe()})")
    model.load_state_dict(usable, strict=False)
    return report


def load_checkpoint(path: str | os.PathLike, *, task: str | None = None,
                    device: str | torch.device = "cpu") -> MultiScaleSegmenter:
    """Rebuild the model from a checkpoint. ``task`` checks that the file is for that task.

    The model is returned in eval mode, float32, with ``model.metadata`` attached.
    """
    meta = read_metadata(path)
    if task is not None and meta.task != task:
        raise CheckpointError(f"{path}: checkpoint is for task {meta.task!r}, expected {task!r}")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({first_line})") from None
    try:
        model = build_model(meta.model)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise CheckpointError(f"{path}: cannot build its model: {exc}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        load_weights(model, state, source=f"{path}")
    except CheckpointError as exc:
        model_name = f"{meta.model.backbone}/{meta.model.merge}"
        raise CheckpointError(f"{exc} (the {model_name} model its header describes)") from None
    model.preprocessing = meta.preprocessing_spec
    model.metadata = meta
    return model.to(device).eval()
