"""Synthetic people: valid labels for both tasks, determinism, and the CLI's folder layout.

The first anny build of a fresh checkout takes about a minute (cached under .cache/ afterwards), so
the generator is built once per test session.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engines.tasks import TASKS
from training.datasets import SyntheticDataset
from training.synth import GENERATOR_VERSION, SyntheticPeople
from training.synth.__main__ import main as synth_main
from training.synth.raster import rasterize

SIZE = 96
BAG = TASKS["clothes"].classes.index("bag")


@pytest.fixture(scope="session")
def generator() -> SyntheticPeople:
    return SyntheticPeople(size=SIZE, seed=3)


@pytest.fixture(scope="session")
def samples(generator: SyntheticPeople) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [generator.sample(i) for i in range(6)]


def test_samples_have_valid_labels_for_both_tasks(samples) -> None:
    for rgb, parts, clothes in samples:
        assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
        assert parts.shape == clothes.shape == (SIZE, SIZE)
        assert parts.dtype == clothes.dtype == np.uint8
        assert parts.max() < TASKS["parts"].num_classes
        assert clothes.max() < TASKS["clothes"].num_classes
        # Both tasks label the same person pixels; bags are clothing but not a body part.
        np.testing.assert_array_equal(parts > 0, (clothes > 0) & (clothes != BAG))
    seen_parts = set(np.unique(np.concatenate([p.ravel() for _, p, _ in samples])))
    seen_clothes = set(np.unique(np.concatenate([c.ravel() for _, _, c in samples])))
    assert {0, 1, 2} <= seen_parts and len(seen_parts) >= 5
    assert {0, 1, 2} <= seen_clothes and len(seen_clothes) >= 4


def test_same_seed_and_index_give_identical_samples(generator: SyntheticPeople, samples) -> None:
    again = SyntheticPeople(size=SIZE, seed=3)
    for index in (0, 4):
        for first, second in zip(samples[index], again.sample(index)):
            np.testing.assert_array_equal(first, second)
    other_seed = SyntheticPeople(size=SIZE, seed=4).sample(0)
    assert not np.array_equal(other_seed[0], samples[0][0])


def test_rasterizer_covers_exactly_the_pixels_inside_a_triangle() -> None:
    screen = np.array([[1.0, 1.0], [9.0, 1.0], [1.0, 9.0]])
    faces = np.array([[0, 2, 1]])  # clockwise on screen (y down) faces the camera
    frags = rasterize(screen, np.ones(3), faces, (10, 10))
    ys, xs = np.mgrid[0:10, 0:10] + 0.5
    inside = (xs >= 1) & (ys >= 1) & (xs + ys <= 10)
    np.testing.assert_array_equal(frags.face == 0, inside)
    np.testing.assert_allclose(frags.bary.sum(1), 1.0, atol=1e-5)
    culled = rasterize(screen, np.ones(3), faces[:, ::-1], (10, 10))
    assert (culled.face == -1).all()


def test_cli_writes_layout_and_manifest_independent_of_workers(tmp_path, generator: SyntheticPeople) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert synth_main(["--out", str(one), "--count", "4", "--seed", "3", "--size", str(SIZE), "--workers", "1"]) == 0
    assert synth_main(["--out", str(two), "--count", "4", "--seed", "3", "--size", str(SIZE), "--workers", "2"]) == 0
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["count"] == 4 and manifest["seed"] == 3 and manifest["size"] == SIZE
    assert manifest["generator"] == GENERATOR_VERSION
    for name, task in TASKS.items():
        assert manifest["tasks"][name]["classes"] == list(task.classes)
        assert sum(manifest["tasks"][name]["pixel_share"].values()) == pytest.approx(1.0, abs=1e-4)
    for index in range(4):
        stem = f"{index:06d}"
        label = Image.open(one / "parts" / f"{stem}.png")
        assert label.mode == "L" and label.size == (SIZE, SIZE)
        assert Image.open(one / "images" / f"{stem}.jpg").size == (SIZE, SIZE)
        for sub, ext in (("images", "jpg"), ("parts", "png"), ("clothes", "png")):
            assert (one / sub / f"{stem}.{ext}").read_bytes() == (two / sub / f"{stem}.{ext}").read_bytes()
    # The files hold exactly what the Python API returns, and the training dataset reads them back.
    folder = {task: SyntheticDataset(one, task=task) for task in TASKS}
    assert len(folder["parts"]) == len(folder["clothes"]) == 4
    rgb, read_parts = folder["parts"].read(2)
    _, read_clothes = folder["clothes"].read(2)
    assert rgb.shape == (SIZE, SIZE, 3) and read_parts.shape == (SIZE, SIZE)
    _, parts, clothes = generator.sample(2)
    np.testing.assert_array_equal(read_parts, parts)
    np.testing.assert_array_equal(read_clothes, clothes)
    np.testing.assert_array_equal(np.asarray(Image.open(one / "parts" / "000002.png")), parts)
    np.testing.assert_array_equal(np.asarray(Image.open(one / "clothes" / "000002.png")), clothes)
