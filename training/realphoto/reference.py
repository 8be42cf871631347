"""An independent person mask for real photos: MediaPipe Pose (BlazePose) on person crops.

BlazePose's landmark model (npm ``@mediapipe/pose``, Apache-2.0) predicts 39 landmarks and a person
segmentation for a 256×256 crop centred on one person. We run it with the ``ai-edge-litert``
interpreter and, as MediaPipe's own tracking graph does, derive each next crop from the previous
pass's landmarks:

1. Pass 0 sees the whole photo, centred in a square the size of its longer side.
2. Each later pass crops the square MediaPipe's ``PoseLandmarksToRoi`` graph would: centred on the
   auxiliary hip-centre landmark (33), side 2 × its distance to the auxiliary "above the head"
   landmark (34), scaled by 1.5. We keep the crop upright (these photos are). On head-and-shoulders
   photos the hips lie below the frame and each pass extrapolates them a little further, so the
   side is capped at twice the photo's longer side.
3. Crops are resampled bilinearly from the photo (PIL, antialiased when shrinking); where a crop
   leaves the photo it is filled with mid grey (our choice: the network is fed grey padding too).
   Input is float32 RGB in [0, 1], as MediaPipe's ``ImageToTensorCalculator`` produces.
4. The segmentation output (``Identity_2``, 1×256×256×1 logits) goes through a sigmoid, as in
   MediaPipe's ``TensorsToSegmentationCalculator``, and is mapped back onto the photo bilinearly;
   pixels outside a crop get 0.
5. The reference probability is the mean over the refined passes (3 by default; pass 0 is only for
   locating the person). Single passes disagreed with each other by up to 0.16 IoU on the cameraman
   photo (a stray blob on the horizon in some); their mean was the cleanest by eye.

This model is not the selfie-segmentation model inside the network, so comparing against it is not
circular. It segments one person per crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.special import expit

from engines import settings

MODEL_VARIANTS = ("lite", "full", "heavy")
INPUT_SIZE = 256
NUM_LANDMARKS = 39
HIP_CENTRE, ABOVE_HEAD = 33, 34
ROI_SCALE = 1.5
PAD_GREY = 128
NOT_INSTALLED = "node_modules/@mediapipe/pose is missing: run `npm ci` (npm @mediapipe/pose@0.5.1675469404)"


def model_path(variant: str = "heavy") -> Path:
    """The landmark model file for ``variant`` (lite, full or heavy) inside node_modules (engines.settings)."""
    if variant not in MODEL_VARIANTS:
        raise KeyError(f"unknown BlazePose variant {variant!r}; valid: {', '.join(MODEL_VARIANTS)}")
    return settings.node_modules() / "@mediapipe" / "pose" / f"pose_landmark_{variant}.tflite"


@dataclass(frozen=True)
class SquareRoi:
    """An upright square crop in photo pixel coordinates (continuous, pixel centres at +0.5)."""

    centre_x: float
    centre_y: float
    side: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        half = self.side / 2
        return (self.centre_x - half, self.centre_y - half, self.centre_x + half, self.centre_y + half)


@dataclass
class ReferenceMask:
    """BlazePose's answer for one photo."""

    probability: np.ndarray  # H×W float32 person probability in [0, 1]
    landmarks: np.ndarray  # 39×2 float32 (x, y) in photo pixels, from the last pass
    presence: float  # the model's pose-presence score on the last crop
    rois: list[SquareRoi] = field(default_factory=list)  # the refined crops whose masks were averaged

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        return self.probability > threshold


@dataclass
class PersonPose:
    """BlazePose's answer for one person: landmarks in photo pixels, their visibility in [0, 1],
    and the person mask mapped onto the photo (0 outside the crop)."""

    landmarks: np.ndarray  # 39×2 float32 (x, y)
    visibility: np.ndarray  # 39 float32
    presence: float
    probability: np.ndarray  # H×W float32
    roi: SquareRoi


def whole_photo_roi(height: int, width: int) -> SquareRoi:
    return SquareRoi(width / 2, height / 2, float(max(height, width)))


def roi_from_landmarks(landmarks: np.ndarray) -> SquareRoi:
    """MediaPipe's ``PoseLandmarksToRoi`` rule, kept upright: hip centre, 2 × hip-to-head, × 1.5."""
    hip, head = landmarks[HIP_CENTRE], landmarks[ABOVE_HEAD]
    side = 2.0 * float(np.hypot(*(head - hip))) * ROI_SCALE
    return SquareRoi(float(hip[0]), float(hip[1]), side)


def crop_square(rgb: np.ndarray, roi: SquareRoi, size: int = INPUT_SIZE) -> np.ndarray:
    """Resample ``roi`` of ``rgb`` to size×size, grey outside the photo. Returns uint8 RGB."""
    height, width = rgb.shape[:2]
    left, top, right, bottom = roi.box
    # Paste the photo into a grey canvas that contains the whole ROI, then resample the ROI box.
    pad_left, pad_top = max(0, int(np.ceil(-left))), max(0, int(np.ceil(-top)))
    pad_right, pad_bottom = max(0, int(np.ceil(right - width))), max(0, int(np.ceil(bottom - height)))
    canvas = np.full((height + pad_top + pad_bottom, width + pad_left + pad_right, 3), PAD_GREY, np.uint8)
    canvas[pad_top:pad_top + height, pad_left:pad_left + width] = rgb
    box = (left + pad_left, top + pad_top, right + pad_left, bottom + pad_top)
    resized = Image.fromarray(canvas).resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized)


