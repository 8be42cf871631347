"""Losses, metrics on hand-computed confusion matrices, and the trainer: the loss falls, resume is exact."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_datasets import make_synthetic

from engines import build_model, load_checkpoint
from training.losses import parsing_loss
from training.metrics import confusion_matrix, iou_per_class, mean_iou, summarise

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"partcam_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def _train_args(run: Path, train: Path, val: Path, *extra: str) -> list[str]:
    return ["--run", str(run), "--data", f"synthetic:{train}:1.0", "--val", f"synthetic:{val}",
            "--task", "parts", "--merge", "attention", "--crop-size", "48", "--batch-size", "4",
            "--optimizer", "adamw", "--lr", "3e-3", "--scale-range", "0.8", "1.2", "--log-every", "1",
            "--threads", "1", "--workers", "0", "--no-progress", *extra]


def test_a_few_training_steps_reduce_the_loss(tiny_data, tmp_path):
    train = _load_script("train")
    run = tmp_path / "run"
    assert train.main(_train_args(run, *tiny_data, "--steps", "14", "--val-every", "100")) == 0
    losses = [r["loss"] for r in torch.load(run / "last.pt", weights_only=True)["history"]["train"]]
    assert len(losses) == 14
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    model = load_checkpoint(run / "best.safetensors")
    assert model.metadata.trained and "synthetic" in model.metadata.trained_on
    assert model.metadata.merge == "attention" and model.metadata.input_size == 48
    assert (run / "curves.png").stat().st_size > 1000
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 14 and summary["finished"]


def test_resume_continues_exactly(tiny_data, tmp_path):
    train = _load_script("train")
    steps = ["--steps", "6", "--val-every", "3", "--save-every", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.main(_train_args(straight, *tiny_data, *steps)) == 0
    assert train.main(_train_args(split, *tiny_data, *steps, "--stop-at", "3")) == 0
    halfway = torch.load(split / "last.pt", weights_only=True)
    assert halfway["step"] == 3
    assert train.main(_train_args(split, *tiny_data, *steps, "--resume", "--workers", "1")) == 0
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-6), key
    assert [r["loss"] for r in a["history"]["train"]] == pytest.approx([r["loss"] for r in b["history"]["train"]])
    assert [r["step"] for r in b["history"]["val"]] == [3, 6]
    assert b["optimizer"]["state"].keys() == a["optimizer"]["state"].keys()
