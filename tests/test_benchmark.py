"""scripts/benchmark.py on tiny sizes: the JSON it writes, and GFLOPs that add up."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from engines import build_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("partcam_benchmark", REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchmark = _load_benchmark()


def test_tiny_cpu_run_writes_a_complete_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = benchmark.main(["--backbones", "mobilenetv3_large", "--merges", "attention", "max", "single",
                           "--sizes", "49", "--repeats", "2", "--warmup", "1", "--cpu-backends", "cpu",
                           "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["environment"]["device"] == "cpu" and report["environment"]["threads"] == 2
    rows = {row["merge"]: row for row in report["results"]}
    assert set(rows) == {"attention", "max", "single"}
    for row in rows.values():
        assert row["backbone"] == "mobilenetv3_large" and row["input_size"] == 49 and row["batch"] == 1
        assert row["runs"] == 2 and row["timing"] == "CPU time" and row["backend"] == "cpu"
        assert 0 < row["median_ms"] <= row["p90_ms"] and row["fps"] == pytest.approx(1000 / row["median_ms"])
        assert row["gflops"] > 0 and row["params_m"] > 0
    # Attention adds its head on top of the same three scales; single runs one scale.
    assert rows["attention"]["gflops"] > rows["max"]["gflops"] > rows["single"]["gflops"]
    assert rows["attention"]["params_m"] > rows["max"]["params_m"] == rows["single"]["params_m"]
    assert rows["single"]["scales"] == [1.0] and len(rows["attention"]["scales"]) == 3
    (ratio,) = report["attention_vs_max"]
    assert ratio["ratio"] == pytest.approx(rows["attention"]["median_ms"] / rows["max"]["median_ms"])
    printed = capsys.readouterr().out
    assert "| model | merge |" in printed and "attention/max, mobilenetv3_large at 49 px" in printed


def test_trained_checkpoints_are_timed_at_their_own_input_size(tmp_path, capsys):
    plain, detailed = tmp_path / "plain.safetensors", tmp_path / "detailed.safetensors"
    save_checkpoint(plain, build_model(task="parts"), input_size=41)
    save_checkpoint(detailed, build_model(task="parts", detail_width=8), input_size=41)
    out = tmp_path / "bench.json"
    code = benchmark.main(["--checkpoints", str(plain), str(detailed), "--repeats", "2", "--warmup", "1",
                           "--cpu-backends", "cpu", "--json", str(out)])
    assert code == 0
    rows = {Path(row["checkpoint"]).name: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {"plain.safetensors", "detailed.safetensors"}
    assert all(row["input_size"] == 41 and row["runs"] == 2 and row["median_ms"] > 0 for row in rows.values())
    assert rows["detailed.safetensors"]["gflops"] > rows["plain.safetensors"]["gflops"]  # the refiner's convs
    assert f"| {detailed} | attention |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark.main(["--device", "cuda", "--checkpoints", str(plain)])


def test_gflops_count_two_per_multiply_add_and_match_the_papers_network():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1))
    assert benchmark.count_gflops(model, 10) * 1e9 == pytest.approx(2 * 8 * 3 * 9 * 10 * 10)
    single = build_model(task="parts", backbone="vgg16_largefov", merge="single")
    assert 100 < benchmark.count_gflops(single, 321) < 104  # DeepLab-LargeFOV at 321: about 102 GFLOPs
    assert next(single.parameters()).device.type == "cpu", "counting must not move the model"


def test_cuda_part_needs_a_gpu_and_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="needs an NVIDIA GPU"):
        benchmark.main(["--device", "cuda", "--sizes", "33", "--repeats", "1"])


def test_percentiles_are_measured_values():
    values = [float(v) for v in range(1, 101)]
    assert benchmark.percentile(values, 0.90) == 90.0 and benchmark.percentile(values, 0.99) == 99.0
    assert benchmark.percentile([5.0], 0.99) == 5.0
