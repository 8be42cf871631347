"""The common shape of every parsing dataset: (RGB image, label map in PartCam's classes).

Each dataset lists its samples as (image path, label path) pairs, reads the raw label PNG and
sends it through a lookup table (its *merge map*) to the task's classes. Raw values the map
does not mention become 255, the ignore index, so an unexpected value is never trained on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from engines.tasks import IGNORE_INDEX, get_task

# transform(rgb HxWx3 uint8, labels HxW uint8, seed or None) -> anything the caller batches
Transform = Callable[[np.ndarray, np.ndarray, int | None], object]


def merge_lut(mapping: Mapping[int, int]) -> np.ndarray:
    """A 256-entry uint8 lookup table: raw label value → our class (255 where unmapped)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for raw, ours in mapping.items():
        lut[int(raw)] = int(ours)
    return lut


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))  # a writable copy: torch.from_numpy warns on read-only arrays


def read_label(path: Path) -> np.ndarray:
    """A single-channel label PNG as uint8 (palette PNGs give their indices, not colours)."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: label images must be single-channel, got mode {image.mode}")
        labels = np.asarray(image)
    if labels.dtype != np.uint8:
        labels = np.where(labels > 255, IGNORE_INDEX, labels).astype(np.uint8)
    return labels


def find_dir(root: Path, candidates: Sequence[str]) -> Path | None:
    """The first ``root/candidate`` that is a directory."""
    for candidate in candidates:
        path = root / candidate
        if path.is_dir():
            return path
    return None


def read_id_list(path: Path) -> list[str]:
    """Sample names from a list file: one id a line, or DeepLab's ``/JPEGImages/x.jpg /Seg/x.png`` pairs."""
    names = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields:
            names.append(Path(fields[0]).stem)
    return names


class ParsingDataset(Dataset):
    """Base class. Subclasses set the class attributes and implement ``_list_samples``.

    ``dataset[i]`` returns ``transform(rgb, labels, None)``; ``dataset[(i, seed)]`` passes the
    seed, which is how the training sampler makes augmentation reproducible across resumes
    and independent of DataLoader workers.
    """

    name: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()
    raw_classes: ClassVar[tuple[str, ...]] = ()  # the dataset's own label list, value = index
    raw_flip_pairs: ClassVar[tuple[tuple[int, int], ...]] = ()  # left/right raw labels that swap in a mirror
    merge_maps: ClassVar[dict[str, dict[int, int]]] = {}  # task → {raw value: our class}
    absent_classes: ClassVar[dict[str, tuple[int, ...]]] = {}  # our classes this dataset never labels
    splits: ClassVar[tuple[str, ...]] = ("train", "val")

    def __init__(self, root: str | os.PathLike, split: str = "train", task: str | None = None,
                 transform: Transform | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name}: dataset folder not found: {self.root}")
        self.task = task or self.tasks[0]
        if self.task not in self.tasks:
            raise ValueError(f"{self.name} has labels for {', '.join(self.tasks)}, not {self.task!r}")
        if split not in self.splits:
            raise ValueError(f"{self.name}: split must be one of {', '.join(self.splits)}, got {split!r}")
        self.split = split
        self.transform = transform
        self.lut = merge_lut(self.merge_maps[self.task])
        self.samples: list[tuple[Path, Path]] = self._list_samples()
        if not self.samples:
            raise FileNotFoundError(f"{self.name}: no {split} samples under {self.root} (see training/datasets/"
                                    "README.md for the expected layout)")

    def _list_samples(self) -> list[tuple[Path, Path]]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return get_task(self.task).num_classes

    @property
    def evaluated_classes(self) -> list[int]:
        """Our classes that this dataset can score: all but those it never labels (e.g. LIP's bag)."""
        absent = set(self.absent_classes.get(self.task, ()))
        return [c for c in range(self.num_classes) if c not in absent]

    def flip_lut(self) -> np.ndarray | None:
        """How merged labels change under a horizontal mirror, or None if they do not.

        Mirroring swaps the raw left/right labels; mapped through the merge map this is a swap
        of merged classes. Our merged classes have no left/right, so for every shipped dataset
        both sides of each pair land in the same class and this returns None.
        """
        lut = np.arange(256, dtype=np.uint8)
        for left, right in self.raw_flip_pairs:
            a, b = self.lut[left], self.lut[right]
            if a != b:
                lut[a], lut[b] = b, a
        return None if np.array_equal(lut, np.arange(256, dtype=np.uint8)) else lut

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw image (H×W×3 uint8 RGB) and its labels merged to our classes (H×W uint8)."""
        image_path, label_path = self.samples[index]
        rgb = read_rgb(image_path)
        labels = self.lut[read_label(label_path)]
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"{label_path}: label size {labels.shape} != image size {rgb.shape[:2]}")
        return rgb, labels

    def pixel_counts(self, limit: int = 500) -> np.ndarray:
        """Pixels of each of our classes over ``limit`` label maps spread evenly over the set (ignore excluded)."""
        count = min(limit, len(self))
        totals = np.zeros(256, dtype=np.int64)
        for index in np.linspace(0, len(self) - 1, count).round().astype(int):
            totals += np.bincount(self.lut[read_label(self.samples[index][1])].ravel(), minlength=256)
        return totals[: self.num_classes]

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        rgb, labels = self.read(int(index))
        if self.transform is None:
            return rgb, labels
        return self.transform(rgb, labels, seed)

    def describe(self) -> str:
        return f"{self.name} {self.split} ({len(self)} images, {self.root})"
