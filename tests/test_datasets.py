"""Dataset loaders on tiny fixture folders in each dataset's released layout, merge maps, sampler, augmentation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from engines.preprocessing import PAD_VALUE
from engines.tasks import TASKS
from training.augment import TrainTransform, mirror, random_crop
from training.datasets import (
    ATR,
    CIHP,
    DATASETS,
    LIP,
    MixedBatchSampler,
    MixedDataset,
    PascalPersonPart,
    SyntheticDataset,
    open_dataset,
    parse_source,
)
from training.datasets.real import ATR_CLASSES, CIHP_CLASSES, LIP_CLASSES


def _write_pair(image_path: Path, label_path: Path, labels: np.ndarray, seed: int = 0) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (*labels.shape, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image_path, quality=95)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(label_path)


def _all_values(num_raw: int, shape=(6, 8)) -> np.ndarray:
    """A label map holding every raw value 0..num_raw-1 (and the ignore value)."""
    values = np.arange(shape[0] * shape[1]) % (num_raw + 1)
    values[values == num_raw] = 255
    return values.reshape(shape).astype(np.uint8)


def make_synthetic(root: Path, count: int, size: int = 48, seed: int = 0) -> Path:
    """A folder in ``python -m training.synth``'s layout: coloured blocks whose colour is the class."""
    rng = np.random.default_rng(seed)
    colours = np.array([[40, 40, 40], [250, 60, 60], [60, 250, 60], [60, 60, 250], [250, 250, 60],
                        [250, 60, 250], [60, 250, 250]], dtype=np.uint8)
    for index in range(count):
        parts = np.zeros((size, size), dtype=np.uint8)
        for cls in range(1, 7):
            y, x = rng.integers(0, size - size // 3, 2)
            parts[y:y + size // 3, x:x + size // 3] = cls
        rgb = colours[parts]
        for folder in ("images", "parts", "clothes"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / "images" / f"{index:06d}.jpg", quality=95)
        Image.fromarray(parts).save(root / "parts" / f"{index:06d}.png")
        Image.fromarray(np.minimum(parts, 5)).save(root / "clothes" / f"{index:06d}.png")
    (root / "manifest.json").write_text(json.dumps({"seed": seed, "count": count}))
    return root


def test_synthetic_folder_both_tasks(tmp_path):
    root = make_synthetic(tmp_path / "synth", 3)
    (root / "images" / "000099.jpg").write_bytes((root / "images" / "000000.jpg").read_bytes())  # no labels yet
    for task in ("parts", "clothes"):
        ds = SyntheticDataset(root, task=task)
        assert len(ds) == 3 and ds.task == task and ds.manifest["seed"] == 0
        rgb, labels = ds.read(1)
        assert rgb.shape == (48, 48, 3) and rgb.dtype == np.uint8 and labels.shape == (48, 48)
        assert labels.max() < TASKS[task].num_classes
        assert np.array_equal(labels, np.asarray(Image.open(root / task / "000001.png")))
    with pytest.raises(FileNotFoundError):
        SyntheticDataset(tmp_path / "missing")


def test_pascal_person_part_deeplab_layout(tmp_path):
    base = tmp_path / "pascal_person_part"
    lists = base / "pascal_person_part_trainval_list"
    lists.mkdir(parents=True)
    labels = _all_values(7)
    for index, name in enumerate(("2008_000003", "2008_000008", "2010_001000")):
        _write_pair(tmp_path / "VOCdevkit/VOC2010/JPEGImages" / f"{name}.jpg",
                    base / "pascal_person_part_gt" / f"{name}.png", labels, index)
    (lists / "train.txt").write_text("/JPEGImages/2008_000003.jpg /SegmentationPart/2008_000003.png\n"
                                     "/JPEGImages/2008_000008.jpg /SegmentationPart/2008_000008.png\n")
    (lists / "val.txt").write_text("/JPEGImages/2010_001000.jpg /SegmentationPart/2010_001000.png\n")
    train, val = PascalPersonPart(tmp_path, "train"), PascalPersonPart(tmp_path, "val")
    assert [p[0].stem for p in train.samples] == ["2008_000003", "2008_000008"] and len(val) == 1
    _, merged = val.read(0)
    assert np.array_equal(merged, labels)  # same classes and order as ours; 255 stays ignore
    with pytest.raises(ValueError):
        PascalPersonPart(tmp_path, "train", task="clothes")


@pytest.mark.parametrize("doubled", [False, True])
def test_lip_layout_and_merge(tmp_path, doubled):
    inner = "TrainVal_images/" if doubled else ""
    inner_ann = "TrainVal_parsing_annotations/" if doubled else ""
    labels = _all_values(20)
    for split, names in (("train", ["100034_483681", "100050_500476"]), ("val", ["100034_1"])):
        for index, name in enumerate(names):
            _write_pair(tmp_path / f"TrainVal_images/{inner}{split}_images/{name}.jpg",
                        tmp_path / f"TrainVal_parsing_annotations/{inner_ann}{split}_segmentations/{name}.png",
                        labels, index)
        (tmp_path / "TrainVal_images" / f"{split}_id.txt").write_text("\n".join(names) + "\n")
    train, val = LIP(tmp_path, "train"), LIP(tmp_path, "val")
    assert len(train) == 2 and len(val) == 1 and train.task == "clothes"
    _, merged = val.read(0)
    expected = np.array([LIP.merge_maps["clothes"].get(int(v), 255) for v in labels.ravel()]).reshape(labels.shape)
    assert np.array_equal(merged, expected)
    assert 4 not in merged and val.evaluated_classes == [0, 1, 2, 3, 5]  # no bag in LIP
    assert val.flip_lut() is None  # left/right arms, legs and shoes merge into side-less classes


def test_cihp_layout_and_torso_skin(tmp_path):
    labels = _all_values(20)
    for folder, split in (("Training", "train"), ("Validation", "val")):
        split_dir = tmp_path / "instance-level_human_parsing" / folder
        _write_pair(split_dir / "Images" / "0000001.jpg", split_dir / "Category_ids" / "0000001.png", labels)
        (split_dir / f"{split}_id.txt").write_text("0000001\n")
        (split_dir / "Instance_ids").mkdir()  # present in the release, not read
    ds = CIHP(tmp_path, "val")
    _, merged = ds.read(0)
    skin = TASKS["clothes"].classes.index("head & skin")
    assert np.all(merged[labels == 10] == skin)  # CIHP's 10 is torso skin, unlike LIP's jumpsuits
    assert len(CIHP(tmp_path / "instance-level_human_parsing", "train")) == 1


def test_atr_layout_split_and_bag(tmp_path):
    labels = _all_values(18)
    for index in range(21):
        _write_pair(tmp_path / "humanparsing/JPEGImages" / f"997_{index}.jpg",
                    tmp_path / "humanparsing/SegmentationClassAug" / f"997_{index}.png", labels, index)
    train, val, everything = ATR(tmp_path, "train"), ATR(tmp_path, "val"), ATR(tmp_path, "all")
    assert len(val) == 2 and len(train) == 19 and len(everything) == 21
    assert not {p[0] for p in train.samples} & {p[0] for p in val.samples}
    _, merged = val.read(0)
    assert np.all(merged[labels == 16] == TASKS["clothes"].classes.index("bag"))
    assert val.evaluated_classes == list(range(6))
    (tmp_path / "humanparsing" / "val_id.txt").write_text("997_3\n997_4\n997_5\n")
    assert [p[0].stem for p in ATR(tmp_path, "val").samples] == ["997_3", "997_4", "997_5"]


@pytest.mark.parametrize("cls,names", [(LIP, LIP_CLASSES), (CIHP, CIHP_CLASSES), (ATR, ATR_CLASSES)])
def test_merge_maps_cover_every_raw_label_and_are_mirror_symmetric(cls, names):
    clothes = TASKS["clothes"].classes
    mapping = cls.merge_maps["clothes"]
    assert set(mapping) == set(range(len(names)))  # every raw label decided, none invented
    assert all(v == 255 or 0 <= v < len(clothes) for v in mapping.values())
    for left, right in cls.raw_flip_pairs:
        assert names[left].startswith("left") and names[right].startswith("right")
        assert mapping[left] == mapping[right]  # so mirroring merged labels needs no swap
    by_name = {names[raw]: clothes[ours] if ours != 255 else None for raw, ours in mapping.items()}
    assert by_name["face"] == by_name["hair"] == "head & skin"
    assert by_name["upper clothes"] == "upper clothes" and by_name["pants"] == "lower clothes"
    assert by_name["skirt"] == "lower clothes" and by_name["left shoe"] == "shoes"


def test_flip_lut_swaps_classes_when_a_merge_keeps_sides(tmp_path):
    class Sided(LIP):
        merge_maps: ClassVar[dict] = {"clothes": {**LIP.merge_maps["clothes"], 14: 2, 15: 3}}

    root = tmp_path
    _write_pair(root / "TrainVal_images/train_images/a.jpg",
                root / "TrainVal_parsing_annotations/train_segmentations/a.png", _all_values(20))
    lut = Sided(root, "train").flip_lut()
    assert lut is not None and lut[2] == 3 and lut[3] == 2 and lut[0] == 0
    labels = np.array([[2, 3, 0]], dtype=np.uint8)
    _, flipped = mirror(np.zeros((1, 3, 3), np.uint8), labels, lut)
    assert flipped.tolist() == [[0, 2, 3]]


def test_parse_source_and_registry():
    assert parse_source("synthetic:data/synth:0.5") == parse_source("synthetic:data/synth:0.5")
    spec = parse_source("lip:/data/LIP:0.25@val")
    assert (spec.name, spec.root, spec.weight, spec.split) == ("lip", "/data/LIP", 0.25, "val")
    assert parse_source("atr:/data/ATR").weight == 1.0
    assert parse_source("atr:C:/data/ATR").root == "C:/data/ATR"
    with pytest.raises(ValueError):
        parse_source("imagenet:/x")
    assert set(DATASETS) == {"synthetic", "pascal-person-part", "atr", "lip", "cihp"}
    with pytest.raises(KeyError):
        open_dataset("nope", ".")


def test_mixed_sampler_is_deterministic_and_weighted(tmp_path):
    a = SyntheticDataset(make_synthetic(tmp_path / "a", 3))
    b = SyntheticDataset(make_synthetic(tmp_path / "b", 5, seed=1))
    sampler = MixedBatchSampler([len(a), len(b)], [3.0, 1.0], batch_size=4, seed=7)
    stream = iter(sampler)
    first = [next(stream) for _ in range(50)]
    resumed = iter(MixedBatchSampler([len(a), len(b)], [3.0, 1.0], batch_size=4, seed=7, start_step=20))
    assert next(resumed) == first[20]
    sources = np.array([slot[0] for batch in first for slot in batch])
    assert 0.65 < (sources == 0).mean() < 0.85
    assert all(slot[1] < (3, 5)[slot[0]] for batch in first for slot in batch)
    assert {s[0] for s in MixedBatchSampler([3, 5], [0.0, 1.0], 8).batch(0)} == {1}
    other_rank = MixedBatchSampler([len(a), len(b)], [3.0, 1.0], batch_size=4, seed=7, rank=1)
    assert other_rank.batch(0) != sampler.batch(0)
    mixed = MixedDataset([a, b])
    _, labels = mixed[(1, 4, 0)]
    assert np.array_equal(labels, b.read(4)[1])


def test_train_transform_shapes_grey_padding_and_reproducibility():
    rgb = np.full((40, 20, 3), 10, dtype=np.uint8)
    labels = np.full((40, 20), 2, dtype=np.uint8)
    transform = TrainTransform(crop_size=64, scale_range=(0.5, 0.5), brightness=0, contrast=0, saturation=0,
                               colour_cast=0)
    image, target = transform(rgb, labels, seed=3)
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and target.shape == (64, 64)
    # Long side scaled to 64 × 0.5 = 32: the rest is grey padding labelled background, never black.
    assert (target == 2).sum() == 32 * 16
    padding = target == 0
    assert torch.all(image[:, padding] == PAD_VALUE)
    assert torch.all(image[:, ~padding] == 10)
    again, again_target = transform(rgb, labels, seed=3)
    assert torch.equal(image, again) and torch.equal(target, again_target)
    jitter = TrainTransform(crop_size=64)
    outputs = {bytes(jitter(rgb, labels, seed=s)[0].numpy()) for s in range(4)}
    assert len(outputs) > 1
    # With an input size of 96, people are scaled as the engine shows them (long side 96 × 0.5 = 48),
    # whatever the crop size.
    engine_sized = TrainTransform(crop_size=64, base_size=96, scale_range=(0.5, 0.5), brightness=0, contrast=0,
                                  saturation=0, colour_cast=0)
    _, target = engine_sized(rgb, labels, seed=3)
    assert (target == 2).sum() == 48 * 24


def test_random_crop_inside_a_larger_image():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, (50, 70), dtype=np.uint8)
    crop_rgb, crop_labels = random_crop(rgb, labels, 32, rng)
    matches = [(y, x) for y in range(50 - 31) for x in range(70 - 31)
               if np.array_equal(crop_labels, labels[y:y + 32, x:x + 32])
               and np.array_equal(crop_rgb, rgb[y:y + 32, x:x + 32])]
    assert matches  # a true window of the image, labels aligned with pixels
