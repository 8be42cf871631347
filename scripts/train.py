#!/usr/bin/env python
"""Train a PartCam parsing network (any backbone and merge) on synthetic and/or real data.

    python scripts/train.py --task parts --data synthetic:data/synth:1.0 --val synthetic:data/synth_val \\
        --run runs/parts --time-budget 60
    python scripts/train.py --run runs/parts --resume               # continue RUN/last.pt exactly
    python scripts/train.py --run runs/more --init runs/parts/best.safetensors --data synthetic:data/synth:1.0

--init builds the checkpoint's model: model options only change it, and tensors left unmatched are
an error listing them unless --allow-partial. --resume keeps the run's settings but the running
options. Ctrl-C, --time-budget and SIGTERM stop at a step boundary after saving RUN/last.pt.
--task parts+clothes trains both with one shared network (best-parts, best-clothes checkpoints).
DDP: torchrun --nproc_per_node=N -- scripts/train.py ... The trainer: training/trainer.py, docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from engines import BACKBONES, MERGES, TASKS, CheckpointError, ModelConfig
from training.initialise import starting_config
from training.trainer import RuntimeOptions, TrainConfig, Trainer, TrainingError

MODEL_OPTIONS = ("task", "backbone", "merge", "scales", "attention_width", "attention_dropout", "backbone_kwargs",
                 "head_kwargs", "detail_width")


def parse_task(text: str) -> str:
    """A task name, or several joined with ``+`` for joint training."""
    tasks = text.split("+")
    if any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
        raise argparse.ArgumentTypeError(f"{text!r}: use one of {', '.join(sorted(TASKS))}, or several joined "
                                         f"with + (e.g. parts+clothes)")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    title, examples, details = __doc__.split("\n\n", 2)
    p = argparse.ArgumentParser(description=f"{title}\n\n{examples}", epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # Options default to None, so that only those given change a checkpoint's or run's settings; the
    # defaults shown are ModelConfig's, TrainConfig's and RuntimeOptions'.
    defaults = {f.name: f.default for cls in (ModelConfig, TrainConfig, RuntimeOptions) for f in fields(cls)
                if f.default is not MISSING}

    def add(group: argparse._ArgumentGroup, flag: str, help: str = "", **kw) -> None:
        dest = kw.pop("dest", flag[2:].replace("-", "_"))
        shown = defaults.get(dest)
        if "type" in kw:
            kw.setdefault("metavar", {int: "N", float: "X", json.loads: "JSON"}.get(kw["type"], dest.upper()))
        if shown not in (None, ()) and not isinstance(shown, bool) and kw.get("action") is None:
            help += f" (default: {' '.join(map(str, shown)) if isinstance(shown, tuple) else shown})"
        group.add_argument(flag, dest=dest, default=kw.pop("default", None), help=help, **kw)

    p.add_argument("--run", type=Path, required=True, help="run folder (last.pt, best.safetensors, curves.png)")
    p.add_argument("--resume", action="store_true", help="continue RUN/last.pt if it exists (else start fresh)")
    g = p.add_argument_group("model (with --init: the checkpoint's unless given)")
    add(g, "--task", "parts, clothes, or parts+clothes: one shared network (default: parts)", type=parse_task)
    add(g, "--backbone", choices=sorted(BACKBONES))
    add(g, "--merge", choices=MERGES)
    add(g, "--scales", type=float, nargs="+", metavar="S")
    add(g, "--attention-width", "attention hidden width (default: the backbone's)", type=int)
    add(g, "--attention-dropout", "dropout in the attention head", type=float)
    add(g, "--backbone-kwargs", 'JSON, e.g. \'{"output_stride": 8}\'', type=json.loads)
    add(g, "--head-kwargs", 'JSON, e.g. \'{"refine": 2}\' (residual 3×3 blocks in the light head)', type=json.loads)
    add(g, "--detail-width", "width of a refiner sharpening the scores at stride 4 (MobileNetV3)", type=int)
    g.add_argument("--init", action="append", default=[], metavar="CKPT",
                   help="start from this PartCam checkpoint or run's last.pt, rebuilding its model; repeatable: "
                        "one checkpoint per task of a joint run, the shared network from the last")
    g.add_argument("--allow-partial", action="store_true",
                   help="load the --init tensors that match and report the rest, instead of failing")
    g.add_argument("--pretrained-backbone", metavar="KIND:PATH",
                   help="encoder weights: torchvision:/path/mobilenet_v3_large.pth, selfie: (MediaPipe's person "
                        "encoder from npm), or package.module:function:PATH")
    g = p.add_argument_group("data")
    add(g, "--data", "a training source, repeatable: --data synthetic:data/synth:1.0 --data lip:/data/LIP:0.5",
        action="append", metavar="NAME:ROOT[:WEIGHT][@SPLIT]")
    add(g, "--val", "held-out set for periodic validation", metavar="NAME:ROOT[@SPLIT]")
    add(g, "--crop-size", type=int)
    add(g, "--scale-range", type=float, nargs=2, metavar=("LOW", "HIGH"))
    add(g, "--no-flip", "no mirroring", dest="flip", action="store_false")
    add(g, "--input-size", "validation and checkpoint input size (default: the crop size)", type=int)
    g = p.add_argument_group("optimisation")
    add(g, "--steps", "total iterations, the schedule's length", type=int)
    add(g, "--batch-size", "per process", type=int)
    add(g, "--optimizer", choices=("sgd", "adamw"))
    add(g, "--lr", "base learning rate", type=float)
    add(g, "--classifier-lr-mult", "lr multiplier for the new layers (the paper: 10)", type=float)
    add(g, "--momentum", type=float)
    add(g, "--weight-decay", "default 5e-4 for sgd, 1e-4 for adamw", type=float)
    add(g, "--schedule", "poly: (1-step/steps)^0.9; paper: ×0.1 after --paper-drop-step", choices=("poly", "paper"))
    add(g, "--paper-drop-step", type=int)
    add(g, "--no-extra-supervision", "loss on the fused output only", dest="extra_supervision", action="store_false")
    add(g, "--class-balance", "weight classes by (median frequency / frequency)^POWER; 0.5 lifts rare ones",
        type=float, metavar="POWER")
    add(g, "--label-grid", "downsample labels to the scores' grid (the paper)", action="store_true")
    add(g, "--person-loss", "weight of a loss keeping a person-aware encoder's own mask right (selfie)", type=float)
    add(g, "--seed", type=int)
    add(g, "--half", "store best.safetensors in fp16", action="store_true")
    g = p.add_argument_group("checkpoints and logs")
    add(g, "--val-every", "steps between validations (and best saves)", type=int)
    add(g, "--save-every", "steps between RUN/last.pt saves", type=int)
    add(g, "--log-every", type=int)
    g = p.add_argument_group("running (may change when a run resumes)")
    add(g, "--val-limit", "validation images (0 = all)", type=int)
    add(g, "--time-budget", "minutes; stop cleanly (validate, save) before they are up", type=float)
    add(g, "--stop-at", "stop cleanly at this step (the schedule still spans --steps)", type=int)
    add(g, "--threads", "CPU threads for torch (default: all cores)", type=int)
    add(g, "--workers", "DataLoader worker processes", type=int)
    add(g, "--device", "auto, cpu, cuda or cuda:N")
    add(g, "--amp", "bfloat16 autocast on CUDA", action="store_true")
    add(g, "--no-channels-last", "keep NCHW tensors", dest="channels_last", action="store_false")
    add(g, "--no-progress", "no progress bar", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if not args.data and not (args.resume and (args.run / "last.pt").is_file()):
        p.error("--data is needed to start a run")
    return args


def _given(args: argparse.Namespace, cls: type) -> dict:
    """The options of ``cls`` given on the command line."""
    names = MODEL_OPTIONS if cls is ModelConfig else [f.name for f in fields(cls)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime = RuntimeOptions(**_given(args, RuntimeOptions))
    model_changes, train_changes = _given(args, ModelConfig), _given(args, TrainConfig)
    try:
        if args.resume and (args.run / "last.pt").is_file():
            trainer = Trainer.resume(args.run, runtime)
            ignored = trainer.differences(model_changes, train_changes)  # the run's own settings win
            if ignored:
                print(f"note: resuming {args.run} with its own settings; ignored: {', '.join(ignored)}. To change "
                      f"them, start a new run with --init {args.run / 'last.pt'}", flush=True)
        else:
            model_config, notes = starting_config(args.init, model_changes)
            trainer = Trainer(model_config, TrainConfig(**train_changes), args.run, runtime=runtime, init=args.init,
                              allow_partial=args.allow_partial, pretrained_backbone=args.pretrained_backbone,
                              notes=notes)
    except (TrainingError, CheckpointError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
