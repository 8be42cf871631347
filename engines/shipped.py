"""Which model each task runs by default: the one place the demo server and the offline tools ask.

The checkpoint given wins; else the shipped ``models/<task>.safetensors``; else an untrained network
(random weights) so that a fresh checkout still starts, loudly labelled as untrained.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from . import settings
from .backends import Engine, create_engine
from .model import build_model

log = logging.getLogger("partcam.engine")


def shipped_checkpoint(task: str) -> Path:
    """Where the shipped model of ``task`` lives (``$PARTCAM_MODELS_DIR``; it may be missing in a fresh checkout)."""
    return settings.models_dir() / f"{task}.safetensors"


def model_source(task: str, checkpoint: str | os.PathLike | None = None) -> str | os.PathLike | torch.nn.Module:
    """The checkpoint given, else the shipped one, else an untrained network (with a warning)."""
    if checkpoint:
        return checkpoint
    shipped = shipped_checkpoint(task)
    if shipped.exists():
        return shipped
    log.warning("no trained %s model at %s: using an UNTRAINED network (random weights)", task, shipped)
    return build_model(task=task, backbone="mobilenetv3_large", merge="attention")


def load_default_engine(task: str, checkpoint: str | os.PathLike | None = None, *, backend: str = "auto",
                        input_size: int | None = None) -> Engine:
    """An engine for ``task`` on the default (or given) model; logs what was loaded and how long it took."""
    started = time.perf_counter()
    engine = create_engine(model_source(task, checkpoint), backend=backend, input_size=input_size, task=task)
    log.info("%s: %s engine on %s, input %d px, loaded in %.1f s", task, engine.name, engine.device_name,
             engine.input_size, time.perf_counter() - started)
    return engine


def settle_glue_threads(engines: list[Engine]) -> None:
    """One PyTorch thread when no engine runs its network in PyTorch on the CPU.

    PyTorch then only does the glue around the network (letterboxing, labels). With its default
    thread pool its idle workers spin on the same cores as OpenVINO's, and on a 2-core machine
    each slowed the other several-fold (letterbox 0.45 → 13 ms, the CNN 14 → 41 ms in one test).
    """
    if engines and all(engine.name != "cpu" for engine in engines):
        torch.set_num_threads(1)
