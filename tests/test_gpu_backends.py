"""GPU runtimes: backend selection, TensorRT cache keys, clear errors, and (on a GPU) agreement.

The CPU-side tests run everywhere. Tests that need an NVIDIA GPU or torch-tensorrt skip
with the reason shown (pytest -ra) and run on a GPU server.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import engines.backends as backends
from engines import BackendUnavailable, build_model, create_engine, save_checkpoint
from engines.backends.engine_cache import (
    PROGRAM_FILE,
    EngineKey,
    StaleEngine,
    built_batches,
    check_key,
    make_key,
    model_sha256,
    read_key,
    write_key,
)
from engines.backends.tensorrt import missing_requirements, plan_chunks
from tests.conftest import make_scene

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
HAS_TORCH_TENSORRT = importlib.util.find_spec("torch_tensorrt") is not None
VERSIONS = {"torch": "2.13.0", "torch_tensorrt": "2.13.0", "tensorrt": "11.0.0.114"}
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU and a CUDA build of torch")
needs_tensorrt = pytest.mark.skipif(not (HAS_CUDA and HAS_TORCH_TENSORRT),
                                    reason="needs an NVIDIA GPU and torch-tensorrt (requirements-gpu.txt)")


def tiny_model(merge: str = "attention", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(task="parts", backbone="mobilenetv3_large", merge=merge).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def key_for(model, **overrides) -> EngineKey:
    settings = {"input_size": 321, "batch": 1, "precision": "fp16", "gpu": "NVIDIA H100 80GB HBM3",
                "versions": VERSIONS}
    settings.update(overrides)
    return make_key(model, **settings)


# --- backend selection and clear errors ----------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU machine auto picks a GPU backend")
def test_auto_picks_a_cpu_backend_here_and_logs_why_once(caplog, monkeypatch):
    monkeypatch.setattr(backends, "_auto_logged", False)
    model = tiny_model("single")
    with caplog.at_level(logging.INFO, logger="partcam.engine"):
        engine = create_engine(model, backend="auto", input_size=33)
        backends._log_auto_choice("cpu", ["a later engine"])  # servers build engines again: no second line
    choices = [r.getMessage() for r in caplog.records if "auto-selected" in r.getMessage()]
    expected = "openvino" if importlib.util.find_spec("openvino") else "cpu"
    assert engine.name == expected and engine.timing_label == "CPU time"
    assert choices == [f"engine auto-selected: {expected} (no CUDA GPU visible"
                       + ("" if expected == "openvino" else "; openvino not installed") + ")"]


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_cuda_backend_says_there_is_no_gpu(model):
    with pytest.raises(BackendUnavailable, match="cuda backend needs an NVIDIA GPU") as info:
        create_engine(model, backend="cuda", input_size=33)
    assert "\n" not in str(info.value) and torch.__version__ in str(info.value)


@pytest.mark.skipif(HAS_CUDA and HAS_TORCH_TENSORRT, reason="this machine has a GPU and torch-tensorrt")
def test_tensorrt_backend_names_everything_missing(model):
    with pytest.raises(BackendUnavailable) as info:
        create_engine(model, backend="tensorrt", input_size=33)
    message = str(info.value)
    assert message.startswith("the tensorrt backend needs") and "\n" not in message
    assert ("NVIDIA GPU" in message) == (not HAS_CUDA)
    assert ("torch-tensorrt" in message) == (not HAS_TORCH_TENSORRT)
    assert (missing_requirements() and "requirements-gpu.txt" in message) or HAS_TORCH_TENSORRT


@pytest.mark.skipif(HAS_CUDA and HAS_TORCH_TENSORRT, reason="this machine can build engines")
def test_build_engine_fails_with_one_clear_line_here(tmp_path, model):
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(checkpoint, model, input_size=33)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_engine.py"), "--checkpoint", str(checkpoint),
         "--input-size", "33", "--precision", "fp16", "--out", str(tmp_path / "engines")],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("build_engine: cannot build a TensorRT engine here: needs")
    assert "Traceback" not in result.stderr and not (tmp_path / "engines").exists()


# --- cache keys ----------------------------------------------------------------------------------


def test_cache_key_is_stable_for_the_same_weights(model):
    again = tiny_model()  # rebuilt from the same seed: equal weights, different objects
    assert key_for(model) == key_for(again)
    assert key_for(model).digest() == key_for(again).digest()
    assert EngineKey.from_json(key_for(model).to_json()) == key_for(model)


@pytest.mark.parametrize("field, change", [
    ("input_size", {"input_size": 513}),
    ("batch", {"batch": 4}),
    ("precision", {"precision": "fp32"}),
    ("gpu", {"gpu": "NVIDIA L4"}),
    ("torch", {"versions": {**VERSIONS, "torch": "2.13.1"}}),
    ("torch_tensorrt", {"versions": {**VERSIONS, "torch_tensorrt": "2.13.1"}}),
    ("tensorrt", {"versions": {**VERSIONS, "tensorrt": "11.0.1.2"}}),
])
def test_cache_key_changes_with_each_field(model, field, change):
    base, changed = key_for(model), key_for(model, **change)
    assert base != changed and base.digest() != changed.digest()
    assert [line.split(":")[0] for line in changed.differences(base)] == [field]


def test_cache_key_changes_with_any_weight_and_with_the_architecture(model):
    edited = tiny_model()
    with torch.no_grad():
        next(edited.parameters()).view(-1)[0] += 1e-3
    assert model_sha256(edited) != model_sha256(model)
    assert key_for(tiny_model("max")).merge == "max"
    assert model_sha256(tiny_model("max")) != model_sha256(model)


def test_matching_key_is_accepted_and_a_stale_one_refused_with_the_rebuild_command(tmp_path, model):
    built = key_for(model)
    folder = tmp_path / built.folder_name
    folder.mkdir()
    (folder / PROGRAM_FILE).write_bytes(b"program")
    write_key(folder, built)
    check_key(built, read_key(folder), folder)  # same machine, same versions: accepted

    upgraded = key_for(model, versions={**VERSIONS, "tensorrt": "11.1.0.106"}, gpu="NVIDIA L4")
    with pytest.raises(StaleEngine) as info:
        check_key(upgraded, read_key(folder), folder)
    message = str(info.value)
    assert isinstance(info.value, BackendUnavailable) and "\n" not in message
    assert "stale" in message and "tensorrt: built for '11.0.0.114', here '11.1.0.106'" in message
    assert "gpu: built for 'NVIDIA H100 80GB HBM3', here 'NVIDIA L4'" in message
    assert "python scripts/build_engine.py --checkpoint" in message and "--input-size 321 --batch 1" in message


def test_missing_or_corrupt_key_file_is_refused(tmp_path):
    with pytest.raises(StaleEngine, match="key.json is missing"):
        read_key(tmp_path)
    (tmp_path / "key.json").write_text("{not json")
    with pytest.raises(StaleEngine, match="unreadable"):
        read_key(tmp_path)


def test_built_batches_are_found_by_model_size_and_precision(tmp_path, model):
    for batch, precision in ((1, "fp16"), (4, "fp16"), (2, "fp32")):
        key = key_for(model, batch=batch, precision=precision)
        (tmp_path / key.folder_name).mkdir()
        (tmp_path / key.folder_name / PROGRAM_FILE).write_bytes(b"program")
    (tmp_path / key_for(model, batch=8).folder_name).mkdir()  # a build that never finished saving
    assert built_batches(tmp_path, key_for(model)) == [1, 4]
    assert built_batches(tmp_path, key_for(model, precision="fp32")) == [2]
    assert built_batches(tmp_path, key_for(model, input_size=513)) == []
    assert built_batches(tmp_path / "absent", key_for(model)) == []


def test_frames_are_split_over_the_built_batch_sizes():
    assert plan_chunks(1, [1, 4]) == [(1, 1)]
    assert plan_chunks(3, [1, 4]) == [(3, 4)]
    assert plan_chunks(6, [4, 1]) == [(4, 4), (2, 4)]
    assert plan_chunks(2, [1]) == [(1, 1), (1, 1)]
    assert plan_chunks(0, [1]) == []


def test_key_rejects_unknown_precision(model):
    with pytest.raises(ValueError, match="precision"):
        key_for(model, precision="int8")


# --- on a GPU ------------------------------------------------------------------------------------


def _frames() -> list[np.ndarray]:
    return [make_scene(160, 120, seed=1), make_scene(97, 131, seed=2)]


def _label_agreement(first, second) -> float:
    matches = sum(int((a.labels == b.labels).sum()) for a, b in zip(first, second))
    return matches / sum(a.labels.size for a in first)


@needs_gpu
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_cuda_labels_match_cpu_labels(model, precision):
    cpu = create_engine(model, backend="cpu", input_size=129).infer(_frames())
    cuda_engine = create_engine(model, backend="cuda", input_size=129, precision=precision)
    gpu = cuda_engine.infer(_frames())
    assert cuda_engine.timing_label == "GPU time" and all(p.cnn_ms > 0 for p in gpu)
    assert _label_agreement(cpu, gpu) >= 0.99
    assert next(model.parameters()).device.type == "cpu", "the caller's model must stay untouched"


@needs_gpu
def test_cuda_graph_replay_gives_the_eager_output(model):
    from engines.backends.cuda import CudaEngine

    batch = torch.randn(2, 3, 129, 129, device="cuda")
    eager = CudaEngine(model, 129, precision="fp32", cuda_graphs=False)
    graphs = CudaEngine(model, 129, precision="fp32", cuda_graphs=True)
    with torch.inference_mode():
        expected, expected_att, _ = eager._forward(batch)
        first, first_att, _ = graphs._forward(batch)
        replayed, replayed_att, _ = graphs._forward(batch * 1.0)  # second call replays the captured graph
    assert graphs._graphs, "the shape was captured"
    for got, got_att in ((first, first_att), (replayed, replayed_att)):
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(got_att, expected_att, atol=1e-3, rtol=1e-3)


@needs_tensorrt
def test_tensorrt_build_loads_agrees_with_cpu_and_refuses_a_stale_key(tmp_path, model):
    from engines.backends.tensorrt import TensorRTEngine, compile_program, save_program

    size = 129
    key = make_key(model, input_size=size, batch=2, precision="fp16")
    folder = tmp_path / key.folder_name
    folder.mkdir()
    compiled, example = compile_program(model, size, 2, "fp16")
    save_program(compiled, folder, example)
    write_key(folder, key)

    engine = TensorRTEngine(model, size, cache_dir=tmp_path, precision="fp16")
    assert engine.describe()["batches"] == [2]
    cpu = create_engine(model, backend="cpu", input_size=size).infer(_frames()[:1])
    assert _label_agreement(cpu, engine.infer(_frames()[:1])) >= 0.99  # one frame padded to the batch of 2

    write_key(folder, dataclasses.replace(key, tensorrt="10.0.0"))
    with pytest.raises(StaleEngine, match="rebuild it with"):
        TensorRTEngine(model, size, cache_dir=tmp_path, precision="fp16")
