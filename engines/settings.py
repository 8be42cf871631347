"""Where PartCam finds its files: the checkout, the cache, the npm assets and the shipped models.

Every path the engines, the server and the training code need outside the Python packages comes
from here, each overridable by an environment variable. The variables are read on every call,
not at import, so a test or a launcher can set them after PartCam is imported. An empty variable
counts as unset.

==========================  =====================================  ==============================
Function                    Variable                               Default
==========================  =====================================  ==============================
:func:`repo_root`           ``PARTCAM_ROOT``                       the checkout holding engines/
:func:`cache_dir`           ``PARTCAM_CACHE_DIR``                  ``<root>/.cache``
:func:`node_modules`        ``PARTCAM_NODE_MODULES``               ``<root>/node_modules``
:func:`models_dir`          ``PARTCAM_MODELS_DIR``                 ``<root>/models``
:func:`client_dir`          ``PARTCAM_CLIENT_DIR``                 ``<root>/client_web``
:func:`engine_cache_dir`    ``PARTCAM_ENGINE_DIR``                 ``<cache>/engines``
:func:`realbench_dir`       ``PARTCAM_REALBENCH_DIR``              ``<cache>/realbench``
==========================  =====================================  ==============================

This module imports nothing from PartCam, so any module can use it without an import circle.
"""

from __future__ import annotations

import os
from pathlib import Path

# engines/ sits in the checkout's root; PartCam is installed editable (pip install -e .), so this
# is the checkout even when the code is imported from elsewhere.
_ENGINES_DIR = Path(__file__).resolve().parent


def _from_env(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else default


def engines_dir() -> Path:
    """The engines package's source folder (hashed into compiled-program keys); not overridable."""
    return _ENGINES_DIR


def repo_root() -> Path:
    """The PartCam checkout: ``$PARTCAM_ROOT``, else the folder that holds ``engines/``."""
    return _from_env("PARTCAM_ROOT", _ENGINES_DIR.parent)


def cache_dir() -> Path:
    """Downloads and converted files (git-ignored): ``$PARTCAM_CACHE_DIR``, else ``<root>/.cache``."""
    return _from_env("PARTCAM_CACHE_DIR", repo_root() / ".cache")


def node_modules() -> Path:
    """The npm assets ``npm ci`` installs: ``$PARTCAM_NODE_MODULES``, else ``<root>/node_modules``."""
    return _from_env("PARTCAM_NODE_MODULES", repo_root() / "node_modules")


def models_dir() -> Path:
    """The shipped checkpoints (``<task>.safetensors``): ``$PARTCAM_MODELS_DIR``, else ``<root>/models``."""
    return _from_env("PARTCAM_MODELS_DIR", repo_root() / "models")


def client_dir() -> Path:
    """The phone page's static files: ``$PARTCAM_CLIENT_DIR``, else ``<root>/client_web``."""
    return _from_env("PARTCAM_CLIENT_DIR", repo_root() / "client_web")


def engine_cache_dir() -> Path:
    """Compiled OpenVINO and TensorRT programs: ``$PARTCAM_ENGINE_DIR``, else ``<cache>/engines``."""
    return _from_env("PARTCAM_ENGINE_DIR", cache_dir() / "engines")


def realbench_dir() -> Path:
    """The real-photo benchmark's photos: ``$PARTCAM_REALBENCH_DIR``, else ``<cache>/realbench``."""
    return _from_env("PARTCAM_REALBENCH_DIR", cache_dir() / "realbench")


__all__ = [
    "cache_dir",
    "client_dir",
    "engine_cache_dir",
    "engines_dir",
    "models_dir",
    "node_modules",
    "realbench_dir",
    "repo_root",
]
