"""Checkpoints: weights and metadata in one safetensors file.

safetensors holds only tensors and a JSON header, so loading a checkpoint can never
execute code. The metadata (task, architecture, preprocessing, provenance) is the single
source of truth for how a model was built and how its input must be prepared.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import MultiScaleSegmenter, build_model
from .preprocessing import Preprocessing
from .tasks import get_task

FORMAT_NAME = "partcam-checkpoint"
FORMAT_VERSION = 1
_HEADER_KEY = "partcam"


class CheckpointError(Exception):
    """A checkpoint could not be used; the message is one line that says why."""


@dataclass
class CheckpointMetadata:
    task: str
    classes: list[str]
    backbone: str
    merge: str
    scales: list[float]
    input_size: int
    preprocessing: dict
    attention_width: int
    backbone_kwargs: dict = field(default_factory=dict)
    head_kwargs: dict = field(default_factory=dict)
    detail_width: int = 0
    person_gate: bool = False
    pose_guide: dict | None = None  # PoseGuideConfig settings; None: no pose guidance
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
    def preprocessing_spec(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)


def metadata_for(model: MultiScaleSegmenter, **overrides) -> CheckpointMetadata:
    """Metadata describing ``model``; keyword arguments fill or override fields."""
    config = model.config
    preprocessing = overrides.pop("preprocessing", model.preprocessing)
    if isinstance(preprocessing, Preprocessing):
        preprocessing = preprocessing.to_dict()
    values = {
        "task": config["task"],
        "classes": list(get_task(config["task"]).classes),
        "backbone": config["backbone"],
        "merge": config["merge"],
        "scales": list(config["scales"]),
        "input_size": 321,
        "preprocessing": preprocessing,
        "attention_width": config["attention_width"],
        "backbone_kwargs": dict(config.get("backbone_kwargs", {})),
        "head_kwargs": dict(config.get("head_kwargs", {})),
        "detail_width": int(config.get("detail_width", 0)),
        "person_gate": bool(config.get("person_gate", False)),
        "pose_guide": config.get("pose_guide"),
    }
    unknown = set(overrides) - set(CheckpointMetadata.__dataclass_fields__)
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
        save_file(state, tmp, metadata={_HEADER_KEY: json.dumps(asdict(meta))})
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
        return CheckpointMetadata(**data)
    except CheckpointError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed PartCam metadata ({exc})") from None


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
        model = build_model(task=meta.task, backbone=meta.backbone, merge=meta.merge, scales=meta.scales,
                            attention_width=meta.attention_width, backbone_kwargs=meta.backbone_kwargs,
                            head_kwargs=meta.head_kwargs, detail_width=meta.detail_width,
                            num_classes=len(meta.classes), person_gate=meta.person_gate,
                            pose_guide=meta.pose_guide)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise CheckpointError(f"{path}: cannot build its model: {exc}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "shape mismatch")
        raise CheckpointError(f"{path}: weights do not fit the {meta.backbone}/{meta.merge} model ({reason})") from None
    # The pose model's weights are not in checkpoints: they come from the set-up cache.
    missing = [k for k in missing if not k.startswith("pose_guide.pose.")]
    if missing or unexpected:
        detail = ", ".join([*(f"missing {k}" for k in missing[:3]), *(f"unexpected {k}" for k in unexpected[:3])])
        raise CheckpointError(f"{path}: weights do not match the {meta.backbone}/{meta.merge} model ({detail})")
    model.preprocessing = meta.preprocessing_spec
    model.metadata = meta
    return model.to(device).eval()
