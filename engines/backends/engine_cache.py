"""Where compiled TensorRT programs live, and the key that says whether one still fits.

A TensorRT engine is only valid for the exact weights, input shape and precision it was
built for, with the forward code that defined its graph (the source of ``engines/``), on the
GPU model and the torch / torch-tensorrt / TensorRT versions that built it.
``scripts/build_engine.py`` saves each program beside a ``key.json`` holding all of
those; the ``tensorrt`` backend recomputes the key at start-up and refuses a program whose
key differs, instead of running a stale engine that may crash or silently mislead.

Layout: ``<cache>/<backbone>-<merge>-<size>px-b<batch>-<precision>-<model hash[:12]>/``
holding ``program.ep`` (the exported program) and ``key.json``. Nothing here imports
torch-tensorrt, so keys can be computed and checked on any machine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from .. import settings
from .base import BackendUnavailable

KEY_FORMAT = 2  # 2: the forward code's digest is part of the key
PROGRAM_FILE = "program.ep"
KEY_FILE = "key.json"
PRECISIONS: tuple[str, ...] = ("fp16", "fp32")


class StaleEngine(BackendUnavailable):
    """A built program exists but was made for other weights, shapes, GPU or library versions."""


@dataclass(frozen=True)
class EngineKey:
    """Everything a compiled TensorRT program depends on."""

    model_sha256: str  # the checkpoint's weights and architecture, see model_sha256()
    backbone: str
    merge: str
    input_size: int
    batch: int
    precision: str
    gpu: str
    torch: str
    torch_tensorrt: str
    tensorrt: str
    code: str = ""  # network_code_digest(): the source that defines the compiled graph
    key_format: int = KEY_FORMAT

    def digest(self) -> str:
        """A stable hash of the whole key (field order independent)."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def folder_name(self) -> str:
        """Names the build by what it computes; GPU and versions are checked from key.json."""
        return (f"{self.backbone}-{self.merge}-{self.input_size}px-b{self.batch}-{self.precision}-"
                f"{self.model_sha256[:12]}")

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable ``field: built for X, here Y`` lines for every field that differs."""
        return [f"{f.name}: built for {getattr(other, f.name)!r}, here {getattr(self, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineKey:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def model_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's architecture (its ``config``), preprocessing and float32 weights.

    Hashing the loaded model rather than the file means the same checkpoint is recognised
    whether it arrives as a path or as a model, and that metadata-only edits (notes,
    metrics) do not invalidate a build; any change to a weight does.
    """
    digest = hashlib.sha256()
    # The same dict form as before ModelConfig, so existing builds keep their keys.
    header = {"config": model.config.to_dict(), "preprocessing": model.preprocessing.to_dict()}
    inference = model.metadata.inference if model.metadata is not None else None
    if inference:  # Caffe's resizing is part of what the program computes (older keys stay as they were)
        header["inference"] = inference
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.float()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def network_code_digest(root: str | os.PathLike | None = None) -> str:
    """SHA-256 of the Python source under ``engines/`` (paths and contents).

    A compiled program freezes the forward pass; any edit to the code that defines it must
    invalidate the build rather than load a stale engine silently (as the OpenVINO cache does).
    """
    root = Path(root) if root is not None else settings.engines_dir()
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def runtime_versions() -> dict[str, str]:
    """torch, torch-tensorrt and TensorRT versions as installed here ("not installed" if absent)."""
    tensorrt = _package_version("tensorrt")
    if tensorrt == "not installed":  # the metapackage may be absent beside tensorrt-cu13 and friends
        tensorrt = next((v for n in ("tensorrt-cu13", "tensorrt-cu12")
                         if (v := _package_version(n)) != "not installed"), tensorrt)
    return {"torch": torch.__version__, "torch_tensorrt": _package_version("torch-tensorrt"), "tensorrt": tensorrt}


def gpu_name(device: torch.device | int | None = None) -> str:
    """The CUDA device's name, or "no GPU"."""
    if not torch.cuda.is_available():
        return "no GPU"
    return torch.cuda.get_device_name(device)


def make_key(model: torch.nn.Module, *, input_size: int, batch: int, precision: str,
             gpu: str | None = None, versions: dict[str, str] | None = None,
             model_hash: str | None = None, code: str | None = None) -> EngineKey:
    """The key for building or loading ``model`` here (GPU, versions and code default to this machine's)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown TensorRT precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if int(input_size) < 1 or int(batch) < 1:
        raise ValueError("input size and batch must be positive")
    versions = versions if versions is not None else runtime_versions()
    return EngineKey(
        model_sha256=model_hash or model_sha256(model),
        backbone=model.config.backbone,
        merge=model.config.merge,
        input_size=int(input_size),
        batch=int(batch),
        precision=precision,
        gpu=gpu if gpu is not None else gpu_name(),
        torch=versions["torch"],
        torch_tensorrt=versions["torch_tensorrt"],
        tensorrt=versions["tensorrt"],
        code=code if code is not None else network_code_digest(),
    )


def default_cache_dir() -> Path:
    """``$PARTCAM_ENGINE_DIR``, else ``engines/`` in the cache (see engines/settings.py)."""
    return settings.engine_cache_dir()


def rebuild_command(key: EngineKey, checkpoint: str | os.PathLike = "CHECKPOINT") -> str:
    """The build_engine.py command that makes ``key``'s program for ``checkpoint``."""
    return (f"python scripts/build_engine.py --checkpoint {checkpoint} --input-size {key.input_size} "
            f"--batch {key.batch} --precision {key.precision}")


def read_key(folder: str | os.PathLike) -> EngineKey:
    """The key saved beside a built program; a missing or unreadable one is a StaleEngine error."""
    path = Path(folder) / KEY_FILE
    try:
        return EngineKey.from_json(path.read_text())
    except FileNotFoundError:
        raise StaleEngine(f"{path} is missing, so the engine in {folder} cannot be checked") from None
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise StaleEngine(f"{path} is unreadable ({exc})") from None


def check_key(expected: EngineKey, found: EngineKey, folder: str | os.PathLike,
              checkpoint: str | os.PathLike = "CHECKPOINT") -> None:
    """Refuse a program built for something else, saying what differs and how to rebuild."""
    differences = expected.differences(found)
    if differences:
        # The code digest is long and says nothing to a reader: name it without its value.
        differences = [("code: the forward code changed since the build" if line.startswith("code:") else line)
                       for line in differences]
        raise StaleEngine(f"the TensorRT engine in {folder} is stale ({'; '.join(differences)}); "
                          f"rebuild it with: {rebuild_command(expected, checkpoint)}")


def write_key(folder: str | os.PathLike, key: EngineKey) -> Path:
    """Write key.json atomically, so a crashed build never leaves a key for a half-written program."""
    path = Path(folder) / KEY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(key.to_json())
    os.replace(tmp, path)
    return path


def built_batches(cache_dir: str | os.PathLike, expected: EngineKey) -> list[int]:
    """Batch sizes built in ``cache_dir`` for the same model, input size and precision (any versions)."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    prefix = f"{expected.backbone}-{expected.merge}-{expected.input_size}px-b"
    suffix = f"-{expected.precision}-{expected.model_sha256[:12]}"
    batches = []
    for folder in root.iterdir():
        name = folder.name
        if name.startswith(prefix) and name.endswith(suffix) and (folder / PROGRAM_FILE).is_file():
            batch = name[len(prefix):-len(suffix)]
            if batch.isdigit():
                batches.append(int(batch))
    return sorted(batches)
