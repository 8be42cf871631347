"""The evaluator: full-resolution labels, a table, JSON, and ``mIoU: <percent>`` as the last line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from test_datasets import _all_values, _write_pair, make_synthetic

from engines import build_model, save_checkpoint
from training.datasets import SyntheticPeople
from training.metrics import evaluate_model, predict_full_resolution

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(path: Path, task: str) -> Path:
    torch.manual_seed(0)
    save_checkpoint(path, build_model(task=task, merge="attention"), input_size=48)
    return path


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--threads", "1",
                           "--no-progress", *args], capture_output=True, text=True, timeout=120)


def test_evaluate_prints_table_json_and_miou_last(tmp_path):
    data = make_synthetic(tmp_path / "test", 3, size=40)
    ckpt = _checkpoint(tmp_path / "parts.safetensors", "parts")
    out = _evaluate("--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(data),
                    "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"mIoU: \d+\.\d\d", lines[-1])
    assert any(line.startswith("| model | background | head | torso") for line in lines)
    result = json.loads((tmp_path / "r.json").read_text())
    assert f"mIoU: {100 * result['miou']:.2f}" == lines[-1]
    assert result["images"] == 3 and np.asarray(result["confusion"]).sum() == 3 * 40 * 40


def test_evaluate_real_dataset_skips_classes_it_never_labels(tmp_path):
    labels = _all_values(20, shape=(30, 22))
    _write_pair(tmp_path / "TrainVal_images/val_images/1_1.jpg",
                tmp_path / "TrainVal_parsing_annotations/val_segmentations/1_1.png", labels)
    ckpt = _checkpoint(tmp_path / "clothes.safetensors", "clothes")
    out = _evaluate("--checkpoint", str(ckpt), "--dataset", "lip", "--root", str(tmp_path),
                    "--json", str(tmp_path / "lip.json"))
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "lip.json").read_text())
    assert result["iou"]["bag"] is None and result["split"] == "val"
    assert out.stdout.strip().splitlines()[-1].startswith("mIoU: ")
    wrong = _evaluate("--checkpoint", str(_checkpoint(tmp_path / "p.safetensors", "parts")), "--dataset", "lip",
                      "--root", str(tmp_path))
    assert wrong.returncode == 2 and "clothes" in wrong.stderr


def test_predictions_come_back_at_each_label_size(tmp_path):
    model = build_model(task="parts", merge="max").eval()
    frames = [np.zeros((37, 61, 3), np.uint8), np.zeros((50, 20, 3), np.uint8)]
    labels = predict_full_resolution(model, frames, 48, torch.device("cpu"))
    assert [lab.shape for lab in labels] == [(37, 61), (50, 20)]
    dataset = SyntheticPeople(make_synthetic(tmp_path / "s", 2, size=32))
    model.train()
    result = evaluate_model(model, dataset, input_size=48, limit=1)
    assert result["images"] == 1 and np.asarray(result["confusion"]).sum() == 32 * 32
    assert model.training  # put back in the mode it was in
