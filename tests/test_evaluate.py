"""The evaluator: full-resolution labels, a table, JSON, and ``mIoU: <percent>`` as the last line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from test_datasets import _all_values, _write_pair, make_synthetic

from engines import build_model, create_engine, save_checkpoint
from engines.predict import predict_labels
from training.datasets import SyntheticDataset
from training.metrics import (
    PERSON_SIZES,
    error_distances,
    evaluate_model,
    person_size,
)

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
                    "--json", str(tmp_path / "r.json"), "--by-outline-distance")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"mIoU: \d+\.\d\d", lines[-1])
    assert any(line.startswith("| model | background | head | torso") for line in lines)
    result = json.loads((tmp_path / "r.json").read_text())
    assert f"mIoU: {100 * result['miou']:.2f}" == lines[-1]
    assert result["images"] == 3 and np.asarray(result["confusion"]).sum() == 3 * 40 * 40
    # the outline breakdown re-counts the confusion matrix's mistakes, split by distance
    confusion, errors = np.asarray(result["confusion"]), result["errors_by_outline_distance"]
    assert sum(errors["background_as_person"]) == confusion[0, 1:].sum()
    assert sum(errors["person_as_background"]) == confusion[1:, 0].sum()
    assert sum(errors["wrong_part"]) == confusion[1:, 1:].sum() - np.trace(confusion[1:, 1:])
    assert errors["person_pixels"] == confusion[1:].sum()
    assert any(line.startswith("| person as background |") for line in lines)


def test_mistakes_are_binned_by_distance_from_the_person_outline():
    labels = np.zeros((30, 30), np.uint8)
    labels[10:20, 10:20] = 1
    labels[15:20, 10:20] = 2
    labels[0, 0] = 255  # ignored: never counted
    prediction = np.where(labels == 255, 3, labels)
    prediction[9, 10:20] = 1  # a one-pixel halo above the person
    prediction[0:2, 25:30] = 1  # a false person 9-10 pixels away
    prediction[12, 12] = 0  # a hole 3 pixels inside
    prediction[14, 14] = 2  # the wrong part 5 pixels inside
    counts = error_distances(prediction, labels)  # bands: ≤2, 3–4, 5–8, 9–16, >16 px
    assert counts["background_as_person"].tolist() == [10, 0, 0, 10, 0]
    assert counts["person_as_background"].tolist() == [0, 1, 0, 0, 0]
    assert counts["wrong_part"].tolist() == [0, 0, 1, 0, 0]
    assert int(counts["person_pixels"]) == 100


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
    labels = predict_labels(model, frames, 48, torch.device("cpu"))
    assert [lab.shape for lab in labels] == [(37, 61), (50, 20)]
    dataset = SyntheticDataset(make_synthetic(tmp_path / "s", 2, size=32))
    model.train()
    result = evaluate_model(model, dataset, input_size=48, limit=1)
    assert result["images"] == 1 and np.asarray(result["confusion"]).sum() == 32 * 32
    assert model.training  # put back in the mode it was in


def test_evaluate_labels_are_exactly_the_engines(tmp_path):
    """The mIoU evaluate.py reports is that of the labels the server sends for the same frame."""
    checkpoint = _checkpoint(tmp_path / "c.safetensors", "clothes")
    root = make_synthetic(tmp_path / "s", 2, size=40)
    out = _evaluate("--checkpoint", str(checkpoint), "--dataset", "synthetic", "--root", str(root),
                    "--save-labels", str(tmp_path / "labels"))
    assert out.returncode == 0, out.stderr
    engine = create_engine(checkpoint, "cpu", threads=1)
    dataset = SyntheticDataset(root)
    for index in range(len(dataset)):
        rgb, _ = dataset.read(index)
        served = engine.infer([rgb])[0].labels
        scored = np.asarray(Image.open(tmp_path / "labels" / f"{index:06d}.png"))
        assert scored.shape == served.shape and np.array_equal(scored, served)


def test_person_size_bins_add_up_to_the_whole_set(tmp_path):
    labels = np.zeros((10, 10), np.uint8)
    assert person_size(labels) == "small"
    labels[:2] = 3  # 20% of the image
    assert person_size(labels) == "medium"
    labels[5:] = 255  # ignored pixels do not count: now 2 rows of 5 labelled ones
    assert person_size(labels) == "large"
    assert person_size(np.ones((4, 4), np.uint8)) == "large"
    assert [name for name, _, _ in PERSON_SIZES] == ["small", "medium", "large"]

    data = make_synthetic(tmp_path / "s", 4, size=36)
    empty = np.zeros((36, 36), np.uint8)  # one image with nobody in it: a "small" one
    Image.fromarray(empty).save(data / "parts" / "000003.png")
    torch.manual_seed(0)
    model = build_model(task="parts", merge="attention")
    result = evaluate_model(model, SyntheticDataset(data), input_size=40, by_person_size=True)
    bins = result["by_person_size"]
    assert sum(part["images"] for part in bins.values()) == 4 and bins["small"]["images"] >= 1
    total = sum(np.asarray(part["confusion"]) for part in bins.values())
    assert np.array_equal(total, np.asarray(result["confusion"]))
    assert "by_person_size" not in evaluate_model(model, SyntheticDataset(data), input_size=40)


def test_ablation_trains_scores_and_tabulates_each_run(tmp_path):
    train, test = make_synthetic(tmp_path / "train", 4, size=40), make_synthetic(tmp_path / "test", 2, size=40)
    out = tmp_path / "ablation"

    def ablation(*only: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "ablation.py"), "--train", str(train),
                               "--test", str(test), "--out", str(out), "--backbone", "selfie", "--steps", "2",
                               "--batch-size", "2", "--crop-size", "32", "--threads", "1", "--workers", "0",
                               "--only", *only, "--", "--input-size", "40"],
                              capture_output=True, text=True, timeout=300)

    first = ablation("single-noes")
    assert first.returncode == 0, first.stderr
    second = ablation("attention-es")  # a later subset keeps the earlier rows
    assert second.returncode == 0, second.stderr
    runs = json.loads((out / "ablation.json").read_text())["runs"]
    assert set(runs) == {"single-noes", "attention-es"}
    assert runs["attention-es"]["extra_supervision"] and runs["single-noes"]["steps"] == 2
    assert sum(part["images"] for part in runs["attention-es"]["by_person_size"].values()) == 2
    table = (out / "ablation.md").read_text()
    assert f"| attention | – | {100 * runs['attention-es']['miou']:.2f} |" in table
    assert f"| single scale | {100 * runs['single-noes']['miou']:.2f} | – |" in table
    assert "mIoU by how much of the image the people cover" in table and "| single-noes | " in table


def test_package_model_adds_a_gate_in_fp16_and_records_what_it_measured(tmp_path):
    from engines import add_person_gate, load_checkpoint, read_metadata

    data = make_synthetic(tmp_path / "test", 2, size=40)
    source = _checkpoint(tmp_path / "source.safetensors", "clothes")
    out = tmp_path / "packaged.safetensors"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "package_model.py"), "--threads", "1",
                          "--checkpoint", str(source), "--out", str(out), "--person-gate",
                          "--synthetic-test", str(data), "--trained-on", "two test renders"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    meta = read_metadata(out)
    assert meta.model.person_gate and meta.trained_on == "two test renders" and meta.input_size == 48
    assert "MediaPipe" in meta.notes
    for prefix in ("synthetic_test", "synthetic_test_without_gate"):
        assert 0 <= meta.metrics[f"{prefix}_miou"] <= 1
        assert set(meta.metrics[f"{prefix}_iou"]) <= set(meta.classes)
    packaged = load_checkpoint(out)
    assert all(v.dtype == torch.float32 for v in packaged.state_dict().values() if v.is_floating_point())

    # Same scores as gating the source by hand (fp16 storage aside): the script adds nothing else.
    expected = add_person_gate(load_checkpoint(source))
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(packaged(x)["log_probs"], expected(x)["log_probs"], atol=5e-2)
    with open(out, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} <= {"F16", "I64"}

    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "package_model.py"), "--checkpoint", str(out),
                            "--out", str(tmp_path / "twice.safetensors"), "--person-gate"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already has a person gate" in again.stderr
