"""The two parsing tasks: class names and overlay palettes, in one place.

Every other module (training labels, the server's legend, the phone page) reads these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The label value that means "not labelled": losses skip it and scores leave it out. Label maps are
# uint8, and no task comes near 255 classes.
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Task:
    """A parsing task: label value ``i`` means ``classes[i]`` and is drawn in ``palette[i]``."""

    name: str
    title: str
    classes: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def palette(self) -> np.ndarray:
        """uint8 array (C, 3); background is black and is never painted over the camera image."""
        return np.asarray(self.colours, dtype=np.uint8)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.colours],
        }


# Saturated hues spaced around the colour wheel so that neighbouring parts stay
# distinguishable when blended at ~50% over skin, clothing and indoor scenes.
PARTS = Task(
    name="parts",
    title="Person parts",
    classes=("background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs"),
    colours=(
        (0, 0, 0),
        (255, 45, 85),  # head: crimson
        (255, 196, 0),  # torso: amber
        (0, 200, 255),  # upper arms: sky
        (30, 90, 255),  # lower arms: blue
        (60, 230, 90),  # upper legs: green
        (200, 60, 255),  # lower legs: violet
    ),
)

CLOTHES = Task(
    name="clothes",
    title="Clothing",
    classes=("background", "head & skin", "upper clothes", "lower clothes", "bag", "shoes"),
    colours=(
        (0, 0, 0),
        (255, 150, 110),  # head & skin: peach
        (255, 40, 60),  # upper clothes: red
        (40, 110, 255),  # lower clothes: blue
        (60, 230, 90),  # bag: green
        (255, 220, 0),  # shoes: yellow
    ),
)

TASKS: dict[str, Task] = {PARTS.name: PARTS, CLOTHES.name: CLOTHES}


def get_task(name: str) -> Task:
    """Look a task up by name; a wrong name fails with the list of valid ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None
