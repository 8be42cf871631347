#!/usr/bin/env python
"""The paper's ablation: single scale vs average vs max vs attention, with and without extra supervision.

    python -m training.synth --out data/synth_test --count 500 --seed 999   # held out, never trained on
    python scripts/ablation.py --train data/synth --test data/synth_test --out runs/ablation --steps 3000

Seven runs (single scale has no per-scale loss to turn on), each with the same backbone, data,
seed and number of steps, then each scored on the held-out test set. Writes OUT/ablation.md
(tables for the README) and OUT/ablation.json. Finished runs are reused and unfinished ones
resume, so the command can simply be run again after an interruption. Arguments after ``--``
go to every scripts/train.py call.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from engines import BACKBONES, TASKS
from training.metrics import describe_person_size

SCRIPTS = Path(__file__).resolve().parent
# (merge, extra supervision): single scale has only one output, so only "without".
RUNS: list[tuple[str, bool]] = [("single", False), ("average", False), ("average", True), ("max", False),
                                ("max", True), ("attention", False), ("attention", True)]


def run_name(merge: str, extra: bool) -> str:
    return f"{merge}-{'es' if extra else 'noes'}"


def markdown(results: dict[str, dict], task: str) -> str:
    """Two tables: the paper's layout (merge × extra supervision) and IoU per class."""
    lines = ["| merge | without extra supervision | with extra supervision |", "|---|---|---|"]
    steps = {r["steps"] for r in results.values()}
    for merge in ("single", "average", "max", "attention"):
        cells = []
        for extra in (False, True):
            result = results.get(run_name(merge, extra))
            cells.append(f"{100 * result['miou']:.2f}" if result else "–")
        lines.append(f"| {'single scale' if merge == 'single' else merge} | " + " | ".join(cells) + " |")
    if len(steps) > 1:
        lines.append(f"\nRuns stopped at different steps ({sorted(steps)}): compare with care.")
    classes = list(TASKS[task].classes)
    lines += ["", "| run | " + " | ".join(classes) + " | mIoU |", "|" + "---|" * (len(classes) + 2)]
    for merge, extra in RUNS:
        result = results.get(run_name(merge, extra))
        if result:
            cells = ["–" if result["iou"][c] is None else f"{100 * result['iou'][c]:.2f}" for c in classes]
            lines.append(f"| {run_name(merge, extra)} | " + " | ".join(cells) + f" | {100 * result['miou']:.2f} |")
    sized = {name: result["by_person_size"] for name, result in results.items() if "by_person_size" in result}
    if sized:  # scale merging should matter most where people are very small or very large
        bins = next(iter(sized.values()))
        header = [describe_person_size(size, part) for size, part in bins.items()]
        lines += ["", "mIoU by how much of the image the people cover:", "",
                  "| run | " + " | ".join(header) + " |", "|" + "---|" * (len(header) + 1)]
        for merge, extra in RUNS:
            parts = sized.get(run_name(merge, extra))
            if parts:
                lines.append(f"| {run_name(merge, extra)} | "
                             + " | ".join(f"{100 * parts[size]['miou']:.2f}" for size in bins) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="synthetic training folder")
    p.add_argument("--test", required=True, help="held-out synthetic test folder (a seed never trained on)")
    p.add_argument("--val", help="optional validation folder for the runs' curves (default: none)")
    p.add_argument("--out", type=Path, default=Path("runs/ablation"))
    p.add_argument("--task", choices=sorted(TASKS), default="parts")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="mobilenetv3_large")
    p.add_argument("--steps", type=int, default=3000, help="iterations per run (the same for every run)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-limit", type=int, help="score only the first N test images")
    p.add_argument("--time-budget", type=float,
                   help="minutes per run (a run that hits it stops early, so steps may then differ: the table "
                        "says how many each did)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--only", nargs="+", help="run names to (re)do, e.g. attention-es single-noes")
    args = p.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for merge, extra in RUNS:
        name = run_name(merge, extra)
        if args.only and name not in args.only:
            continue
        run = args.out / name
        train = [sys.executable, str(SCRIPTS / "train.py"), "--run", str(run), "--resume",
                 "--task", args.task, "--backbone", args.backbone, "--merge", merge,
                 "--data", f"synthetic:{args.train}:1.0", "--steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--crop-size", str(args.crop_size),
                 "--optimizer", args.optimizer, "--lr", str(args.lr), "--seed", str(args.seed),
                 "--threads", str(args.threads), "--workers", str(args.workers), "--no-progress"]
        if not extra:
            train.append("--no-extra-supervision")
        if args.val:
            train += ["--val", f"synthetic:{args.val}"]
        if args.time_budget:
            train += ["--time-budget", str(args.time_budget)]
        train += passthrough
        print(f"\n=== {name}: {shlex.join(train)}", flush=True)
        subprocess.run(train, check=True)
        result_path = run / "test.json"
        evaluate = [sys.executable, str(SCRIPTS / "evaluate.py"), "--checkpoint", str(run / "best.safetensors"),
                    "--dataset", "synthetic", "--root", args.test, "--json", str(result_path),
                    "--threads", str(args.threads), "--no-progress", "--by-person-size"]
        if args.test_limit:
            evaluate += ["--limit", str(args.test_limit)]
        subprocess.run(evaluate, check=True)
        result = json.loads(result_path.read_text())
        trained = json.loads((run / "summary.json").read_text())
        result.update(run=name, merge=merge, extra_supervision=extra, steps=trained["step"],
                      images_per_s=trained["images_per_s"])
        results[name] = result

    summary = args.out / "ablation.json"
    if summary.is_file() and args.only:  # keep earlier runs' rows when redoing a subset
        results = {**json.loads(summary.read_text()).get("runs", {}), **results}
    command = "python scripts/ablation.py " + shlex.join(argv + (["--", *passthrough] if passthrough else []))
    summary.write_text(json.dumps({"command": command, "task": args.task, "backbone": args.backbone,
                                   "runs": results}, indent=2))
    table = markdown(results, args.task)
    (args.out / "ablation.md").write_text(
        f"{args.backbone}, task {args.task}, {args.steps} steps per run, held-out test set {args.test}.\n"
        f"Command: `{command}`\n\n{table}")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
