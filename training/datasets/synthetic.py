"""The synthetic people written by ``python -m training.synth``: exact labels for both tasks.

Layout (one folder per split; train and held-out test sets are separate folders)::

    DIR/images/000000.jpg     RGB render
    DIR/parts/000000.png      single-channel, value = index into TASKS["parts"].classes
    DIR/clothes/000000.png    single-channel, value = index into TASKS["clothes"].classes
    DIR/manifest.json         generator settings (read for provenance only)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from engines.tasks import TASKS

from .base import ParsingDataset


class SyntheticDataset(ParsingDataset):
    """A folder the generator (``training.synth.SyntheticPeople``) wrote, read like any other dataset."""

    name = "synthetic"
    tasks = ("parts", "clothes")
    raw_classes = ()  # already in our classes
    merge_maps: ClassVar[dict[str, dict[int, int]]] = {
        task: {i: i for i in range(spec.num_classes)} for task, spec in TASKS.items()
    }
    # A folder is one split; every split name means "the whole folder".
    splits = ("all", "train", "val", "test")

    def _list_samples(self) -> list[tuple[Path, Path]]:
        images, labels = self.root / "images", self.root / self.task
        samples = []
        for image in sorted(images.glob("*.jpg")) if images.is_dir() else []:
            label = labels / f"{image.stem}.png"
            if label.is_file():  # a half-written folder (generator still running) skips missing labels
                samples.append((image, label))
        return samples

    @property
    def manifest(self) -> dict:
        path = self.root / "manifest.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}
