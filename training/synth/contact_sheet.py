"""Contact sheet of synthetic samples next to their coloured labels:
``python -m training.synth.contact_sheet --out docs/synth_contact_sheet.jpg``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from engines.tasks import TASKS

from .generator import SyntheticPeople


def contact_sheet(generator: SyntheticPeople, indices: list[int], columns: int = 2) -> Image.Image:
    """Rows of (image | parts | clothes) triplets, ``columns`` triplets per row, TASKS palettes."""
    tiles = []
    for index in indices:
        rgb, parts, clothes = generator.sample(index)
        tiles.append(np.concatenate([rgb, TASKS["parts"].palette[parts], TASKS["clothes"].palette[clothes]], 1))
    gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    rows = []
    for r in range(0, len(tiles), columns):
        row = tiles[r : r + columns]
        row += [np.zeros_like(tiles[0])] * (columns - len(row))
        rows.append(np.concatenate([x for t in row for x in (t, gap)][:-1], 1))
    hgap = np.full((6, rows[0].shape[1], 3), 255, np.uint8)
    return Image.fromarray(np.concatenate([x for r in rows for x in (r, hgap)][:-1], 0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/synth_contact_sheet.jpg"))
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--quality", type=int, default=80)
    args = parser.parse_args(argv)
    sheet = contact_sheet(SyntheticPeople(args.size, args.seed), list(range(args.start, args.start + args.count)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=args.quality)
    print(f"{args.out}: {sheet.size[0]}x{sheet.size[1]}, {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
