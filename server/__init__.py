"""PartCam's live demo server: Flask + Flask-SocketIO, phone page, and off-loop inference.

    python -m server --help

Nothing heavy is imported here: ``python -m server`` must monkey-patch for eventlet before
Flask, torch or the engines load.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PartCamServer", "ServerSettings", "create_server"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'server' has no attribute {name!r}")
