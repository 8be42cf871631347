"""Write a synthetic-people dataset: ``python -m training.synth --out DIR --count N --seed S``.

Layout: DIR/images/NNNNNN.jpg, DIR/parts/NNNNNN.png, DIR/clothes/NNNNNN.png (single-channel, pixel
value = class index of engines.tasks.TASKS) and DIR/manifest.json. The files depend only on
(seed, index, size), not on the number of workers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

_generator = None
_out: Path | None = None


def _init_worker(size: int, seed: int, out: str) -> None:
    global _generator, _out
    from training.synth import SyntheticPeople

    _generator = SyntheticPeople(size=size, seed=seed)
    _out = Path(out)


def write_sample(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Render and write one sample; returns its per-class pixel counts for both tasks."""
    from PIL import Image

    from engines.tasks import TASKS

    assert _generator is not None and _out is not None
    jpeg, parts, clothes = _generator.render(index)
    name = f"{index:06d}"
    # Labels first and the image last, each renamed into place when complete: readers that list
    # images/ while the generator is still running only ever see finished samples.
    for task, label in (("parts", parts), ("clothes", clothes)):
        tmp = _out / task / f".{name}.png.tmp"
        Image.fromarray(label, mode="L").save(tmp, format="PNG")
        os.replace(tmp, _out / task / f"{name}.png")
    tmp = _out / "images" / f".{name}.jpg.tmp"
    tmp.write_bytes(jpeg)
    os.replace(tmp, _out / "images" / f"{name}.jpg")
    return (
        np.bincount(parts.ravel(), minlength=TASKS["parts"].num_classes),
        np.bincount(clothes.ravel(), minlength=TASKS["clothes"].num_classes),
    )


def generate(out: Path, count: int, seed: int, size: int = 320, workers: int = 2, start: int = 0) -> dict:
    """Write ``count`` samples (indices start..start+count-1) and the manifest; returns the manifest."""
    from tqdm import tqdm

    from engines.tasks import TASKS

    from .generator import GENERATOR_VERSION

    for sub in ("images", "parts", "clothes"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    totals = {name: np.zeros(task.num_classes, np.int64) for name, task in TASKS.items()}
    indices = range(start, start + count)
    t0 = time.perf_counter()
    if workers <= 1:
        _init_worker(size, seed, str(out))
        results = map(write_sample, indices)
        pool = None
    else:
        # fork shares the imported torch/anny pages; spawn elsewhere (macOS/Windows).
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers, _init_worker, (size, seed, str(out)))
        results = pool.imap(write_sample, indices, chunksize=4)
    try:
        for parts_count, clothes_count in tqdm(results, total=count, unit="img", desc="synth"):
            totals["parts"] += parts_count
            totals["clothes"] += clothes_count
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    elapsed = time.perf_counter() - t0

    import anny

    manifest = {
        "generator": GENERATOR_VERSION,
        "anny_version": anny.__version__,
        "count": count,
        "start": start,
        "seed": seed,
        "size": size,
        "layout": {
            "images": "images/{index:06d}.jpg",
            "parts": "parts/{index:06d}.png",
            "clothes": "clothes/{index:06d}.png",
        },
        "tasks": {
            name: {
                "classes": list(task.classes),
                "pixel_share": {
                    c: round(float(v), 6) for c, v in zip(task.classes, totals[name] / max(1, totals[name].sum()))
                },
            }
            for name, task in TASKS.items()
        },
        "seconds": round(elapsed, 2),
        "images_per_second": round(count / max(elapsed, 1e-9), 2),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--count", type=int, required=True, help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (same seed, same files)")
    parser.add_argument("--size", type=int, default=320, help="square image side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--start", type=int, default=0, help="first sample index (to extend a dataset)")
    args = parser.parse_args(argv)
    manifest = generate(args.out, args.count, args.seed, args.size, args.workers, args.start)
    print(
        f"wrote {manifest['count']} samples to {args.out} at {manifest['images_per_second']} images/s", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
