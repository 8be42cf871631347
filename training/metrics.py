"""Confusion matrix, per-class IoU and mIoU, and the loop that scores a model on a dataset.

IoU_c = TP_c / (TP_c + FP_c + FN_c) from a confusion matrix accumulated over the whole set
(not averaged per image), as in the paper and the datasets' own evaluation code. mIoU is the
mean over the classes the dataset can score (LIP and CIHP have no bag) whose union is non-empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np
import torch
from torch.nn import functional as F

from engines.backends.base import Engine
from engines.predict import predict_labels
from engines.tasks import IGNORE_INDEX, get_task

# How much of the image the people cover (labelled non-background pixels over labelled pixels).
# The bounds split the synthetic test set (seed 999) into roughly 30/40/30%: full bodies small in
# the frame, mid shots, close-ups. Scale merging is about exactly this axis.
PERSON_SIZES: tuple[tuple[str, float, float], ...] = (("small", 0.0, 0.10), ("medium", 0.10, 0.30),
                                                       ("large", 0.30, 1.0))


def confusion_matrix(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """C×C int64 counts; rows are ground truth, columns predictions. ``ignore_index`` pixels are skipped."""
    pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    target = target.cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != label shape {target.shape}")
    target = target.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = target[keep] * num_classes + np.clip(pred[keep], 0, num_classes - 1)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN where the class is neither in the labels nor predicted."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Mean IoU over ``classes`` (default all), skipping NaNs; NaN if nothing can be scored."""
    iou = iou_per_class(confusion)
    if classes is not None:
        iou = iou[list(classes)]
    iou = iou[~np.isnan(iou)]
    return float(iou.mean()) if iou.size else float("nan")


def pixel_accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def summarise(confusion: np.ndarray, class_names: Sequence[str], classes: Sequence[int] | None = None) -> dict:
    """A JSON-ready result: IoU per class name (None where not scored), mIoU, pixel accuracy, matrix."""
    iou = iou_per_class(confusion)
    scored = set(range(len(class_names)) if classes is None else classes)
    return {
        "miou": mean_iou(confusion, sorted(scored)),
        "pixel_accuracy": pixel_accuracy(confusion),
        "iou": {name: (None if i not in scored or np.isnan(iou[i]) else float(iou[i]))
                for i, name in enumerate(class_names)},
        "confusion": confusion.astype(int).tolist(),
    }


