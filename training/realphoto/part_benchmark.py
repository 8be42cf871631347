"""Scoring parsers on the real-photo part benchmark: zones drawn by eye, pose points, silhouettes.

Four measures, each for any function that turns an RGB frame into labels at the frame's size:

- **zone accuracy**: for every zone (a box drawn by eye well inside one class), the share of its
  pixels given that class; averaged over the zones of each class, then over the classes. Every
  zone counts the same, so a small person's shin counts as much as a close-up's face.
- **background called a part**: the share of background-zone pixels given any person class
  (look-alikes included: animals, a tripod, an out-of-focus crowd, a held helmet).
- **pose-point accuracy** (parts): an independent real-trained pose model, BlazePose heavy on a
  crop around each hand-drawn person box, puts checkpoints on each person: the nose is head, the
  middle of shoulder–elbow upper arm, elbow–wrist lower arm, hip–knee upper leg, knee–ankle lower
  leg, the mean of shoulders and hips torso. A checkpoint is used only where BlazePose sees both
  ends (visibility ≥ 0.5) and its own person mask covers the point.
- **silhouette IoU**: "any person class" against the exact person masks where the image has them
  (cut-out composites, VOC photos), else against the union of BlazePose's person masks.

Everything is also split by person size (the person box's height over the image's: small < 0.2,
medium 0.2–0.5, large > 0.5) and by image kind (close-up, full body, small, group).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.tasks import TASKS

from .benchmark_set import TAGS, load_image, realbench_dir, spec_by_id
from .zones import ImageZones, Zone

Predictor = Callable[[np.ndarray], np.ndarray]  # RGB H×W×3 uint8 -> labels H×W

SIZE_BINS = (("small", 0.0, 0.2), ("medium", 0.2, 0.5), ("large", 0.5, 10.0))
NONE_SIZE = "no person"
VISIBLE = 0.5
MASK_ON = 0.5

# (checkpoint, expected part, BlazePose landmarks averaged to place it)
POSE_CHECKPOINTS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("nose", "head", (0,)),
    ("left upper arm", "upper arms", (11, 13)),
    ("right upper arm", "upper arms", (12, 14)),
    ("left lower arm", "lower arms", (13, 15)),
    ("right lower arm", "lower arms", (14, 16)),
    ("left upper leg", "upper legs", (23, 25)),
    ("right upper leg", "upper legs", (24, 26)),
    ("left lower leg", "lower legs", (25, 27)),
    ("right lower leg", "lower legs", (26, 28)),
    ("torso", "torso", (11, 12, 23, 24)),
)


def size_bin(person_height: float, image_height: int) -> str:
    share = person_height / image_height
    for name, low, high in SIZE_BINS:
        if low <= share < high:
            return name
    return SIZE_BINS[-1][0]


@dataclass(frozen=True)
class PosePoint:
    x: int
    y: int
    part: str
    person: int  # index into the image's person boxes


@dataclass
class Reference:
    """What the independent pose model says about one image."""

    points: list[PosePoint]
    person_mask: np.ndarray  # H×W bool: union of BlazePose person masks


def reference_for(image: ImageZones, rgb: np.ndarray, pose, cache: bool = True) -> Reference:
    """Pose points and person mask for ``image``, cached per image and person boxes."""
    key = hashlib.sha256(json.dumps([image.image, image.persons, list(rgb.shape)]).encode()).hexdigest()[:16]
    path = realbench_dir() / "reference" / f"{image.image}-{key}.npz"
    if cache and path.is_file():
        data = np.load(path)
        points = [PosePoint(int(x), int(y), str(part), int(person))
                  for x, y, part, person in zip(data["x"], data["y"], data["part"], data["person"])]
        return Reference(points, data["mask"])
    height, width = rgb.shape[:2]
    points: list[PosePoint] = []
    mask = np.zeros((height, width), bool)
    for index, box in enumerate(image.persons):
        person = pose.person(rgb, box)
        on_person = person.probability > MASK_ON
        # Only the mask inside this person's box: BlazePose's crop may show a neighbour too.
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] |= on_person[y0:y1, x0:x1]
        for _, part, landmarks in POSE_CHECKPOINTS:
            if min(person.visibility[i] for i in landmarks) < VISIBLE:
                continue
            x, y = np.mean(person.landmarks[list(landmarks)], axis=0)
            xi, yi = int(np.floor(x)), int(np.floor(y))
            if not (x0 <= xi < x1 and y0 <= yi < y1) or not on_person[yi, xi]:
                continue
            points.append(PosePoint(xi, yi, part, index))
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, x=np.array([p.x for p in points], np.int32),
                            y=np.array([p.y for p in points], np.int32),
                            part=np.array([p.part for p in points], dtype=object).astype(str),
                            person=np.array([p.person for p in points], np.int32), mask=mask)
    return Reference(points, mask)


def owner_size(box: tuple[int, int, int, int], image: ImageZones) -> str:
    """The size bin of the smallest person box containing ``box`` (zones of no person: NONE_SIZE)."""
    x0, y0, x1, y1 = box
    owners = [p for p in image.persons if p[0] <= x0 and p[1] <= y0 and x1 <= p[2] and y1 <= p[3]]
    if not owners:
        return NONE_SIZE
    smallest = min(owners, key=lambda p: (p[2] - p[0]) * (p[3] - p[1]))
    return size_bin(smallest[3] - smallest[1], image.size[1])


@dataclass
class Tally:
    """Running sums of a share per key: each item adds its share once."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, share: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + share
        self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, key: str) -> float | None:
        return self.sums[key] / self.counts[key] if self.counts.get(key) else None

    def to_dict(self) -> dict[str, dict]:
        return {key: {"mean": self.mean(key), "n": self.counts[key]} for key in self.sums}


