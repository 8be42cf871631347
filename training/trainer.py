"""The PartCam trainer: the loop, checkpoints, validation, LR schedules, stops and DDP in one place.

    from engines import ModelConfig
    from training.trainer import TrainConfig, Trainer

    config = TrainConfig(data=("synthetic:data/synth:1.0",), val="synthetic:data/synth_val", steps=2000)
    summary = Trainer(ModelConfig(task="parts"), config, "runs/parts").fit()
    summary = Trainer.resume("runs/parts").fit()        # continues RUN/last.pt exactly

What a run writes, in its folder: ``last.pt`` (model, optimiser, scheduler, step, RNG, history,
and the model and training descriptions, so that it resumes with nothing else given), written
atomically every ``save_every`` steps and when stopping; ``best.safetensors`` (a joint run:
``best-<task>.safetensors`` per task), the best model by validation mIoU as a PartCam checkpoint;
``curves.png``, ``args.json`` (the settings) and ``summary.json``. ``Ctrl-C``, SIGTERM and a time
budget stop at a step boundary after saving ``last.pt``. Under ``torchrun`` every process runs
the same trainer (``training/distributed.py``); rank 0 writes the files.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from engines import ModelConfig, save_checkpoint

from .augment import TrainTransform
from .datasets import MixedBatchSampler, MixedDataset, open_dataset, parse_source
from .distributed import Distributed
from .initialise import build_training_model, initialise, load_backbone, resolved_config, run_model_config, tasks_of
from .losses import balanced_class_weights, parsing_loss
from .metrics import evaluate_model
from .multitask import JointLabels, decode_labels, task_models

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "paper")


class TrainingError(Exception):
    """A run cannot start as asked (bad data source, settings); the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """How a run trains: data, optimisation and checkpointing. Saved with the run; a resume keeps it.

    The paper's schedule (DeepLab attention-to-scale, Caffe) was SGD, batch 30, base lr 0.001 with
    the classifier at ×10, lr ×0.1 after 2,000 iterations, momentum 0.9, weight decay 5e-4:
    ``schedule="paper", classifier_lr_mult=10``. The default is the poly schedule later DeepLabs use.
    """

    data: tuple[str, ...] = ()  # training sources, NAME:ROOT[:WEIGHT][@SPLIT]
    val: str | None = None  # held-out set for validation, NAME:ROOT[@SPLIT]
    crop_size: int = 320
    scale_range: tuple[float, float] = (0.5, 1.5)  # random scale around input_size before cropping
    flip: bool = True
    input_size: int | None = None  # validation input size and the checkpoints'; None: crop_size
    steps: int = 20000  # the schedule's length
    batch_size: int = 8  # per process
    optimizer: str = "sgd"
    lr: float = 1e-3
    classifier_lr_mult: float = 1.0  # lr multiplier for the new layers (classifier, attention)
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 5e-4 for sgd, 1e-4 for adamw
    schedule: str = "poly"  # poly: lr·(1 − step/steps)^0.9; paper: ×0.1 from paper_drop_step
    paper_drop_step: int = 2000
    extra_supervision: bool = True  # a loss on each scale's scores besides the fused output
    class_balance: float = 0.0  # weight classes by (median frequency / frequency)^this
    label_grid: bool = False  # downsample labels to the scores' grid (the paper) instead of upsampling scores
    person_loss: float = 0.0  # weight of a person-aware encoder's own mask loss
    seed: int = 0
    val_every: int = 500
    save_every: int = 200
    log_every: int = 20
    half: bool = False  # store best checkpoints in fp16

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        object.__setattr__(self, "data", tuple(self.data))
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", 5e-4 if self.optimizer == "sgd" else 1e-4)
        if self.input_size is None:
            object.__setattr__(self, "input_size", self.crop_size)

    def replace(self, **changes: Any) -> TrainConfig:
        _check_names(type(self), changes)
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        _check_names(cls, data)
        return cls(**data)


@dataclass(frozen=True)
class RuntimeOptions:
    """How this call runs: may differ each time a run resumes."""

    time_budget: float | None = None  # minutes; stop cleanly (validate, save) before they are up
    stop_at: int | None = None  # stop cleanly at this step (the schedule still spans steps)
    threads: int | None = None  # torch CPU threads; None: all cores
    workers: int = 1  # DataLoader worker processes
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    progress: bool = True  # a progress bar
    amp: bool = False  # bfloat16 autocast on CUDA
    channels_last: bool = True  # depthwise convolutions train faster channels-last on a CPU
    val_limit: int = 200  # validation images (0 = all)


def _check_names(cls: type, names: Mapping[str, Any]) -> None:
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")


