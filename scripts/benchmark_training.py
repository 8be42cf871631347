#!/usr/bin/env python3
"""Training-step benchmark: seconds per optimiser step for the layouts ``scripts/train.py`` can use.

Times one full step (forward in train mode, the extra-supervision loss, backward, AdamW) of
the attention model on random data for:

- ``parts, NCHW``: one task, default memory layout (``--no-channels-last``);
- ``parts, channels-last``: one task, what ``train.py`` does by default;
- ``parts+clothes, channels-last``: both tasks with one shared network (``--task parts+clothes``).

Rounds are interleaved (each round times every layout once), so load from a neighbour hits all
alike; the table gives medians and the ratio to the first row.

    python scripts/benchmark_training.py
    python scripts/benchmark_training.py --backbone selfie --crop 288 --threads 1 --json out/train-bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from engines import BACKBONES, build_model
from training.losses import parsing_loss
from training.multitask import build_joint_model

LAYOUTS = (("parts", False), ("parts", True), ("parts+clothes", True))


def make_step(task: str, channels_last: bool, args: argparse.Namespace):
    """A closure running one training step, and the model it trains."""
    tasks = task.split("+")
    options = {"backbone": args.backbone, "merge": "attention"}
    model = build_joint_model(tasks=tasks, **options) if len(tasks) > 1 else build_model(task=task, **options)
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.crop, args.crop, generator=generator).contiguous(
        memory_format=memory_format)
    labels = torch.randint(0, 6, (args.batch, args.crop, args.crop), generator=generator)

    def step() -> None:
        output = model(images)
        outputs = output if len(tasks) > 1 else {task: output}
        loss = sum(parsing_loss(outputs[t], labels)[0] for t in tasks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mobilenetv3_large", choices=sorted(BACKBONES))
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per layout (after 2 warm-up steps)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    steps = {layout: make_step(*layout, args) for layout in LAYOUTS}
    for step in steps.values():
        for _ in range(2):
            step()
    times: dict[tuple[str, bool], list[float]] = {layout: [] for layout in LAYOUTS}
    for _ in range(args.rounds):
        for layout, step in steps.items():
            started = time.perf_counter()
            step()
            times[layout].append(time.perf_counter() - started)

    base = statistics.median(times[LAYOUTS[0]])
    rows = []
    print(f"\n{args.backbone} attention, scales 1/0.75/0.5, batch {args.batch}, {args.crop} px crops, "
          f"{args.threads} threads, median of {args.rounds} interleaved steps\n")
    print("| tasks | layout | s per step | images/s | tasks' images/s | time vs first row |")
    print("|---|---|---|---|---|---|")
    for (task, channels_last), values in times.items():
        median = statistics.median(values)
        count = len(task.split("+"))
        row = {"tasks": task, "channels_last": channels_last, "seconds_per_step": median,
               "images_per_s": args.batch / median, "task_images_per_s": count * args.batch / median,
               "ratio": median / base, "all_seconds": values}
        rows.append(row)
        print(f"| {task} | {'channels-last' if channels_last else 'NCHW'} | {median:.2f} | "
              f"{row['images_per_s']:.1f} | {row['task_images_per_s']:.1f} | {row['ratio']:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
