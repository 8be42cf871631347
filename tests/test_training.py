"""Losses, metrics on hand-computed confusion matrices, and the trainer: the loss falls, resume is exact."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_datasets import make_synthetic

from engines import build_model, load_checkpoint
from scripts import train
from training.datasets import open_dataset
from training.losses import parsing_loss
from training.metrics import confusion_matrix, iou_per_class, mean_iou, summarise

ROOT = Path(__file__).resolve().parents[1]


def test_confusion_matrix_and_iou_by_hand():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=4)
    # rows = truth, columns = prediction; the 255 pixel is skipped
    assert cm.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    iou = iou_per_class(cm)
    # class 0: TP 1, FP 2, FN 1 → 1/4; class 1: TP 2, FP 1, FN 1 → 2/4; class 2: TP 1, FN 1 → 1/2; class 3 unseen
    assert np.allclose(iou[:3], [0.25, 0.5, 0.5]) and math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert mean_iou(cm, classes=[0, 1]) == pytest.approx(0.375)
    result = summarise(cm, ["a", "b", "c", "d"], classes=[0, 1, 2])
    assert result["iou"]["d"] is None and result["pixel_accuracy"] == pytest.approx(4 / 7)
    # a predicted class with no ground truth scores 0, and counts, when it is evaluated
    assert iou_per_class(confusion_matrix(np.array([3]), np.array([0]), 4))[3] == 0.0


def test_confusion_accumulates_like_one_big_image():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, (2, 2, 30, 30))
    whole = confusion_matrix(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), 5)
    assert np.array_equal(confusion_matrix(a[0], a[1], 5) + confusion_matrix(b[0], b[1], 5), whole)


def test_extra_supervision_adds_one_term_per_scale():
    labels = torch.randint(0, 7, (2, 32, 32))
    labels[0, :4] = 255
    attention = build_model(task="parts", merge="attention").train()
    output = attention(torch.randn(2, 3, 32, 32))
    total, terms = parsing_loss(output, labels)
    assert set(terms) == {"fused", "scale0", "scale1", "scale2"}
    assert float(total.detach()) == pytest.approx(sum(terms.values()), rel=1e-5)
    total_off, terms_off = parsing_loss(output, labels, extra_supervision=False)
    assert set(terms_off) == {"fused"} and float(total_off.detach()) == pytest.approx(terms["fused"], rel=1e-5)
    _, paper = parsing_loss(output, labels, label_grid=True)
    assert set(paper) == set(terms)
    single = build_model(task="parts", merge="single").train()
    _, single_terms = parsing_loss(single(torch.randn(1, 3, 32, 32)), labels[:1])
    assert set(single_terms) == {"fused"}  # one scale: nothing extra to supervise
    ignored = torch.full((1, 32, 32), 255)
    zero, _ = parsing_loss(single(torch.randn(1, 3, 32, 32)), ignored)
    assert float(zero.detach()) == 0.0 and zero.requires_grad


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return make_synthetic(root / "train", 8, size=48), make_synthetic(root / "val", 3, size=48, seed=5)


def _run_args(run: Path, train: Path, val: Path, *extra: str) -> list[str]:
    """A tiny run's options, without model options."""
    return ["--run", str(run), "--data", f"synthetic:{train}:1.0", "--val", f"synthetic:{val}",
            "--crop-size", "48", "--batch-size", "4", "--optimizer", "adamw", "--lr", "3e-3",
            "--scale-range", "0.8", "1.2", "--log-every", "1", "--threads", "1", "--workers", "0", "--no-progress",
            *extra]


def _train_args(run: Path, train: Path, val: Path, *extra: str) -> list[str]:
    return _run_args(run, train, val, "--task", "parts", "--merge", "attention", *extra)