def legacy_train_config(args: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of a run saved before runs stored one (its command line's options)."""
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in args.items() if k in names}
    values["flip"] = not args.get("no_flip", False)
    values["extra_supervision"] = not args.get("no_extra_supervision", False)
    return TrainConfig.from_dict(values)


@dataclass
class TrainSummary:
    """What ``fit`` did: where it stopped, how fast, and the best validation of each task."""

    step: int
    steps: int
    stopped_by: str  # "steps", "stop_at", "time_budget", "interrupt" or "sigterm"
    minutes: float
    images_per_s: float | None
    best: dict[str, dict]  # {task: {"miou", "step"}}; miou -1 without validation
    checkpoints: dict[str, Path] = field(default_factory=dict)  # {task: best checkpoint}

    @property
    def finished(self) -> bool:
        return self.step >= self.steps

    def to_json(self, validated: bool) -> dict[str, Any]:
        """``summary.json``'s content; a single task's best values are plain numbers."""
        joint = len(self.best) > 1
        miou = {t: b["miou"] for t, b in self.best.items()}
        step = {t: b["step"] for t, b in self.best.items()}
        return {"step": self.step, "steps": self.steps, "finished": self.finished, "stopped_by": self.stopped_by,
                "minutes_this_call": self.minutes, "images_per_s": self.images_per_s,
                "best_val_miou": (miou if joint else next(iter(miou.values()))) if validated else None,
                "best_step": step if joint else next(iter(step.values()))}


def lr_factor(step: int, config: TrainConfig) -> float:
    """The schedule's multiplier of the base lr at ``step``."""
    if config.schedule == "paper":
        return 0.1 if step >= config.paper_drop_step else 1.0
    return max(0.0, 1.0 - step / max(1, config.steps)) ** 0.9


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Param groups: backbone/head vs new layers (× classifier_lr_mult); no decay on biases and norms."""
    new_layers = {id(p) for task_model in task_models(model).values()
                  for m in (task_model.net.classifier, task_model.merge) for p in m.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in new_layers, param.ndim > 1), []).append(param)
    param_groups = [
        {"params": params, "lr": config.lr * (config.classifier_lr_mult if new else 1.0),
         "weight_decay": config.weight_decay if decay else 0.0}
        for (new, decay), params in sorted(groups.items())
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(param_groups, lr=config.lr)


def atomic_torch_save(obj: dict, path: Path) -> None:
    """``torch.save`` to a temp file, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot_curves(history: dict, path: Path) -> None:
    """Training loss and validation mIoU (one line per task) as a PNG, written atomically."""
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


class Trainer:
    """Trains a model described by a :class:`ModelConfig` as a :class:`TrainConfig` says, into ``run``.

    ``model_config.task`` may join tasks with ``+`` (``"parts+clothes"``): one network shared by
    the tasks, each with its own classifier and attention (``training/multitask.py``).
    ``init`` are checkpoints to start from (``training/initialise.py``); their weights must fit the
    model completely unless ``allow_partial``. ``pretrained_backbone`` is ``KIND:PATH`` encoder
    weights, loaded before ``init``. Under ``torchrun`` the constructor joins the process group.
    """

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, run: str | os.PathLike, *,
                 runtime: RuntimeOptions | None = None, init: Sequence[str | os.PathLike] = (),
                 allow_partial: bool = False, pretrained_backbone: str | None = None, notes: Sequence[str] = (),
                 _state: dict | None = None) -> None:
        self.config = train_config
        self.runtime = runtime or RuntimeOptions()
        self.run = Path(run)
        self.tasks = tasks_of(model_config)
        self.joint = len(self.tasks) > 1
        if not train_config.data:
            raise TrainingError("no training data: give at least one source")
        self.dist, self.device = Distributed.start(self.runtime.device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, self.runtime.threads or os.cpu_count() or 1))
        torch.manual_seed(train_config.seed + self.dist.rank)
        self.sources, self.weights = self._open_sources()
        self.trained_on = " + ".join(f"{s.describe()} ×{w:g}" for s, w in zip(self.sources, self.weights))
        self.class_weights = self._class_weights()
        self.val_sets = self._open_validation()

        # The model, built as described, then its starting weights (a resume loads its own below).
        self.model = build_training_model(model_config)
        self.model_config = resolved_config(self.model, model_config.task)
        if _state is None:
            self.init_notes = list(notes)
            if pretrained_backbone:
                self.init_notes.append(load_backbone(self.model, pretrained_backbone))
            self.init_notes += initialise(self.model, init, allow_partial=allow_partial)
        else:
            self.init_notes = list(_state.get("init_notes", []))
        self.model.to(self.device).train()
        self.memory_format = torch.channels_last if self.runtime.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.optimizer = make_optimizer(self.model, train_config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, train_config))
        self.step = 0
        self.history: dict[str, list] = {"train": [], "val": []}
        # The best validation so far of each task's model.
        self.best: dict[str, dict] = {task: {"miou": -1.0, "step": None} for task in self.tasks}
        self.resumed = _state is not None
        if _state is not None:
            self._restore(_state)
        self.models = task_models(self.model)
        self.best_paths = {task: self.run / (f"best-{task}.safetensors" if self.joint else "best.safetensors")
                           for task in self.tasks}
        self.step_model = self.dist.wrap(self.model, self.device)  # what runs the training step (DDP or not)

    @classmethod
    def resume(cls, run: str | os.PathLike, runtime: RuntimeOptions | None = None) -> Trainer:
        """A trainer continuing ``run/last.pt`` exactly: its model and training settings come from the file."""
        state = torch.load(Path(run) / "last.pt", map_location="cpu", weights_only=True)
        model_config, train_config = saved_configs(state)
        return cls(model_config, train_config, run, runtime=runtime, _state=state)

    def differences(self, model_changes: Mapping[str, Any], train_changes: Mapping[str, Any]) -> list[str]:
        """Which of these ModelConfig and TrainConfig changes differ from this run's settings, as text."""
        saved = {**self.model_config.to_dict(), **self.config.to_dict()}
        wanted = {**self.model_config.replace(**model_changes).to_dict(),
                  **self.config.replace(**train_changes).to_dict()}
        return [f"{k}={wanted[k]!r} (the run has {saved[k]!r})" for k in {**model_changes, **train_changes}
                if wanted[k] != saved[k]]

    # -- set-up ---------------------------------------------------------------------------------------

    def _open_sources(self) -> tuple[list, list[float]]:
        """Each source with augmentation that knows its own left/right label swaps."""
        config, sources, weights = self.config, [], []
        for text in config.data:
            spec = parse_source(text)
            try:
                per_task = [open_dataset(spec.name, spec.root, split=spec.split, task=task) for task in self.tasks]
                dataset = JointLabels(per_task) if self.joint else per_task[0]
            except ValueError as error:
                raise TrainingError(f"training source {text}: {error}") from None
            # People appear at the engine's sizes: images are scaled around the input size, then cropped.
            dataset.transform = TrainTransform(crop_size=config.crop_size, base_size=config.input_size,
                                               scale_range=config.scale_range, flip=config.flip,
                                               flip_lut=dataset.flip_lut())
            sources.append(dataset)
            weights.append(spec.weight)
        return sources, weights

    def _class_weights(self) -> dict[str, torch.Tensor | None]:
        weights: dict[str, torch.Tensor | None] = dict.fromkeys(self.tasks)
        if self.config.class_balance > 0:
            for index, task in enumerate(self.tasks):
                counts = sum((s.datasets[index] if self.joint else s).pixel_counts() for s in self.sources)
                weights[task] = balanced_class_weights(counts, power=self.config.class_balance)
        return weights

    def _open_validation(self) -> dict:
        if not self.config.val:
            return {}
        spec = parse_source(self.config.val)
        split = spec.split or ("val" if spec.name != "synthetic" else None)
        try:
            return {task: open_dataset(spec.name, spec.root, split=split, task=task) for task in self.tasks}
        except ValueError as error:
            raise TrainingError(f"validation set {self.config.val}: {error}") from None

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.history, self.best = int(state["step"]), state["history"], state["best"]
        if "miou" in self.best:  # runs saved before per-task bests
            self.best = {self.tasks[0]: self.best}
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], self.device)

    def _batches(self) -> Iterator:
        sampler = MixedBatchSampler([len(s) for s in self.sources], self.weights, self.config.batch_size,
                                    seed=self.config.seed, start_step=self.step, rank=self.dist.rank)
        workers = self.runtime.workers
        loader = DataLoader(MixedDataset(self.sources), batch_sampler=sampler, num_workers=workers,
                            pin_memory=self.device.type == "cuda", worker_init_fn=_worker_init if workers else None,
                            prefetch_factor=4 if workers else None,
                            # its own generator: starting the loader must not draw from the global RNG
                            # (dropout's), or a resumed run would diverge from an uninterrupted one
                            generator=torch.Generator().manual_seed(self.config.seed))
        return iter(loader)

    # -- files ----------------------------------------------------------------------------------------

    def save_last(self) -> None:
        """Write ``RUN/last.pt`` (everything a resume needs) and ``curves.png``; rank 0 only."""
        if not self.dist.is_main:
            return
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = [torch.cuda.get_rng_state(self.device)]
        atomic_torch_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                           "scheduler": self.scheduler.state_dict(), "step": self.step, "rng": rng,
                           "history": self.history, "best": self.best, "model_config": self.model_config.to_dict(),
                           "train_config": self.config.to_dict(), "init_notes": self.init_notes},
                          self.run / "last.pt")
        plot_curves(self.history, self.run / "curves.png")

    def save_best(self, task: str, metrics: dict) -> None:
        """Write ``task``'s model as a PartCam checkpoint, with how it was trained in its notes."""
        config, model = self.config, self.model_config
        notes = (f"{model.backbone}/{model.merge}, extra supervision {'on' if config.extra_supervision else 'off'}, "
                 f"{config.optimizer} lr {config.lr:g} ({config.schedule}), batch {config.batch_size}×"
                 f"{self.dist.world}, crop {config.crop_size}, step {self.step}/{config.steps}"
                 + (f"; trained jointly for {model.task} with a shared network" if self.joint else "")
                 + (f"; class weights {[round(float(w), 2) for w in self.class_weights[task]]}"
                    if self.class_weights[task] is not None else "")
                 + "".join(f"; {n}" for n in self.init_notes))
        save_checkpoint(self.best_paths[task], self.models[task], half=config.half, input_size=config.input_size,
                        trained=True, trained_on=self.trained_on, metrics=metrics, notes=notes)

    def validate(self) -> dict[str, dict]:
        """Score each task's model on the validation set, record it, and save any new best; rank 0 only."""
        started = time.monotonic()
        results = {task: evaluate_model(self.models[task], self.val_sets[task], input_size=self.config.input_size,
                                        device=self.device, limit=self.runtime.val_limit or None)
                   for task in self.tasks}
        entry: dict[str, Any] = {"step": self.step, "miou": sum(r["miou"] for r in results.values()) / len(results),
                                 "seconds": time.monotonic() - started}
        if self.joint:
            entry["tasks"] = {task: {"miou": r["miou"], "iou": r["iou"]} for task, r in results.items()}
        else:
            entry["iou"] = results[self.tasks[0]]["iou"]
        self.history["val"].append(entry)
        for task, result in results.items():
            best = self.best[task]
            if result["miou"] > best["miou"]:
                best.update(miou=result["miou"], step=self.step)
                self.save_best(task, {"val_miou": result["miou"], "val_iou": result["iou"],
                                      "val_images": result["images"], "val_dataset": self.val_sets[task].describe(),
                                      "step": self.step})
            print(f"step {self.step}: {task + ' ' if self.joint else ''}validation mIoU {100 * result['miou']:.2f} "
                  f"(best {100 * best['miou']:.2f} at step {best['step']})", flush=True)
        return results

    # -- training -------------------------------------------------------------------------------------

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict[str, float]]:
        """One optimiser step on a batch; returns the loss and its terms."""
        images = images.to(self.device, non_blocking=True).float().contiguous(memory_format=self.memory_format)
        labels = labels.to(self.device, non_blocking=True).long()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.runtime.amp and self.device.type == "cuda"):
            output = self.step_model(self.model.preprocessing.normalise(images))
            if self.joint:
                outputs, targets = output, decode_labels(labels, self.tasks)
            else:
                outputs, targets = {self.tasks[0]: output}, {self.tasks[0]: labels}
            loss, terms = 0.0, {}
            for task in self.tasks:
                task_loss, task_terms = parsing_loss(outputs[task], targets[task],
                                                     extra_supervision=self.config.extra_supervision,
                                                     label_grid=self.config.label_grid,
                                                     person_weight=self.config.person_loss,
                                                     class_weights=self.class_weights[task])
                loss = loss + task_loss
                terms.update({(f"{task}/{k}" if self.joint else k): v for k, v in task_terms.items()})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach()), terms

    def fit(self) -> TrainSummary:
        """Train until ``steps`` (or ``stop_at``, the time budget, Ctrl-C or SIGTERM); returns what happened.

        Every stop lands on a step boundary and writes ``last.pt``; all but SIGTERM (whose grace
        period is short) validate first.
        """
        config, runtime, is_main = self.config, self.runtime, self.dist.is_main
        if is_main:
            self.run.mkdir(parents=True, exist_ok=True)
            settings = {"model": self.model_config.to_dict(), "train": self.config.to_dict(),
                        "runtime": asdict(runtime), "init_notes": self.init_notes}
            (self.run / "args.json").write_text(json.dumps(settings, indent=2))
            print(f"{'resuming at' if self.resumed else 'starting at'} step {self.step}/{config.steps} on "
                  f"{self.device} (world {self.dist.world}); training on {self.trained_on}", flush=True)
            for note in self.init_notes:
                print(note, flush=True)
        started = time.monotonic()
        budget = runtime.time_budget * 60 if runtime.time_budget else math.inf
        reserve = 0.0  # seconds kept for the last validation and save
        bar = None
        if is_main and runtime.progress:
            from tqdm import tqdm

            bar = tqdm(total=config.steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=2)
        window_loss, window_n, window_start = 0.0, 0, time.monotonic()
        step_seconds = 0.0
        end = min(config.steps, runtime.stop_at or config.steps)
        stopped_by = "stop_at" if end < config.steps else "steps"
        batches = self._batches()
        termination = TerminationRequest().install()
        try:
            while self.step < end:
                out_of_time = time.monotonic() - started + step_seconds + reserve > budget
                if self.dist.main_decides(termination.requested or out_of_time, self.device):
                    stopped_by = "sigterm" if termination.requested else "time_budget"
                    break
                t0 = time.monotonic()
                images, labels = next(batches)
                step_loss, terms = self.train_step(images, labels)
                seconds = time.monotonic() - t0
                step_seconds = 0.9 * step_seconds + 0.1 * seconds if step_seconds else seconds
                window_loss += step_loss
                window_n += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}", refresh=False)
                if is_main and (self.step % config.log_every == 0 or self.step == config.steps):
                    seconds = time.monotonic() - window_start
                    self.history["train"].append({
                        "step": self.step, "loss": window_loss / window_n, "lr": self.scheduler.get_last_lr()[0],
                        "images_per_s": window_n * config.batch_size * self.dist.world / max(seconds, 1e-9),
                        "terms": terms})
                    window_loss, window_n, window_start = 0.0, 0, time.monotonic()
                if self.val_sets and self.step % config.val_every == 0:
                    if is_main:
                        self.validate()
                        reserve = self.history["val"][-1]["seconds"] + 5
                    self.dist.barrier()
                if self.step % config.save_every == 0:
                    self.save_last()
        except KeyboardInterrupt:
            stopped_by = "interrupt"
            if is_main:
                print(f"\ninterrupted at step {self.step}; saving {self.run / 'last.pt'}", flush=True)
        finally:
            termination.restore()
            if bar is not None:
                bar.close()
        if termination.requested and stopped_by != "interrupt":  # also when it came during the last step
            stopped_by = "sigterm"
        if stopped_by == "sigterm" and is_main:  # a scheduler's grace period is short: save, skip validation
            print(f"\nterminated (SIGTERM) at step {self.step}; saving {self.run / 'last.pt'}", flush=True)

        speed = [r["images_per_s"] for r in self.history["train"][-10:]]
        summary = TrainSummary(step=self.step, steps=config.steps, stopped_by=stopped_by,
                               minutes=(time.monotonic() - started) / 60,
                               images_per_s=sum(speed) / len(speed) if speed else None,
                               best={t: dict(b) for t, b in self.best.items()}, checkpoints=dict(self.best_paths))
        if is_main:
            self._finish(summary)
        self.dist.close()
        return summary

    def _finish(self, summary: TrainSummary) -> None:
        """The last validation (or, without a validation set, the latest model as best), ``last.pt`` and the summary."""
        if self.val_sets and summary.stopped_by != "sigterm" and (
                not self.history["val"] or self.history["val"][-1]["step"] != self.step):
            self.validate()
        elif not self.val_sets:
            for task in self.tasks:
                self.save_best(task, {"step": self.step, "note": "no validation set; this is the latest model"})
        self.save_last()
        summary.best = {t: dict(b) for t, b in self.best.items()}
        (self.run / "summary.json").write_text(json.dumps(summary.to_json(bool(self.val_sets)), indent=2))
        print(f"{'finished' if summary.finished else 'stopped'} at step {self.step}/{self.config.steps} after "
              f"{summary.minutes:.1f} min"
              + (f", {summary.images_per_s:.1f} images/s" if summary.images_per_s else "")
              + "".join(f"; best {task} validation mIoU {100 * best['miou']:.2f} at step {best['step']}"
                        for task, best in self.best.items() if self.val_sets)
              + f"; {', '.join(str(p) for p in self.best_paths.values())}", flush=True)


def saved_configs(state: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The model and training descriptions in a run's ``last.pt`` (older runs: from their saved options)."""
    model_config = run_model_config(state)
    if "train_config" in state:
        return model_config, TrainConfig.from_dict(state["train_config"])
    return model_config, legacy_train_config(state["args"])
