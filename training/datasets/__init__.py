"""Parsing datasets: PartCam's synthetic people and the real datasets, all in our classes.

    from training.datasets import open_dataset, parse_source
    ds = open_dataset("lip", "/data/LIP", split="val", task="clothes")
    rgb, labels = ds.read(0)  # H×W×3 uint8, H×W uint8 (255 = ignore)
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from .base import IGNORE_INDEX, ParsingDataset, Transform, merge_lut, read_label, read_rgb
from .mixed import MixedBatchSampler, MixedDataset
from .real import ATR, CIHP, LIP, PascalPersonPart
from .synthetic import SyntheticDataset

DATASETS: dict[str, type[ParsingDataset]] = {
    cls.name: cls for cls in (SyntheticDataset, PascalPersonPart, ATR, LIP, CIHP)
}


def open_dataset(name: str, root: str | os.PathLike, *, split: str | None = None, task: str | None = None,
                 transform: Transform | None = None) -> ParsingDataset:
    """Open a dataset by name; ``split=None`` takes the dataset's first split (train, or the whole folder)."""
    try:
        cls = DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}") from None
    return cls(root, split=split or cls.splits[0], task=task, transform=transform)


@dataclass(frozen=True)
class SourceSpec:
    """One ``--data NAME:ROOT[:WEIGHT][@SPLIT]``-style source."""

    name: str
    root: str
    weight: float = 1.0
    split: str | None = None


def parse_source(text: str) -> SourceSpec:
    """Parse ``NAME:ROOT[:WEIGHT]``, optionally ending in ``@SPLIT`` (e.g. ``lip:/data/LIP:0.5@train``)."""
    split = None
    if "@" in text:
        text, split = text.rsplit("@", 1)
    name, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ValueError(f"data source {text!r} must look like NAME:ROOT[:WEIGHT], e.g. synthetic:data/synth:1.0")
    root, weight = rest, 1.0
    head, sep, tail = rest.rpartition(":")
    if sep:
        with contextlib.suppress(ValueError):  # otherwise the colon is part of the path
            root, weight = head, float(tail)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} in {text!r}; valid datasets: {', '.join(DATASETS)}")
    return SourceSpec(name=name, root=root, weight=weight, split=split)


__all__ = [
    "ATR",
    "CIHP",
    "DATASETS",
    "IGNORE_INDEX",
    "LIP",
    "MixedBatchSampler",
    "MixedDataset",
    "ParsingDataset",
    "PascalPersonPart",
    "SourceSpec",
    "SyntheticDataset",
    "merge_lut",
    "open_dataset",
    "parse_source",
    "read_label",
    "read_rgb",
]