def uncrop_probability(probability: np.ndarray, roi: SquareRoi, height: int, width: int) -> np.ndarray:
    """Map a size×size crop-space map back onto the H×W photo (bilinear, 0 outside the crop)."""
    size = probability.shape[0]
    left, top, _, _ = roi.box
    scale = size / roi.side
    rows = (np.arange(height, dtype=np.float32) + 0.5 - top) * scale - 0.5
    cols = (np.arange(width, dtype=np.float32) + 0.5 - left) * scale - 0.5
    grid_r, grid_c = np.meshgrid(rows, cols, indexing="ij")
    out = map_coordinates(probability.astype(np.float32), [grid_r, grid_c], order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return expit(x)


class BlazePoseReference:
    """Runs BlazePose's landmark model over refined person crops and returns a photo-sized mask."""

    def __init__(self, variant: str = "heavy", *, threads: int = 2, refinements: int = 3) -> None:
        from ai_edge_litert.interpreter import Interpreter

        path = model_path(variant)
        if not path.is_file():
            raise FileNotFoundError(NOT_INSTALLED)
        self.variant = variant
        if refinements < 1:
            raise ValueError("at least one refined pass is needed: pass 0 only locates the person")
        self.refinements = refinements
        self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in self._interpreter.get_output_details()}
        # Output order as MediaPipe's TensorsToPoseLandmarksAndSegmentation graph splits them.
        self._landmarks = outputs["Identity"]  # 1×195: 39 × (x, y, z, visibility, presence) in crop pixels
        self._presence = outputs["Identity_1"]  # 1×1 pose-presence score
        self._segmentation = outputs["Identity_2"]  # 1×256×256×1 logits

    def run_crop(self, crop: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """One pass on a 256×256 uint8 RGB crop: landmarks (39×2, crop pixels), presence, probability."""
        raw, presence, probability = self.run_crop_raw(crop)
        return raw[:, :2].copy(), presence, probability

    def run_crop_raw(self, crop: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """As :meth:`run_crop`, with all five values per landmark: x, y, z, visibility and presence
        (the last two are logits)."""
        tensor = (crop.astype(np.float32) / 255.0)[None]
        self._interpreter.set_tensor(self._input, tensor)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._landmarks).reshape(NUM_LANDMARKS, 5).copy()
        presence = float(self._interpreter.get_tensor(self._presence).reshape(-1)[0])
        logits = self._interpreter.get_tensor(self._segmentation)[0, :, :, 0]
        return raw, presence, _sigmoid(logits).astype(np.float32)

    def person(self, rgb: np.ndarray, box: tuple[int, int, int, int], *, margin: float = 1.25) -> PersonPose:
        """Landmarks and mask of the one person inside ``box`` (x0, y0, x1, y1), e.g. drawn by hand.

        The crop is the square around the box, ``margin`` times its longer side, as BlazePose's
        detector would give. One refined pass follows (MediaPipe's own ROI rule) when it stays on
        this person: its hip centre must lie inside the box, else the first pass is kept, so that
        in a group the crop cannot wander to a neighbour."""
        height, width = rgb.shape[:2]
        x0, y0, x1, y1 = box
        roi = SquareRoi((x0 + x1) / 2, (y0 + y1) / 2, margin * max(x1 - x0, y1 - y0))
        best = None
        for _ in range(2):
            raw, presence, probability = self.run_crop_raw(crop_square(rgb, roi))
            landmarks = np.asarray(roi.box[:2], np.float32) + raw[:, :2] * (roi.side / INPUT_SIZE)
            hip_x, hip_y = landmarks[HIP_CENTRE]
            if best is not None and not (x0 <= hip_x <= x1 and y0 <= hip_y <= y1):
                break
            best = PersonPose(landmarks=landmarks, visibility=_sigmoid(raw[:, 3]).astype(np.float32),
                              presence=presence, probability=uncrop_probability(probability, roi, height, width),
                              roi=roi)
            refined = roi_from_landmarks(landmarks)
            roi = SquareRoi(refined.centre_x, refined.centre_y,
                            float(np.clip(refined.side, 16.0, 2.0 * max(height, width))))
        return best

    def __call__(self, rgb: np.ndarray) -> ReferenceMask:
        height, width = rgb.shape[:2]
        max_side = 2.0 * max(height, width)
        roi = whole_photo_roi(height, width)
        rois: list[SquareRoi] = []
        probabilities: list[np.ndarray] = []
        for pass_index in range(self.refinements + 1):
            crop_landmarks, presence, probability = self.run_crop(crop_square(rgb, roi))
            landmarks = np.asarray(roi.box[:2], np.float32) + crop_landmarks * (roi.side / INPUT_SIZE)
            if pass_index > 0:
                rois.append(roi)
                probabilities.append(uncrop_probability(probability, roi, height, width))
            roi = roi_from_landmarks(landmarks)
            roi = SquareRoi(roi.centre_x, roi.centre_y, float(np.clip(roi.side, 16.0, max_side)))
        return ReferenceMask(
            probability=np.mean(probabilities, axis=0).astype(np.float32),
            landmarks=landmarks,
            presence=presence,
            rois=rois,
        )