@dataclass
class TaskScore:
    """One model's benchmark result for one task."""

    task: str
    zones: Tally = field(default_factory=Tally)  # class -> zone accuracy
    zones_by_size: dict[str, Tally] = field(default_factory=dict)  # size -> class -> accuracy
    zones_by_tag: dict[str, Tally] = field(default_factory=dict)
    background_as_part: Tally = field(default_factory=Tally)  # "all" and per look-alike kind
    pose: Tally = field(default_factory=Tally)  # part -> 1/0 per point
    pose_by_size: dict[str, Tally] = field(default_factory=dict)
    silhouette: Tally = field(default_factory=Tally)  # "all", "exact", "reference", per tag
    cnn_ms: list[float] = field(default_factory=list)

    def person_classes(self) -> tuple[str, ...]:
        return TASKS[self.task].classes[1:]

    def zone_mean(self, tally: Tally | None = None) -> float | None:
        tally = tally or self.zones
        values = [tally.mean(c) for c in self.person_classes() if tally.mean(c) is not None]
        return float(np.mean(values)) if values else None

    def pose_mean(self, tally: Tally | None = None) -> float | None:
        tally = tally or self.pose
        values = [tally.mean(c) for c in tally.sums]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "zone_mean": self.zone_mean(),
            "zones": self.zones.to_dict(),
            "zones_by_size": {k: {"mean": self.zone_mean(v), **v.to_dict()} for k, v in self.zones_by_size.items()},
            "zones_by_tag": {k: {"mean": self.zone_mean(v), **v.to_dict()} for k, v in self.zones_by_tag.items()},
            "background_called_part": self.background_as_part.to_dict(),
            "pose_mean": self.pose_mean(),
            "pose": self.pose.to_dict(),
            "pose_by_size": {k: {"mean": self.pose_mean(v), **v.to_dict()} for k, v in self.pose_by_size.items()},
            "silhouette_iou": self.silhouette.to_dict(),
            "cnn_ms_median": float(np.median(self.cnn_ms)) if self.cnn_ms else None,
        }


def _zone_share(labels: np.ndarray, zone: Zone, class_index: int) -> float:
    x0, y0, x1, y1 = zone.box
    return float(np.mean(labels[y0:y1, x0:x1] == class_index))