def test_a_few_training_steps_reduce_the_loss(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert train.main(_train_args(run, *tiny_data, "--steps", "14", "--val-every", "100",
                                  "--head-kwargs", '{"refine": 1}', "--detail-width", "8")) == 0
    losses = [r["loss"] for r in torch.load(run / "last.pt", weights_only=True)["history"]["train"]]
    assert len(losses) == 14
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    model = load_checkpoint(run / "best.safetensors")
    assert model.metadata.trained and "synthetic" in model.metadata.trained_on
    assert model.metadata.model.merge == "attention" and model.metadata.input_size == 48
    assert model.metadata.model.head_kwargs == {"refine": 1} and len(model.net.head.refine) == 1
    assert model.metadata.model.detail_width == 8 and model.refiner is not None
    assert (run / "curves.png").stat().st_size > 1000
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 14 and summary["finished"]


def test_resume_continues_exactly(tiny_data, tmp_path):
    steps = ["--steps", "6", "--val-every", "3", "--save-every", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.main(_train_args(straight, *tiny_data, *steps)) == 0
    assert train.main(_train_args(split, *tiny_data, *steps, "--stop-at", "3")) == 0
    halfway = torch.load(split / "last.pt", weights_only=True)
    assert halfway["step"] == 3
    # With a worker, the resume runs as its own process, as users run it: forking a DataLoader worker out of
    # this test process, which by now holds OpenVINO's and TFLite's thread pools, can crash it.
    resumed = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"),
                              *_train_args(split, *tiny_data, *steps, "--resume", "--workers", "1")],
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-6), key
    assert [r["loss"] for r in a["history"]["train"]] == pytest.approx([r["loss"] for r in b["history"]["train"]])
    assert [r["step"] for r in b["history"]["val"]] == [3, 6]
    assert b["optimizer"]["state"].keys() == a["optimizer"]["state"].keys()


