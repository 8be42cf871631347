#!/usr/bin/env python
"""Train a PartCam parsing network (any backbone and merge) on synthetic and/or real data.

    python scripts/train.py --task parts --backbone mobilenetv3_large --merge attention \\
        --data synthetic:data/synth:1.0 --val synthetic:data/synth_val --run runs/parts --time-budget 60

Resumable: ``RUN/last.pt`` holds model, optimiser, scheduler, step, RNG and history, written
atomically; ``--resume`` continues exactly where it stopped (the data stream is a function of
the step). Ctrl-C, ``--time-budget`` and SIGTERM (a batch scheduler's stop, ``kill``) all stop
at a step boundary and write ``last.pt`` first. The best model by validation mIoU is
``RUN/best.safetensors``, a PartCam checkpoint the engines load directly. ``RUN/curves.png``
plots the loss and validation mIoU.

The paper's schedule (DeepLab attention-to-scale, Caffe): SGD, batch 30, base lr 0.001 with the
classifier at ×10, lr ×0.1 after 2,000 iterations, momentum 0.9, weight decay 5e-4, starting
from ImageNet weights. ``--schedule paper`` reproduces that step schedule; the default here is
the poly schedule lr·(1 − step/steps)^0.9 that later DeepLabs use. From random weights on a CPU,
``--optimizer adamw --lr 1e-3`` converges far faster than SGD.

Both tasks at once: ``--task parts+clothes`` trains one shared network with a classifier and an
attention head per task (``training/multitask.py``) on sources that label both (the synthetic
people), and writes ``RUN/best-parts.safetensors`` and ``RUN/best-clothes.safetensors``: two
ordinary checkpoints, for about the cost of training one.

Several GPUs: ``torchrun --nproc_per_node=N scripts/train.py ...`` (DDP; ``--batch-size`` is per GPU).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import distributed as dist
from torch.utils.data import DataLoader

from engines import BACKBONES, MERGES, TASKS, build_model, load_checkpoint, load_torchvision_weights, save_checkpoint
from training.augment import TrainTransform
from training.datasets import MixedBatchSampler, MixedDataset, open_dataset, parse_source
from training.losses import balanced_class_weights, parsing_loss
from training.metrics import evaluate_model
from training.multitask import JointLabels, build_joint_model, decode_labels, task_models

# Options that may change when a run resumes; everything else comes from the saved run.
RUNTIME_OPTIONS = {"resume", "time_budget", "stop_at", "threads", "workers", "device", "progress", "val_limit", "amp",
                   "channels_last"}


def parse_task(text: str) -> str:
    """A task name, or several joined with ``+`` for joint training."""
    tasks = text.split("+")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or len(set(tasks)) != len(tasks):
        raise argparse.ArgumentTypeError(f"{text!r}: use one of {', '.join(sorted(TASKS))}, or several joined "
                                         f"with + (e.g. parts+clothes)")
    return text


def _torchvision_backbone(model: torch.nn.Module, path: str) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = load_torchvision_weights(model.net.backbone, state)
    return f"torchvision ImageNet weights from {path} ({len(missing)} backbone tensors left random)"


def _selfie_backbone(model: torch.nn.Module, path: str) -> str:
    from engines.importers.selfie_tflite import load_selfie_weights

    load_selfie_weights(model)
    return ("encoder initialised from MediaPipe selfie segmentation (npm @mediapipe/selfie_segmentation, "
            "Apache-2.0), pretrained on real photos")


# --pretrained-backbone KIND:PATH. Other encoders plug in here, or as "package.module:function"
# (called as function(model, path) -> description) without editing this file.
BACKBONE_INITIALISERS = {"torchvision": _torchvision_backbone, "selfie": _selfie_backbone}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder (last.pt, best.safetensors, curves.png)")
    p.add_argument("--resume", action="store_true", help="continue RUN/last.pt if it exists (else start fresh)")
    model = p.add_argument_group("model")
    model.add_argument("--task", type=parse_task, default="parts",
                       help=f"{', '.join(sorted(TASKS))}, or parts+clothes to train both with one shared network")
    model.add_argument("--backbone", choices=sorted(BACKBONES), default="mobilenetv3_large")
    model.add_argument("--merge", choices=MERGES, default="attention")
    model.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    model.add_argument("--attention-width", type=int, help="attention hidden width (default: the backbone's)")
    model.add_argument("--backbone-kwargs", type=json.loads, default={}, help='JSON, e.g. \'{"output_stride": 8}\'')
    model.add_argument("--head-kwargs", type=json.loads, default={},
                       help='JSON for the head, e.g. \'{"refine": 2}\' (residual 3×3 blocks in the light head)')
    model.add_argument("--detail-width", type=int, default=0,
                       help="add a detail refiner of this width that sharpens the fused scores at stride 4 "
                            "with early backbone features (MobileNetV3; 0 = none)")
    model.add_argument("--person-loss", type=float, default=0.0,
                       help="weight of a loss keeping a person-aware encoder's own mask right (selfie)")
    model.add_argument("--init", action="append", default=[],
                       help="start from this PartCam checkpoint's weights, or a run's last.pt (tensors of matching "
                            "name and shape); repeatable: a joint run takes one checkpoint per task, each into "
                            "its own task, and the shared network from the last one")
    model.add_argument("--pretrained-backbone", metavar="KIND:PATH",
                       help="load encoder weights: torchvision:/path/mobilenet_v3_large.pth, selfie: (the "
                            "MediaPipe person encoder from npm), or "
                            "package.module:function:PATH for another initialiser")
    data = p.add_argument_group("data")
    data.add_argument("--data", action="append", required=True, metavar="NAME:ROOT[:WEIGHT][@SPLIT]",
                      help="a training source, repeatable: synthetic:data/synth:1.0 --data lip:/data/LIP:0.5")
    data.add_argument("--val", metavar="NAME:ROOT[@SPLIT]", help="held-out set for periodic validation")
    data.add_argument("--crop-size", type=int, default=320)
    data.add_argument("--scale-range", type=float, nargs=2, default=[0.5, 1.5])
    data.add_argument("--no-flip", action="store_true")
    data.add_argument("--input-size", type=int, help="validation input size and the checkpoint's (default: crop)")
    optim = p.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=20000, help="total iterations (the lr schedule's length)")
    optim.add_argument("--batch-size", type=int, default=8, help="per process")
    optim.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    optim.add_argument("--lr", type=float, help="base lr (default 0.001 for sgd, 0.001 for adamw)")
    optim.add_argument("--classifier-lr-mult", type=float, default=1.0,
                       help="lr multiplier for the new layers (classifier, attention); the paper used 10 "
                            "on an ImageNet-initialised backbone")
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--weight-decay", type=float, help="default 5e-4 for sgd, 1e-4 for adamw")
    optim.add_argument("--schedule", choices=("poly", "paper"), default="poly",
                       help="poly: (1-step/steps)^0.9; paper: ×0.1 after --paper-drop-step")
    optim.add_argument("--paper-drop-step", type=int, default=2000)
    optim.add_argument("--no-extra-supervision", action="store_true", help="loss on the fused output only")
    optim.add_argument("--class-balance", type=float, default=0.0, metavar="POWER",
                       help="weight each class by (median frequency / its frequency)^POWER, counted on up to 500 "
                            "training labels per source; 0.5 lifts rare classes (bags, shoes), 0 is off")
    optim.add_argument("--label-grid", action="store_true",
                       help="downsample labels to the logits grid (the paper) instead of upsampling logits")
    optim.add_argument("--seed", type=int, default=0)
    run = p.add_argument_group("running")
    run.add_argument("--val-every", type=int, default=500, help="steps between validations (and best saves)")
    run.add_argument("--val-limit", type=int, default=200, help="validation images (0 = all)")
    run.add_argument("--save-every", type=int, default=200, help="steps between RUN/last.pt saves")
    run.add_argument("--log-every", type=int, default=20)
    run.add_argument("--time-budget", type=float, help="minutes; stop cleanly (validate, save) before it ends")
    run.add_argument("--stop-at", type=int, help="stop cleanly at this step (the schedule still spans --steps)")
    run.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch")
    run.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    run.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                     help="keep NCHW tensors (channels-last trains depthwise convolutions faster on CPU; see "
                          "scripts/benchmark_training.py)")
    run.add_argument("--half", action="store_true", help="store best.safetensors in fp16 (half the size)")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 1e-3
    if args.weight_decay is None:
        args.weight_decay = 5e-4 if args.optimizer == "sgd" else 1e-4
    if args.input_size is None:
        args.input_size = args.crop_size
    return args


def _jsonable(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def atomic_torch_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def lr_factor(step: int, args: argparse.Namespace) -> float:
    if args.schedule == "paper":
        return 0.1 if step >= args.paper_drop_step else 1.0
    return max(0.0, 1.0 - step / max(1, args.steps)) ** 0.9


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """Param groups: backbone/head vs new layers (× classifier-lr-mult); no decay on biases and norms."""
    new_layers = {id(p) for task_model in task_models(model).values()
                  for m in (task_model.net.classifier, task_model.merge) for p in m.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in new_layers, param.ndim > 1), []).append(param)
    param_groups = [
        {"params": params, "lr": args.lr * (args.classifier_lr_mult if new else 1.0),
         "weight_decay": args.weight_decay if decay else 0.0}
        for (new, decay), params in sorted(groups.items())
    ]
    if args.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=args.lr, momentum=args.momentum)
    return torch.optim.AdamW(param_groups, lr=args.lr)


def initialise(model: torch.nn.Module, args: argparse.Namespace) -> list[str]:
    """Apply --init and --pretrained-backbone; returns what was loaded, for the checkpoint notes."""
    notes = []
    models = task_models(model)
    shared = next(iter(models.values()))  # a joint model's tasks share its backbone
    if args.pretrained_backbone:
        kind, _, path = args.pretrained_backbone.partition(":")
        if kind in BACKBONE_INITIALISERS:
            notes.append(BACKBONE_INITIALISERS[kind](shared, path))
        else:  # package.module:function:PATH
            function, _, path = path.partition(":")
            if not function or not path:
                raise SystemExit(f"--pretrained-backbone: unknown kind {kind!r}; use "
                                 f"{', '.join(BACKBONE_INITIALISERS)}:PATH or package.module:function:PATH")
            notes.append(str(getattr(importlib.import_module(kind), function)(shared, path)))
    for path in args.init:
        if str(path).endswith(".pt"):  # another run's training state: same layout, whole model
            source = torch.load(path, map_location="cpu", weights_only=True)["model"]
            targets = {"the whole model": model}
        else:
            checkpoint = load_checkpoint(path)
            source = checkpoint.state_dict()
            # A checkpoint of one of this run's tasks initialises that task (and the shared network);
            # one of another task lends whatever fits to every task.
            own_task = checkpoint.metadata.task
            targets = {own_task: models[own_task]} if own_task in models else models
        for name, target in targets.items():
            own = target.state_dict()
            matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
            target.load_state_dict(matched, strict=False)
            notes.append(f"{name}: initialised from {path} ({len(matched)}/{len(own)} tensors)")
    return notes


def plot_curves(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 3.8))
    train = history.get("train", [])
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax_loss.set(xlabel="step", ylabel="training loss", title="Loss")
    ax_loss.grid(alpha=0.3)
    val = history.get("val", [])
    if val and "tasks" in val[-1]:  # joint training: one line per task
        for task in val[-1]["tasks"]:
            ax_miou.plot([r["step"] for r in val], [100 * r["tasks"][task]["miou"] for r in val], "o-", lw=1.5,
                         label=task)
        ax_miou.legend()
    elif val:
        ax_miou.plot([r["step"] for r in val], [100 * r["miou"] for r in val], "o-", lw=1.5)
    ax_miou.set(xlabel="step", ylabel="mIoU (%)", title="Validation mIoU")
    ax_miou.grid(alpha=0.3)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode and augment; the main process owns the cores for the network
    # A SIGTERM sent to the whole group (kill -- -PGID, a batch scheduler) must reach only the main
    # process, which stops cleanly and shuts its workers down; a worker killed by it first would
    # abort the run before last.pt is written.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TerminationRequest:
    """Turns SIGTERM into a flag the training loop checks between steps, so the run stops at a step
    boundary and saves RUN/last.pt (resumable) instead of dying mid-step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def install(self) -> TerminationRequest:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    last_path = args.run / "last.pt"
    state = None
    if args.resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        saved = state["args"]
        for key, value in saved.items():  # the run's own settings win, runtime options come from this call
            if key not in RUNTIME_OPTIONS and key != "run":
                setattr(args, key, value)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    is_main = rank == 0
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed + rank)

    # Data: each source gets augmentation that knows its own left/right label swaps.
    tasks = args.task.split("+")
    joint = len(tasks) > 1
    sources, weights = [], []
    for text in args.data:
        spec = parse_source(text)
        try:
            per_task = [open_dataset(spec.name, spec.root, split=spec.split, task=task) for task in tasks]
            dataset = JointLabels(per_task) if joint else per_task[0]
        except ValueError as error:
            raise SystemExit(f"--data {text}: {error}") from None
        # People appear at the engine's sizes: images are scaled around the input size, then cropped.
        dataset.transform = TrainTransform(crop_size=args.crop_size, base_size=args.input_size,
                                           scale_range=tuple(args.scale_range), flip=not args.no_flip,
                                           flip_lut=dataset.flip_lut())
        sources.append(dataset)
        weights.append(spec.weight)
    trained_on = " + ".join(f"{s.describe()} ×{w:g}" for s, w in zip(sources, weights))
    class_weights: dict[str, torch.Tensor | None] = {task: None for task in tasks}
    if args.class_balance > 0:
        for index, task in enumerate(tasks):
            counts = sum((s.datasets[index] if joint else s).pixel_counts() for s in sources)
            class_weights[task] = balanced_class_weights(counts, power=args.class_balance)
    val_sets = {}
    if args.val:
        spec = parse_source(args.val)
        split = spec.split or ("val" if spec.name != "synthetic" else None)
        val_sets = {task: open_dataset(spec.name, spec.root, split=split, task=task) for task in tasks}

    model_options = {"backbone": args.backbone, "merge": args.merge, "scales": args.scales,
                     "attention_width": args.attention_width, "backbone_kwargs": args.backbone_kwargs,
                     "head_kwargs": args.head_kwargs, "detail_width": args.detail_width}
    model = build_joint_model(tasks=tasks, **model_options) if joint else build_model(task=tasks[0], **model_options)
    init_notes = initialise(model, args) if state is None else list(state.get("init_notes", []))
    model.to(device).train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = make_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, args))
    # best: {task: {"miou", "step"}}, the best validation so far of each task's model
    step, history, best = 0, {"train": [], "val": []}, {task: {"miou": -1.0, "step": None} for task in tasks}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history, best = int(state["step"]), state["history"], state["best"]
        if "miou" in best:  # runs saved before per-task bests
            best = {tasks[0]: best}
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], device)
    core = model
    models = task_models(core)
    best_paths = {task: args.run / (f"best-{task}.safetensors" if joint else "best.safetensors") for task in tasks}
    if distributed:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        core = model
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = MixedBatchSampler([len(s) for s in sources], weights, args.batch_size, seed=args.seed,
                                start_step=step, rank=rank)
    loader = DataLoader(MixedDataset(sources), batch_sampler=sampler, num_workers=args.workers,
                        pin_memory=device.type == "cuda", worker_init_fn=_worker_init if args.workers else None,
                        prefetch_factor=4 if args.workers else None,
                        # its own generator: starting the loader must not draw from the global RNG (dropout's),
                        # or a resumed run would diverge from an uninterrupted one
                        generator=torch.Generator().manual_seed(args.seed))
    extra = not args.no_extra_supervision

    def save_last() -> None:
        if not is_main:
            return
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = [torch.cuda.get_rng_state(device)]
        atomic_torch_save({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "step": step, "rng": rng, "history": history,
                           "best": best, "args": _jsonable(args), "init_notes": init_notes}, last_path)
        plot_curves(history, args.run / "curves.png")

    def save_best(task: str, metrics: dict) -> None:
        notes = (f"{args.backbone}/{args.merge}, extra supervision {'on' if extra else 'off'}, {args.optimizer} "
                 f"lr {args.lr:g} ({args.schedule}), batch {args.batch_size}×{world}, crop {args.crop_size}, "
                 f"step {step}/{args.steps}" + (f"; trained jointly for {args.task} with a shared network"
                                                if joint else "")
                 + (f"; class weights {[round(float(w), 2) for w in class_weights[task]]}"
                    if class_weights[task] is not None else "")
                 + "".join(f"; {n}" for n in init_notes))
        save_checkpoint(best_paths[task], models[task], half=args.half, input_size=args.input_size,
                        trained=True, trained_on=trained_on, metrics=metrics, notes=notes)

    def validate() -> None:
        started = time.monotonic()
        results = {task: evaluate_model(models[task], val_sets[task], input_size=args.input_size, device=device,
                                        limit=args.val_limit or None) for task in tasks}
        entry = {"step": step, "miou": sum(r["miou"] for r in results.values()) / len(results),
                 "seconds": time.monotonic() - started}
        if joint:
            entry["tasks"] = {task: {"miou": r["miou"], "iou": r["iou"]} for task, r in results.items()}
        else:
            entry["iou"] = results[tasks[0]]["iou"]
        history["val"].append(entry)
        for task, result in results.items():
            if result["miou"] > best[task]["miou"]:
                best[task].update(miou=result["miou"], step=step)
                save_best(task, {"val_miou": result["miou"], "val_iou": result["iou"], "val_images": result["images"],
                                 "val_dataset": val_sets[task].describe(), "step": step})
            print(f"step {step}: {task + ' ' if joint else ''}validation mIoU {100 * result['miou']:.2f} "
                  f"(best {100 * best[task]['miou']:.2f} at step {best[task]['step']})", flush=True)

    if is_main:
        args.run.mkdir(parents=True, exist_ok=True)
        (args.run / "args.json").write_text(json.dumps(_jsonable(args), indent=2))
        print(f"{'resuming at' if state else 'starting at'} step {step}/{args.steps} on {device} "
              f"(world {world}); training on {trained_on}", flush=True)

    started = time.monotonic()
    budget = args.time_budget * 60 if args.time_budget else math.inf
    reserve = 0.0  # seconds kept for the last validation and save
    bar = None
    if is_main and args.progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=step, unit="step", dynamic_ncols=True, mininterval=2)
    window_loss, window_n, window_start = 0.0, 0, time.monotonic()
    step_seconds = 0.0
    batches = iter(loader)
    termination = TerminationRequest().install()
    try:
        end = min(args.steps, args.stop_at or args.steps)
        while step < end:
            elapsed = time.monotonic() - started
            stop = torch.tensor([int(termination.requested or elapsed + step_seconds + reserve > budget)],
                                device=device)
            if distributed:
                dist.broadcast(stop, 0)
            if stop.item():
                break
            t0 = time.monotonic()
            images, labels = next(batches)
            images = images.to(device, non_blocking=True).float().contiguous(memory_format=memory_format)
            labels = labels.to(device, non_blocking=True).long()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda"):
                output = model(core.preprocessing.normalise(images))
                outputs, targets = (output, decode_labels(labels, tasks)) if joint else ({tasks[0]: output},
                                                                                        {tasks[0]: labels})
                loss, terms = 0.0, {}
                for task in tasks:
                    task_loss, task_terms = parsing_loss(outputs[task], targets[task], extra_supervision=extra,
                                                         label_grid=args.label_grid,
                                                         person_weight=getattr(args, "person_loss", 0.0),
                                                         class_weights=class_weights[task])
                    loss = loss + task_loss
                    terms.update({(f"{task}/{k}" if joint else k): v for k, v in task_terms.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            step_seconds = 0.9 * step_seconds + 0.1 * (time.monotonic() - t0) if step_seconds else time.monotonic() - t0
            step_loss = float(loss.detach())
            window_loss += step_loss
            window_n += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
            if is_main and (step % args.log_every == 0 or step == args.steps):
                seconds = time.monotonic() - window_start
                history["train"].append({"step": step, "loss": window_loss / window_n,
                                         "lr": scheduler.get_last_lr()[0],
                                         "images_per_s": window_n * args.batch_size * world / max(seconds, 1e-9),
                                         "terms": terms})
                window_loss, window_n, window_start = 0.0, 0, time.monotonic()
            if val_sets and step % args.val_every == 0:
                if is_main:
                    validate()
                    reserve = history["val"][-1]["seconds"] + 5
                if distributed:
                    dist.barrier()
            if step % args.save_every == 0:
                save_last()
    except KeyboardInterrupt:
        if is_main:
            print(f"\ninterrupted at step {step}; saving {last_path}", flush=True)
    finally:
        termination.restore()
        if bar is not None:
            bar.close()
    if termination.requested and is_main:  # a scheduler's grace period is short: save, skip validation
        print(f"\nterminated (SIGTERM) at step {step}; saving {last_path}", flush=True)

    if is_main:
        if val_sets and not termination.requested and (not history["val"] or history["val"][-1]["step"] != step):
            validate()
        elif not val_sets:
            for task in tasks:
                save_best(task, {"step": step, "note": "no validation set; this is the latest model"})
        save_last()
        speed = [r["images_per_s"] for r in history["train"][-10:]]
        summary = {"step": step, "steps": args.steps, "finished": step >= args.steps,
                   "minutes_this_call": (time.monotonic() - started) / 60,
                   "images_per_s": sum(speed) / len(speed) if speed else None,
                   "best_val_miou": ({t: b["miou"] for t, b in best.items()} if joint else best[tasks[0]]["miou"])
                   if val_sets else None,
                   "best_step": {t: b["step"] for t, b in best.items()} if joint else best[tasks[0]]["step"]}
        (args.run / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"{'finished' if step >= args.steps else 'stopped'} at step {step}/{args.steps} after "
              f"{(time.monotonic() - started) / 60:.1f} min"
              + (f", {sum(speed) / len(speed):.1f} images/s" if speed else "")
              + "".join(f"; best {task} validation mIoU {100 * best[task]['miou']:.2f} at step {best[task]['step']}"
                        for task in tasks if val_sets)
              + f"; {', '.join(str(p) for p in best_paths.values())}", flush=True)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