def silhouette(labels: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    ours = labels != 0
    if ignore is not None:
        ours, truth = ours[~ignore], truth[~ignore]
    union = np.logical_or(ours, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(ours, truth).sum() / union)


def score_image(score: TaskScore, image: ImageZones, labels: np.ndarray, reference: Reference | None,
                instances: np.ndarray | None) -> None:
    """Add one image's labels to ``score``."""
    task = TASKS[score.task]
    tags = spec_by_id(image.image).tags
    for zone in image.zones:
        name = zone.label(score.task)
        if name is None:
            continue
        if zone.is_background:
            x0, y0, x1, y1 = zone.box
            share = float(np.mean(labels[y0:y1, x0:x1] != 0))
            score.background_as_part.add("all", share)
            continue
        share = _zone_share(labels, zone, task.classes.index(name))
        score.zones.add(name, share)
        score.zones_by_size.setdefault(owner_size(zone.box, image), Tally()).add(name, share)
        for tag in tags:
            score.zones_by_tag.setdefault(tag, Tally()).add(name, share)
    if reference is not None and score.task == "parts":
        for point in reference.points:
            hit = float(labels[point.y, point.x] == task.classes.index(point.part))
            score.pose.add(point.part, hit)
            box = image.persons[point.person]
            score.pose_by_size.setdefault(size_bin(box[3] - box[1], image.size[1]), Tally()).add(point.part, hit)
    if image.persons:
        if instances is not None:
            iou = silhouette(labels, (instances > 0) & (instances != 255), instances == 255)
            score.silhouette.add("exact", iou)
        elif reference is not None:
            iou = silhouette(labels, reference.person_mask)
            score.silhouette.add("reference", iou)
        else:
            return
        score.silhouette.add("all", iou)
        for tag in tags:
            score.silhouette.add(tag, iou)


def run_benchmark(predictors: dict[str, tuple[str, Predictor]], images: list[ImageZones], pose=None,
                  on_labels: Callable[[str, str, np.ndarray, np.ndarray], None] | None = None,
                  ) -> dict[str, TaskScore]:
    """Score every predictor (name -> (task, function)) on every image.

    ``pose`` is the pose reference (``BlazePoseReference``); without it, pose points are skipped
    and silhouettes use exact masks only. ``on_labels(name, image_id, rgb, labels)`` sees every
    prediction, e.g. to draw a contact sheet."""
    scores = {name: TaskScore(task) for name, (task, _) in predictors.items()}
    for image in images:
        rgb, instances = load_image(image.image)
        if tuple(image.size) != (rgb.shape[1], rgb.shape[0]):
            raise ValueError(f"{image.image}: zones were drawn on a {image.size} image, the built one is "
                             f"{rgb.shape[1]}×{rgb.shape[0]}")
        reference = reference_for(image, rgb, pose) if pose is not None and image.persons else None
        for name, (_, predict) in predictors.items():
            labels = predict(rgb)
            score_image(scores[name], image, labels, reference, instances)
            if on_labels is not None:
                on_labels(name, image.image, rgb, labels)
    return scores


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def format_report(scores: dict[str, TaskScore]) -> str:
    """Markdown tables: zones per class, background, pose points, silhouettes; by size and kind."""
    lines: list[str] = []
    for task_name in ("parts", "clothes"):
        names = [n for n, s in scores.items() if s.task == task_name]
        if not names:
            continue
        classes = TASKS[task_name].classes[1:]
        lines += [f"### {task_name}: zone accuracy (% of zone pixels given the right class)", "",
                  "| model | " + " | ".join(classes) + " | **mean** | bg zones called a part | silhouette IoU |",
                  "|---|" + "---|" * (len(classes) + 3)]
        for name in names:
            s = scores[name]
            cells = [_pct(s.zones.mean(c)) for c in classes]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | **{_pct(s.zone_mean())}** | "
                         f"{_pct(s.background_as_part.mean('all'))} | {_fmt_iou(s.silhouette.mean('all'))} |")
        counts = scores[names[0]].zones.counts
        lines += ["", "Zones per class: " + ", ".join(f"{c} {counts.get(c, 0)}" for c in classes)
                  + f"; background {scores[names[0]].background_as_part.counts.get('all', 0)}.", ""]
        if task_name == "parts" and any(scores[n].pose.counts for n in names):
            parts = [c for c in classes if any(scores[n].pose.counts.get(c) for n in names)]
            lines += ["### parts: pose-point accuracy (% of BlazePose checkpoints given the right part)", "",
                      "| model | " + " | ".join(parts) + " | **mean** |", "|---|" + "---|" * (len(parts) + 1)]
            for name in names:
                s = scores[name]
                lines.append(f"| {name} | " + " | ".join(_pct(s.pose.mean(c)) for c in parts)
                             + f" | **{_pct(s.pose_mean())}** |")
            counts = scores[names[0]].pose.counts
            lines += ["", "Points per part: " + ", ".join(f"{c} {counts.get(c, 0)}" for c in parts) + ".", ""]
        sizes = [b[0] for b in SIZE_BINS]
        lines += [f"### {task_name}: by person size (zone mean{' / pose-point mean' if task_name == 'parts' else ''})",
                  "", "| model | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
        for name in names:
            s = scores[name]
            cells = []
            for size in sizes:
                zone = _pct(s.zone_mean(s.zones_by_size[size])) if size in s.zones_by_size else "–"
                if task_name == "parts":
                    pose = _pct(s.pose_mean(s.pose_by_size[size])) if size in s.pose_by_size else "–"
                    cells.append(f"{zone} / {pose}")
                else:
                    cells.append(zone)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", f"### {task_name}: by image kind (zone mean / silhouette IoU)", "",
                  "| model | " + " | ".join(TAGS) + " |", "|---|" + "---|" * len(TAGS)]
        for name in names:
            s = scores[name]
            cells = [f"{_pct(s.zone_mean(s.zones_by_tag[t])) if t in s.zones_by_tag else '–'} / "
                     f"{_fmt_iou(s.silhouette.mean(t))}" for t in TAGS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _fmt_iou(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def write_json(scores: dict[str, TaskScore], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({name: s.to_dict() for name, s in scores.items()}, indent=1))
