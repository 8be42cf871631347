"""Real human-parsing datasets, read in their released layouts and merged to PartCam's classes.

None of them can be downloaded by PartCam; users who have them point ``--root`` at them.
Layouts, label lists and merge maps are documented in training/datasets/README.md.
Unmapped raw values become 255 (ignored in training and evaluation).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from .base import IGNORE_INDEX, ParsingDataset, find_dir, read_id_list

# Our clothes classes: 0 background, 1 head & skin, 2 upper clothes, 3 lower clothes, 4 bag, 5 shoes.
BG, SKIN, UPPER, LOWER, BAG, SHOES = range(6)

LIP_CLASSES = ("background", "hat", "hair", "glove", "sunglasses", "upper clothes", "dress", "coat", "socks",
               "pants", "jumpsuits", "scarf", "skirt", "face", "left arm", "right arm", "left leg", "right leg",
               "left shoe", "right shoe")
# CIHP uses LIP's list except value 10, which is torso skin instead of jumpsuits.
CIHP_CLASSES = (*LIP_CLASSES[:10], "torso skin", *LIP_CLASSES[11:])
ATR_CLASSES = ("background", "hat", "hair", "sunglasses", "upper clothes", "skirt", "pants", "dress", "belt",
               "left shoe", "right shoe", "face", "left leg", "right leg", "left arm", "right arm", "bag", "scarf")
PASCAL_PERSON_PART_CLASSES = ("background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs")

LIP_TO_CLOTHES = {
    0: BG,
    1: SKIN,  # hat: part of the head region, as in PASCAL-Person-Part's head
    2: SKIN,  # hair
    3: IGNORE_INDEX,  # glove: neither skin nor a garment class of ours
    4: SKIN,  # sunglasses: on the face
    5: UPPER,
    6: UPPER,  # dress: one-piece garments count as upper clothes
    7: UPPER,  # coat
    8: IGNORE_INDEX,  # socks: between shoes and legs; ambiguous, not trained on
    9: LOWER,  # pants
    10: UPPER,  # jumpsuits: one-piece, like dress
    11: UPPER,  # scarf
    12: LOWER,  # skirt
    13: SKIN,  # face
    14: SKIN, 15: SKIN, 16: SKIN, 17: SKIN,  # bare arms and legs
    18: SHOES, 19: SHOES,
}
CIHP_TO_CLOTHES = {**LIP_TO_CLOTHES, 10: SKIN}  # torso skin
ATR_TO_CLOTHES = {
    0: BG, 1: SKIN, 2: SKIN, 3: SKIN,  # hat, hair, sunglasses
    4: UPPER,
    5: LOWER, 6: LOWER,  # skirt, pants
    7: UPPER,  # dress
    8: LOWER,  # belt: worn on the lower garment's waistband
    9: SHOES, 10: SHOES,
    11: SKIN, 12: SKIN, 13: SKIN, 14: SKIN, 15: SKIN,  # face, legs, arms
    16: BAG,
    17: UPPER,  # scarf
}
PASCAL_TO_PARTS = {i: i for i in range(len(PASCAL_PERSON_PART_CLASSES))}  # same order as ours


class PascalPersonPart(ParsingDataset):
    """PASCAL-Person-Part, DeepLab's release (Chen et al. 2014/2016); images are VOC 2010's.

    ``root`` is the folder holding ``pascal_person_part/`` (or that folder itself) and the VOC
    images, found in the first of ``JPEGImages``, ``VOCdevkit/VOC2010/JPEGImages`` or
    ``VOC2010/JPEGImages`` under root, its parent, or ``pascal_person_part/``. Splits come from
    ``pascal_person_part_trainval_list/{split}.txt`` (``/JPEGImages/x.jpg /SegmentationPart/x.png``
    lines) or ``{split}_id.txt``; labels are ``pascal_person_part_gt/x.png`` (or ``SegmentationPart``).
    """

    name = "pascal-person-part"
    tasks = ("parts",)
    raw_classes = PASCAL_PERSON_PART_CLASSES
    merge_maps: ClassVar[dict[str, dict[int, int]]] = {"parts": PASCAL_TO_PARTS}
    splits = ("train", "val", "trainval")

    def _list_samples(self) -> list[tuple[Path, Path]]:
        base = self.root / "pascal_person_part" if (self.root / "pascal_person_part").is_dir() else self.root
        labels = find_dir(base, ("pascal_person_part_gt", "SegmentationPart"))
        image_dirs = ("JPEGImages", "VOCdevkit/VOC2010/JPEGImages", "VOC2010/JPEGImages")
        images = (find_dir(self.root, image_dirs) or find_dir(base, image_dirs)
                  or find_dir(self.root.parent, image_dirs))
        lists = [base / "pascal_person_part_trainval_list" / f"{self.split}.txt",
                 base / "pascal_person_part_trainval_list" / f"{self.split}_id.txt",
                 base / f"{self.split}_id.txt", base / "list" / f"{self.split}_id.txt"]
        list_file = next((p for p in lists if p.is_file()), None)
        if labels is None or images is None or list_file is None:
            return []
        return _pairs(read_id_list(list_file), images, labels)


class LIP(ParsingDataset):
    """Look Into Person (single-person crops from COCO): 30,462 train and 10,000 val images.

    ``root/TrainVal_images/{train,val}_images/*.jpg`` with ``TrainVal_images/{train,val}_id.txt``,
    and ``root/TrainVal_parsing_annotations/{train,val}_segmentations/*.png``. The archive's
    doubled folders (``TrainVal_images/TrainVal_images/...``) are found too.
    """

    name = "lip"
    tasks = ("clothes",)
    raw_classes = LIP_CLASSES
    raw_flip_pairs = ((14, 15), (16, 17), (18, 19))
    merge_maps: ClassVar[dict[str, dict[int, int]]] = {"clothes": LIP_TO_CLOTHES}
    absent_classes: ClassVar[dict[str, tuple[int, ...]]] = {"clothes": (BAG,)}

    def _list_samples(self) -> list[tuple[Path, Path]]:
        images = find_dir(self.root, (f"TrainVal_images/{self.split}_images",
                                      f"TrainVal_images/TrainVal_images/{self.split}_images"))
        labels = find_dir(self.root, (
            f"TrainVal_parsing_annotations/{self.split}_segmentations",
            f"TrainVal_parsing_annotations/TrainVal_parsing_annotations/{self.split}_segmentations"))
        if images is None or labels is None:
            return []
        ids = next((p for p in (self.root / "TrainVal_images" / f"{self.split}_id.txt",
                                images.parent / f"{self.split}_id.txt") if p.is_file()), None)
        names = read_id_list(ids) if ids else sorted(p.stem for p in labels.glob("*.png"))
        return _pairs(names, images, labels)


class CIHP(ParsingDataset):
    """Crowd Instance-level Human Parsing: 28,280 train and 5,000 val multi-person images.

    ``root/instance-level_human_parsing/Training/{Images/*.jpg, Category_ids/*.png, train_id.txt}``
    and ``.../Validation/{Images, Category_ids, val_id.txt}`` (``root`` may also be the
    ``instance-level_human_parsing`` folder itself). Only the semantic ``Category_ids`` are read.
    """

    name = "cihp"
    tasks = ("clothes",)
    raw_classes = CIHP_CLASSES
    raw_flip_pairs = ((14, 15), (16, 17), (18, 19))
    merge_maps: ClassVar[dict[str, dict[int, int]]] = {"clothes": CIHP_TO_CLOTHES}
    absent_classes: ClassVar[dict[str, tuple[int, ...]]] = {"clothes": (BAG,)}

    def _list_samples(self) -> list[tuple[Path, Path]]:
        folder = {"train": "Training", "val": "Validation"}[self.split]
        split_dir = find_dir(self.root, (f"instance-level_human_parsing/{folder}", folder,
                                         f"instance-level_human_parsing/instance-level_human_parsing/{folder}"))
        if split_dir is None or not (split_dir / "Category_ids").is_dir():
            return []
        ids = split_dir / f"{self.split}_id.txt"
        labels = split_dir / "Category_ids"
        names = read_id_list(ids) if ids.is_file() else sorted(p.stem for p in labels.glob("*.png"))
        return _pairs(names, split_dir / "Images", labels)


class ATR(ParsingDataset):
    """ATR (Liang et al., 17,706 fashion photos): ``root/humanparsing/{JPEGImages, SegmentationClassAug}``.

    The release has no split lists. ``{split}_id.txt`` in ``humanparsing/`` or ``root`` is used
    if present; otherwise every 20th image (sorted by name) is ``val`` and the rest ``train``.
    """

    name = "atr"
    tasks = ("clothes",)
    raw_classes = ATR_CLASSES
    raw_flip_pairs = ((9, 10), (12, 13), (14, 15))
    merge_maps: ClassVar[dict[str, dict[int, int]]] = {"clothes": ATR_TO_CLOTHES}
    splits = ("train", "val", "all")
    val_every = 20

    def _list_samples(self) -> list[tuple[Path, Path]]:
        base = self.root / "humanparsing" if (self.root / "humanparsing").is_dir() else self.root
        images, labels = base / "JPEGImages", base / "SegmentationClassAug"
        if not images.is_dir() or not labels.is_dir():
            return []
        ids = next((p for p in (base / f"{self.split}_id.txt", self.root / f"{self.split}_id.txt") if p.is_file()),
                   None)
        if ids is not None:
            return _pairs(read_id_list(ids), images, labels)
        names = sorted(p.stem for p in labels.glob("*.png"))
        if self.split == "val":
            names = names[:: self.val_every]
        elif self.split == "train":
            names = [n for i, n in enumerate(names) if i % self.val_every]
        return _pairs(names, images, labels)


def _pairs(names: list[str], images: Path, labels: Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs for names whose both files exist; images may be .jpg or .png."""
    pairs = []
    for name in names:
        label = labels / f"{name}.png"
        candidates = (images / f"{name}{ext}" for ext in (".jpg", ".jpeg", ".png"))
        image = next((path for path in candidates if path.is_file()), None)
        if image is not None and label.is_file():
            pairs.append((image, label))
    return pairs
