"""GPU runtimes: backend selection, TensorRT cache keys, clear errors, and (on a GPU) agreement.

The CPU-side tests run everywhere. Tests that need an NVIDIA GPU or torch-tensorrt skip
with the reason shown (pytest -ra) and run on a GPU server.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
                "versions": VERSIONS, "code": "forward code"}
    settings.update(overrides)
    return make_key(model, **settings)


# --- backend selection and clear errors ----------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU machine auto picks a GPU backend")
def test_auto_picks_a_cpu_backend_here_and_logs_why_for_each_engine(caplog, tmp_path):
    parts, clothes = tiny_model("single"), build_model(task="clothes", backbone="mobilenetv3_large", merge="single")
    save_checkpoint(tmp_path / "clothes.safetensors", clothes.eval(), input_size=33)
    with caplog.at_level(logging.INFO, logger="partcam.engine"):
        engine = create_engine(parts, backend="auto", input_size=33)
        create_engine(tmp_path / "clothes.safetensors", backend="auto", input_size=33)
    choices = [r.getMessage() for r in caplog.records if "auto-selected" in r.getMessage()]
    expected = "openvino" if importlib.util.find_spec("openvino") else "cpu"
    assert engine.name == expected and engine.timing_label == "CPU time"
    why = " (no CUDA GPU visible" + ("" if expected == "openvino" else "; openvino not installed") + ")"
    # One line per engine: the demo builds one per task, and each must say what it runs on.
    assert choices == [f"engine auto-selected for parts (model in memory): {expected}{why}",
                       f"engine auto-selected for clothes ({tmp_path / 'clothes.safetensors'}): {expected}{why}"]


_FAKE_BROKEN_TENSORRT = """
raise Exception("libnvinfer.so.11: cannot open shared object file: No such file or directory")
"""


def _with_broken_torch_tensorrt(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` where ``import torch_tensorrt`` raises a plain Exception, as torch-tensorrt 2.13
    does when its TensorRT libraries do not load."""
    (tmp_path / "torch_tensorrt").mkdir()
    (tmp_path / "torch_tensorrt" / "__init__.py").write_text(_FAKE_BROKEN_TENSORRT)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))  # the fake comes first
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": path})


