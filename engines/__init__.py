"""PartCam engines: the attention-to-scale network, its checkpoints and its runtimes.

    from engines import TASKS, build_model, save_checkpoint, load_checkpoint, create_engine
"""

from .backbones import BACKBONES, get_backbone_spec, load_torchvision_weights
from .backends import BACKENDS, BackendUnavailable, Engine, Prediction, create_engine
from .checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    LoadReport,
    load_checkpoint,
    load_weights,
    read_metadata,
    save_checkpoint,
)
from .config import ModelConfig
from .merge import MERGES
from .model import DEFAULT_SCALES, MultiScaleSegmenter, add_person_gate, build_model
from .preprocessing import Preprocessing
from .tasks import TASKS, Task, get_task

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "BACKENDS",
    "DEFAULT_SCALES",
    "MERGES",
    "TASKS",
    "BackendUnavailable",
    "CheckpointError",
    "CheckpointMetadata",
    "Engine",
    "LoadReport",
    "ModelConfig",
    "MultiScaleSegmenter",
    "Prediction",
    "Preprocessing",
    "Task",
    "add_person_gate",
    "build_model",
    "create_engine",
    "get_backbone_spec",
    "get_task",
    "load_checkpoint",
    "load_torchvision_weights",
    "load_weights",
    "read_metadata",
    "save_checkpoint",
]