def test_sigterm_to_the_whole_group_stops_at_a_step_and_saves(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = _train_args(run, *tiny_data, "--steps", "100000", "--val-every", "100000", "--save-every", "2",
                       "--workers", "1")
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[1][-2000:]
        os.killpg(process.pid, signal.SIGTERM)  # main process and its DataLoader worker alike
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err[-2000:]
    stopped_at = int(re.search(r"terminated \(SIGTERM\) at step (\d+)", out).group(1))
    assert torch.load(run / "last.pt", weights_only=True)["step"] == stopped_at > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == stopped_at and not summary["finished"]


def test_labels_of_two_tasks_survive_encoding():
    from training.multitask import decode_labels, encode_labels

    rng = np.random.default_rng(0)
    parts = rng.integers(0, 7, size=(5, 6)).astype(np.uint8)
    clothes = rng.integers(0, 6, size=(5, 6)).astype(np.uint8)
    clothes[0, 0], parts[1, 1] = 255, 255  # ignored pixels stay ignored, per task
    code = encode_labels([parts, clothes], ["parts", "clothes"])
    assert code.dtype == np.uint8 and code[(parts == 0) & (clothes == 0)].max(initial=0) == 0  # padding stays 0
    decoded = decode_labels(torch.from_numpy(code)[None], ["parts", "clothes"])
    assert np.array_equal(decoded["parts"][0].numpy(), parts)
    assert np.array_equal(decoded["clothes"][0].numpy(), clothes)
    with pytest.raises(ValueError, match="below"):
        encode_labels([np.full((2, 2), 9, np.uint8), clothes[:2, :2]], ["parts", "clothes"])


def test_joint_training_writes_one_ordinary_checkpoint_per_task(tiny_data, tmp_path):
    from training.multitask import build_joint_model

    run = tmp_path / "joint"
    args = _train_args(run, *tiny_data, "--steps", "14", "--val-every", "14")
    args[args.index("--task") + 1] = "parts+clothes"
    assert train.main(args) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    losses = [r["loss"] for r in state["history"]["train"]]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    assert set(state["history"]["val"][-1]["tasks"]) == {"parts", "clothes"}
    assert set(state["history"]["train"][-1]["terms"]) >= {"parts/fused", "clothes/fused"}

    # Each checkpoint is a normal model of its task, and answers exactly as the joint network did.
    joint = build_joint_model(tasks=["parts", "clothes"], merge="attention")
    joint.load_state_dict(state["model"])
    joint.eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        together = joint(x)
        for task, classes in (("parts", 7), ("clothes", 6)):
            alone = load_checkpoint(run / f"best-{task}.safetensors")
            assert alone.metadata.task == task and alone.config.num_classes == classes
            assert torch.allclose(alone(x)["logits"], together[task]["logits"], atol=1e-5)
    shared = joint.tasks["parts"].net.backbone
    assert shared is joint.tasks["clothes"].net.backbone
    assert sum(p.numel() for p in joint.parameters()) < 1.2 * sum(p.numel() for p in joint.tasks["parts"].parameters())


def test_joint_run_starts_each_task_from_its_own_checkpoint(tiny_data, tmp_path):
    from engines import save_checkpoint

    sources = {}
    for task in ("parts", "clothes"):
        torch.manual_seed(len(task))
        sources[task] = build_model(task=task, merge="attention").eval()
        save_checkpoint(tmp_path / f"{task}.safetensors", sources[task], half=True, input_size=48)
    run = tmp_path / "joint"
    args = _train_args(run, *tiny_data, "--steps", "0", "--half",
                       "--init", str(tmp_path / "parts.safetensors"), "--init", str(tmp_path / "clothes.safetensors"))
    args[args.index("--task") + 1] = "parts+clothes"
    assert train.main(args) == 0

    for task, source in sources.items():  # nothing trained: each task's model is its own checkpoint's
        started = load_checkpoint(run / f"best-{task}.safetensors")
        for name in ("net.classifier.weight", "merge.conv.weight"):
            assert torch.equal(started.state_dict()[name], source.state_dict()[name].half().float()), (task, name)
        assert any(f"{task}: initialised from" in note for note in [started.metadata.notes])
    # The shared network comes from the last checkpoint given.
    shared = load_checkpoint(run / "best-parts.safetensors").net.backbone.state_dict()
    for name, value in sources["clothes"].net.backbone.state_dict().items():
        assert torch.equal(shared[name], value.half().float() if value.is_floating_point() else value), name


def test_joint_training_refuses_sources_without_both_label_sets(tmp_path):
    data = make_synthetic(tmp_path / "synth", 3, size=48)
    next((data / "clothes").glob("*.png")).unlink()  # one image has parts labels only
    args = _train_args(tmp_path / "run", data, data, "--steps", "1")
    args[args.index("--task") + 1] = "parts+clothes"
    with pytest.raises(SystemExit, match="do not cover the same images"):
        train.main(args)
    with pytest.raises(SystemExit):
        train.parse_args(["--run", "r", "--data", "x:y", "--task", "parts+hats"])


def test_class_weights_lift_rare_classes_and_weight_the_loss():
    from training.losses import balanced_class_weights

    weights = balanced_class_weights(np.array([900, 80, 20, 0]), power=0.5, max_weight=10)
    # median frequency 0.08: the common class goes down, the rare one up, an unseen one to the cap
    assert weights.tolist() == pytest.approx([(0.08 / 0.9) ** 0.5, 1.0, (0.08 / 0.02) ** 0.5, 10.0])
    assert balanced_class_weights(np.array([5, 1]), power=0.0).tolist() == [1.0, 1.0]

    logits = torch.zeros(1, 2, 1, 2, requires_grad=True)
    logits.data[0, :, 0, 0] = torch.tensor([2.0, 0.0])  # pixel 0 (class 0) right, pixel 1 (class 1) wrong
    labels = torch.tensor([[[0, 1]]])
    plain, _ = parsing_loss({"logits": logits}, labels)
    rare_first, _ = parsing_loss({"logits": logits}, labels, class_weights=torch.tensor([1.0, 3.0]))
    per_pixel = torch.nn.functional.cross_entropy(logits.detach(), labels, reduction="none")[0, 0]
    assert float(plain.detach()) == pytest.approx(float(per_pixel.mean()))
    assert float(rare_first.detach()) == pytest.approx(float((per_pixel[0] + 3 * per_pixel[1]) / 4))


def test_class_balanced_training_records_its_weights(tiny_data, tmp_path):
    run = tmp_path / "balanced"
    assert train.main(_train_args(run, *tiny_data, "--steps", "2", "--val-every", "2", "--class-balance", "0.5")) == 0
    notes = load_checkpoint(run / "best.safetensors").metadata.notes
    assert "class weights [" in notes
    dataset_counts = open_dataset("synthetic", tiny_data[0], task="parts").pixel_counts()
    assert dataset_counts.shape == (7,) and dataset_counts.sum() == 8 * 48 * 48


# A model unlike the defaults in every option that shapes its tensors or its forward pass.
UNUSUAL_MODEL = ("--merge", "max", "--head-kwargs", '{"refine": 1}', "--detail-width", "8", "--scales", "1", "0.5")


def test_continuing_needs_no_model_options(tiny_data, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert train.main(_run_args(first, *tiny_data, *UNUSUAL_MODEL, "--steps", "4", "--stop-at", "2",
                                "--val-every", "2")) == 0
    trained = load_checkpoint(first / "best.safetensors")
    config = trained.metadata.model
    assert (config.merge, config.scales, config.detail_width) == ("max", (1.0, 0.5), 8)

    # --resume: the run folder alone; the model and settings come from last.pt.
    assert train.main(["--run", str(first), "--resume", "--threads", "1", "--workers", "0", "--no-progress"]) == 0
    state = torch.load(first / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["model_config"] == config.to_dict()

    # --init: a new run built as the checkpoint describes, starting from its weights (0 steps: nothing trained).
    assert train.main(_run_args(second, *tiny_data, "--init", str(first / "best.safetensors"), "--steps", "0")) == 0
    started = load_checkpoint(second / "best.safetensors")
    assert started.metadata.model == load_checkpoint(first / "best.safetensors").metadata.model
    source = load_checkpoint(first / "best.safetensors").state_dict()
    assert started.state_dict().keys() == source.keys()
    for name, value in started.state_dict().items():
        assert torch.equal(value, source[name]), name
    assert "parts: initialised from" in started.metadata.notes and "all " in started.metadata.notes
    assert torch.load(second / "last.pt", weights_only=True)["model_config"] == config.to_dict()


def test_a_partial_init_fails_listing_what_is_missing_unless_allowed(tiny_data, tmp_path):
    from engines import save_checkpoint

    plain = build_model(task="parts", merge="max", scales=(1.0, 0.5)).eval()  # no detail refiner
    save_checkpoint(tmp_path / "plain.safetensors", plain, input_size=48)
    args = _run_args(tmp_path / "run", *tiny_data, "--init", str(tmp_path / "plain.safetensors"), "--detail-width",
                     "8", "--steps", "0")
    failed = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0
    assert "missing" in failed.stderr and "refiner.project.0.weight" in failed.stderr, failed.stderr[-2000:]
    assert not (tmp_path / "run" / "last.pt").exists()

    assert train.main([*args, "--allow-partial"]) == 0
    started = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert started.metadata.model.detail_width == 8
    assert "partial" in started.metadata.notes and "refiner." in started.metadata.notes
    source = plain.state_dict()
    for name, value in started.state_dict().items():
        if not name.startswith("refiner."):
            assert torch.equal(value, source[name]), name


def _ddp_rank(rank: int, world: int, port: int, train: Path, val: Path, run: Path) -> None:
    """One process of a two-process CPU (gloo) run, as torchrun would start it."""
    from engines import ModelConfig
    from training.trainer import RuntimeOptions, TrainConfig, Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    config = TrainConfig(data=(f"synthetic:{train}:1.0",), val=f"synthetic:{val}", crop_size=48, batch_size=2,
                         optimizer="adamw", lr=3e-3, scale_range=(0.8, 1.2), steps=3, val_every=3, log_every=1)
    runtime = RuntimeOptions(threads=1, workers=0, progress=False, device="cpu")
    # Each rank starts from its own random weights (the seed includes the rank): DDP must broadcast rank 0's.
    trainer = Trainer(ModelConfig(task="parts", merge="max", scales=(1.0, 0.5)), config, run, runtime=runtime)
    summary = trainer.fit()
    torch.save({"parameters": {k: v.detach() for k, v in trainer.model.named_parameters()},
                "step": summary.step}, run.parent / f"rank{rank}.pt")


def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(tiny_data, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:  # a free port for the process group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = tmp_path / "run"
    mp.spawn(_ddp_rank, args=(2, port, *tiny_data, run), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    for name, value in ranks[0]["parameters"].items():
        assert torch.equal(value, ranks[1]["parameters"][name]), name
    # Rank 0 alone wrote the run, with the weights both ranks hold.
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 3
    for name, value in ranks[0]["parameters"].items():
        assert torch.equal(state["model"][name], value), name
    assert (run / "best.safetensors").is_file() and json.loads((run / "summary.json").read_text())["step"] == 3