def test_a_torch_tensorrt_whose_libraries_do_not_load_is_unavailable_not_a_crash(tmp_path):
    result = _with_broken_torch_tensorrt(tmp_path, (
        "from engines.backends.tensorrt import import_torch_tensorrt\n"
        "from engines.backends.base import BackendUnavailable\n"
        "try:\n    import_torch_tensorrt()\nexcept BackendUnavailable as exc:\n    print('UNAVAILABLE', exc)\n"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("UNAVAILABLE torch-tensorrt is installed but cannot load its TensorRT libraries")
    assert "libnvinfer.so.11" in result.stdout


def test_auto_falls_back_to_cuda_when_torch_tensorrt_does_not_load(tmp_path):
    """On a GPU server with a broken TensorRT install, auto takes cuda and says why (the cuda
    engine itself is replaced by a recorder: there is no GPU here)."""
    result = _with_broken_torch_tensorrt(tmp_path, (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
        "torch.cuda.is_available = lambda: True\n"
        "import engines.backends as backends\n"
        "class Recorder:\n"
        "    name = 'cuda'\n"
        "    def __init__(self, model, input_size, precision):\n        print('CUDA ENGINE', input_size, precision)\n"
        "backends.CudaEngine = Recorder\n"
        "from engines import build_model\n"
        "model = build_model(task='parts', backbone='mobilenetv3_large', merge='single').eval()\n"
        "print('CHOSE', backends.create_engine(model, backend='auto', input_size=33).name)\n"))
    assert result.returncode == 0, result.stderr
    assert "CUDA ENGINE 33 fp16" in result.stdout and "CHOSE cuda" in result.stdout
    line = next(line for line in result.stderr.splitlines() if "auto-selected" in line)
    assert line.startswith("WARNING engine auto-selected for parts (model in memory): cuda (tensorrt: torch-tensorrt")
    assert "libnvinfer.so.11" in line


def test_compile_device_gets_an_index(monkeypatch):
    from engines.backends.tensorrt import cuda_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # no GPU here: say the current one is 1
    assert cuda_device() == torch.device("cuda", 1) and cuda_device("cuda") == torch.device("cuda", 1)
    assert cuda_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="CUDA devices"):
        cuda_device("cpu")


def test_cuda_graph_batches_pad_up_to_the_captured_sizes():
    from engines.backends.cuda import GRAPH_BATCHES, padded_batches

    assert GRAPH_BATCHES == (1, 2, 4, 8)
    assert [padded_batches(n, GRAPH_BATCHES) for n in (1, 3, 5, 8, 11)] == [
        [(1, 1)], [(3, 4)], [(5, 8)], [(8, 8)], [(8, 8), (3, 4)]]


def test_requirements_name_nvidias_index_for_the_tensorrt_wheels():
    lines = [line.strip() for line in (REPO / "requirements-gpu.txt").read_text().splitlines()]
    assert "--extra-index-url https://pypi.nvidia.com" in lines
    assert "tensorrt-cu13-libs==11.0.0.114" in lines and "torch-tensorrt==2.13.0" in lines
    assert "pypi.nvidia.com" in (REPO / "docs" / "nvidia.md").read_text()


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
    ("code", {"code": "edited forward"}),
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


def test_key_holds_the_forward_code_and_a_code_change_makes_the_build_stale(tmp_path, model):
    import shutil

    from engines.backends.engine_cache import network_code_digest

    source = tmp_path / "engines"
    shutil.copytree(REPO / "engines", source, ignore=shutil.ignore_patterns("__pycache__"))
    before = network_code_digest(source)
    assert before == network_code_digest(source) == network_code_digest(REPO / "engines")
    merge = source / "merge.py"
    merge.write_text(merge.read_text() + "\n# a changed forward pass\n")
    assert network_code_digest(source) != before
    assert make_key(model, input_size=33, batch=1, precision="fp16", gpu="x", versions=VERSIONS).code == before

    built, edited = key_for(model, code=before), key_for(model, code=network_code_digest(source))
    with pytest.raises(StaleEngine, match="code: the forward code changed since the build"):
        check_key(edited, built, tmp_path, "models/parts.safetensors")


def test_missing_builds_name_the_real_checkpoint_in_the_rebuild_command(tmp_path, model):
    from engines.backends.tensorrt import find_builds

    expected = key_for(model, input_size=513)
    with pytest.raises(BackendUnavailable) as info:
        find_builds(expected, cache_dir=tmp_path, checkpoint="models/clothes.safetensors")
    assert ("python scripts/build_engine.py --checkpoint models/clothes.safetensors --input-size 513"
            in str(info.value))
    folder = tmp_path / expected.folder_name
    folder.mkdir()
    (folder / PROGRAM_FILE).write_bytes(b"program")
    write_key(folder, dataclasses.replace(expected, tensorrt="10.0.0"))
    with pytest.raises(StaleEngine, match="rebuild it with: python scripts/build_engine.py --checkpoint "
                                          "models/clothes.safetensors"):
        find_builds(expected, cache_dir=tmp_path, checkpoint="models/clothes.safetensors")
    write_key(folder, expected)
    assert find_builds(expected, cache_dir=tmp_path) == [(folder, expected)]


def test_key_rejects_unknown_precision(model):
    with pytest.raises(ValueError, match="precision"):
        key_for(model, precision="int8")


# --- on a GPU ------------------------------------------------------------------------------------


def _normalised_frames(model, size: int) -> torch.Tensor:
    """The same normalised input for every runtime: letterboxed on the CPU once, then copied.

    Comparing engines through ``infer`` would compare two preprocessings too (the CPU path
    resizes uint8 pixels, the GPU path floats)."""
    from engines.backends.base import letterbox

    pixels, _ = letterbox([make_scene(160, 120, seed=1), make_scene(97, 131, seed=2)], size, torch.device("cpu"))
    return model.preprocessing.normalise(pixels)


def _confident_agreement(expected: torch.Tensor, got: torch.Tensor, margin: float) -> float:
    """Argmax agreement over the pixels whose top two fp32 logits differ by more than ``margin``.

    An untrained model has many near-ties, where any rounding flips the label; those say
    nothing about the runtime."""
    top2 = expected.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > margin
    agree = (expected.argmax(1) == got.argmax(1)) & confident
    return float(agree.sum()) / max(1, int(confident.sum()))


@pytest.fixture
def no_tf32():
    """A true fp32 reference: no TF32 in cuDNN convolutions or matmuls."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@needs_gpu
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_cuda_logits_match_cpu_logits_on_the_same_input(model, precision, no_tf32):
    from engines.backends.cuda import CudaEngine

    size = 129
    batch = _normalised_frames(model, size)
    cpu = create_engine(model, backend="cpu", input_size=size)
    cuda_engine = CudaEngine(model, size, precision=precision)
    with torch.inference_mode():
        expected, _, _ = cpu._forward(batch.clone())
        got, _, cnn_ms = cuda_engine._forward(batch.to(cuda_engine.device))
    got = got.float().cpu()
    assert cuda_engine.timing_label == "GPU time" and cnn_ms > 0
    if precision == "fp32":
        torch.testing.assert_close(got, expected, atol=1e-3 * float(expected.abs().max()), rtol=1e-3)
    assert _confident_agreement(expected, got, margin=0.05 * float(expected.std())) >= 0.999
    assert next(model.parameters()).device.type == "cpu", "the caller's model must stay untouched"


@needs_gpu
def test_cuda_graphs_are_captured_at_start_up_in_one_pool_and_replay_the_eager_output(model, no_tf32):
    from engines.backends.cuda import CudaEngine

    batch = torch.randn(3, 3, 129, 129, device="cuda")
    eager = CudaEngine(model, 129, precision="fp32", cuda_graphs=False)
    graphs = CudaEngine(model, 129, precision="fp32", cuda_graphs=True)
    assert sorted(graphs._graphs) == [1, 2, 4, 8], "captured before the first frame"
    with torch.inference_mode():
        expected, expected_att, _ = eager._forward(batch)
        first, first_att, _ = graphs._forward(batch)  # 3 frames run on the batch-4 graph, padded
        single, single_att, _ = graphs._forward(batch[:1] * 1.0)
        again, again_att, _ = graphs._forward(batch * 1.0)
    for got, got_att, want, want_att in ((first, first_att, expected, expected_att),
                                         (single, single_att, expected[:1], expected_att[:1]),
                                         (again, again_att, expected, expected_att)):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(got_att, want_att, atol=1e-3, rtol=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two NVIDIA GPUs")
def test_cuda_engine_on_the_second_gpu_runs_there_from_a_thread_on_the_first(model):
    import threading

    from engines.backends.cuda import CudaEngine

    engine = CudaEngine(model, 129, precision="fp16", device="cuda:1")
    results = {}

    def serve():  # the worker thread's current device is 0
        with torch.inference_mode():
            results["out"] = engine._forward(torch.randn(2, 3, 129, 129))

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    logits, _, cnn_ms = results["out"]
    assert logits.device == torch.device("cuda", 1) and cnn_ms > 0


@needs_tensorrt
def test_tensorrt_build_loads_agrees_with_cpu_and_refuses_a_stale_key(tmp_path, model, no_tf32):
    from engines.backends.tensorrt import TensorRTEngine, compile_program, save_program

    size = 129
    key = make_key(model, input_size=size, batch=2, precision="fp16")
    folder = tmp_path / key.folder_name
    folder.mkdir()
    compiled, example = compile_program(model, size, 2, "fp16")  # the default device gets an index
    save_program(compiled, folder, example)
    write_key(folder, key)

    engine = TensorRTEngine(model, size, cache_dir=tmp_path, precision="fp16")
    assert engine.describe()["batches"] == [2]
    batch = _normalised_frames(model, size)[:1]
    with torch.inference_mode():
        expected, _, _ = create_engine(model, backend="cpu", input_size=size)._forward(batch.clone())
        got, _, _ = engine._forward(batch.to(engine.device))  # one frame padded to the batch of 2
    assert _confident_agreement(expected, got.float().cpu(), margin=0.05 * float(expected.std())) >= 0.995

    write_key(folder, dataclasses.replace(key, tensorrt="10.0.0"))
    with pytest.raises(StaleEngine, match="rebuild it with"):
        TensorRTEngine(model, size, cache_dir=tmp_path, precision="fp16")
