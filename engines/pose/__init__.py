"""Real-trained person pose models, ported to PyTorch so every PartCam backend can compile them."""

from .movenet import (
    KEYPOINT_NAMES,
    Letterbox,
    MoveNetMultiPose,
    decode_multipose,
    letterbox,
    load_movenet,
    movenet_layout,
)

__all__ = [
    "KEYPOINT_NAMES", "Letterbox", "MoveNetMultiPose", "decode_multipose", "letterbox", "load_movenet",
    "movenet_layout",
]
