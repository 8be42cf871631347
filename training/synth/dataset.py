"""torch Datasets over synthetic people: generated on the fly, or read back from a written folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .generator import SyntheticPeople


def _to_tensors(rgb: np.ndarray, parts: np.ndarray, clothes: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "image": torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1),  # uint8 3xHxW
        "parts": torch.from_numpy(np.array(parts, copy=True)).long(),
        "clothes": torch.from_numpy(np.array(clothes, copy=True)).long(),
    }


class SyntheticPeopleDataset(Dataset):
    """``length`` samples generated on demand; item i is always the same for a given (size, seed).

    Each DataLoader worker builds its own generator on first use (the body model is per process).
    """

    def __init__(self, length: int, size: int = 320, seed: int = 0, start: int = 0) -> None:
        self.length, self.size, self.seed, self.start = length, size, seed, start
        self._generator: SyntheticPeople | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        if self._generator is None:
            self._generator = SyntheticPeople(self.size, self.seed)
        return _to_tensors(*self._generator.sample(self.start + index))

    def __getstate__(self) -> dict:
        # Workers rebuild the generator rather than pickling the body model.
        return {**self.__dict__, "_generator": None}


class SyntheticPeopleFolder(Dataset):
    """A folder written by ``python -m training.synth`` (images/, parts/, clothes/, manifest.json)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = json.loads((self.root / "manifest.json").read_text())
        self.names = sorted(p.stem for p in (self.root / "images").glob("*.jpg"))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        name = self.names[index]
        rgb = np.asarray(Image.open(self.root / "images" / f"{name}.jpg").convert("RGB"))
        parts = np.asarray(Image.open(self.root / "parts" / f"{name}.png"))
        clothes = np.asarray(Image.open(self.root / "clothes" / f"{name}.png"))
        return _to_tensors(rgb, parts, clothes)