def person_size(labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> str:
    """The ``PERSON_SIZES`` bin of a label map: the share of labelled pixels that are not background."""
    labelled = labels != ignore_index
    share = float((labelled & (labels != 0)).sum()) / max(1, int(labelled.sum()))
    for name, _, high in PERSON_SIZES:  # contiguous bins from 0
        if share < high:
            return name
    return PERSON_SIZES[-1][0]


# Distance bands (pixels, chessboard distance) from the ground-truth person outline, for
# ``error_distances``: where a model's mistakes lie says whether sharper boundaries or better
# recognition would pay more.
OUTLINE_RADII: tuple[int, ...] = (2, 4, 8, 16)
ERROR_KINDS: tuple[str, ...] = ("background_as_person", "person_as_background", "wrong_part")


def outline_bands(person: torch.Tensor, radii: Sequence[int] = OUTLINE_RADII) -> torch.Tensor:
    """For an H×W bool person mask, each pixel's band: 0 within ``radii[0]`` pixels of the other
    side of the outline, 1 within ``radii[1]``, …, ``len(radii)`` farther (or no outline at all)."""
    inside = person.float()[None, None]
    bands = torch.full(person.shape, len(radii), dtype=torch.long)
    for band in reversed(range(len(radii))):
        r = radii[band]
        near_person = F.max_pool2d(inside, 2 * r + 1, stride=1, padding=r)[0, 0] > 0
        near_background = F.max_pool2d(1 - inside, 2 * r + 1, stride=1, padding=r)[0, 0] > 0
        bands[torch.where(person, near_background, near_person)] = band
    return bands


def error_distances(prediction: np.ndarray, labels: np.ndarray, radii: Sequence[int] = OUTLINE_RADII,
                    ignore_index: int = IGNORE_INDEX) -> dict[str, np.ndarray]:
    """Counts of each ``ERROR_KINDS`` mistake per outline band (class 0 is background), plus
    ``person_pixels``. Labels are compared at the labels' resolution, ignored pixels skipped."""
    pred, target = torch.from_numpy(np.asarray(prediction)).long(), torch.from_numpy(np.asarray(labels)).long()
    valid = target != ignore_index
    person = valid & (target != 0)
    bands = outline_bands(person, radii)
    masks = {"background_as_person": valid & (target == 0) & (pred != 0),
             "person_as_background": person & (pred == 0),
             "wrong_part": person & (pred != 0) & (pred != target)}
    out = {kind: torch.bincount(bands[mask], minlength=len(radii) + 1).numpy() for kind, mask in masks.items()}
    out["person_pixels"] = np.array(int(person.sum()))
    return out


def format_error_distances(errors: dict) -> str:
    """A markdown table of ``errors_by_outline_distance``: each kind of mistake as a share of the
    person pixels, then how that kind splits over the outline bands."""
    radii = errors["radii"]
    edges = [f"≤{radii[0]} px"] + [f"{a + 1}–{b} px" for a, b in pairwise(radii)] + [f">{radii[-1]} px"]
    lines = ["| mistake | % of person pixels | " + " | ".join(edges) + " |", "|" + "---|" * (len(edges) + 2)]
    person = max(1, errors["person_pixels"])
    for kind in ERROR_KINDS:
        counts = np.asarray(errors[kind], dtype=np.float64)
        shares = counts / max(1.0, counts.sum())
        lines.append(f"| {kind.replace('_', ' ')} | {100 * counts.sum() / person:.1f} | "
                     + " | ".join(f"{100 * share:.1f}%" for share in shares) + " |")
    return "\n".join(lines)


def describe_person_size(name: str, part: dict) -> str:
    """A table row label for one ``by_person_size`` entry, e.g. 'small people (0%–10% of the image, 144 images)'."""
    low, high = part["person_share"]
    return f"{name} people ({low:.0%}–{high:.0%} of the image, {part['images']} images)"


def evaluate_model(model: torch.nn.Module | Engine, dataset, *, input_size: int | None = None,
                   device: torch.device | str = "cpu", limit: int | None = None, batch_size: int = 1,
                   progress: bool = False, by_person_size: bool = False, by_outline_distance: bool = False,
                   on_labels: Callable[[int, np.ndarray], None] | None = None) -> dict:
    """Score ``model`` on ``dataset`` (a ParsingDataset) at full label resolution; see ``summarise``.

    ``model`` is an engine (``engines.create_engine``: exactly what the server shows) or a model in
    memory, run at ``input_size`` on ``device`` (validation during training). Both label frames with
    the engines' one predictor (``engines/predict.py``).

    With ``by_person_size`` the result also has ``by_person_size``: the same summary for the
    images in each ``PERSON_SIZES`` bin (their confusion matrices add up to the whole one).
    With ``by_outline_distance`` it also has ``errors_by_outline_distance``: the
    ``error_distances`` counts summed over the images, with the band edges as ``radii``.
    ``on_labels(index, labels)`` sees each image's predicted labels.
    The model is put in eval mode for the loop and put back in the mode it was in.
    """
    device = torch.device(device)
    num_classes = dataset.num_classes
    count = len(dataset) if limit is None else min(limit, len(dataset))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    per_size = {name: np.zeros_like(confusion) for name, _, _ in PERSON_SIZES}
    images_per_size = dict.fromkeys(per_size, 0)
    errors = {kind: np.zeros(len(OUTLINE_RADII) + 1, dtype=np.int64) for kind in ERROR_KINDS}
    person_pixels = 0
    if isinstance(model, Engine):
        def predict(frames: list[np.ndarray]) -> list[np.ndarray]:
            return [prediction.labels for prediction in model.infer(frames)]
        was_training = None
    else:
        if input_size is None:
            raise ValueError("input_size is needed to evaluate a model in memory")

        def predict(frames: list[np.ndarray]) -> list[np.ndarray]:
            return predict_labels(model, frames, input_size, device)
        was_training = model.training
        model.eval()
    batches = range(0, count, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"evaluate {dataset.name}", unit="batch", dynamic_ncols=True)
    try:
        for start in batches:
            items = [dataset.read(i) for i in range(start, min(start + batch_size, count))]
            predictions = predict([rgb for rgb, _ in items])
            for offset, (prediction, (_, labels)) in enumerate(zip(predictions, items)):
                if on_labels is not None:
                    on_labels(start + offset, prediction)
                image_confusion = confusion_matrix(prediction, labels, num_classes)
                confusion += image_confusion
                if by_person_size:
                    size = person_size(labels)
                    per_size[size] += image_confusion
                    images_per_size[size] += 1
                if by_outline_distance:
                    counts = error_distances(prediction, labels)
                    person_pixels += int(counts.pop("person_pixels"))
                    for kind, value in counts.items():
                        errors[kind] += value
    finally:
        if was_training is not None:
            model.train(was_training)
    class_names = list(get_task(dataset.task).classes)
    result = summarise(confusion, class_names, dataset.evaluated_classes)
    result["images"] = count
    if by_person_size:
        result["by_person_size"] = {
            name: {"person_share": [low, high], "images": images_per_size[name],
                   **summarise(per_size[name], class_names, dataset.evaluated_classes)}
            for name, low, high in PERSON_SIZES}
    if by_outline_distance:
        result["errors_by_outline_distance"] = {"radii": list(OUTLINE_RADII), "person_pixels": person_pixels,
                                                **{kind: value.tolist() for kind, value in errors.items()}}
    return result
