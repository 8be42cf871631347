"""Convert MediaPipe's ``selfie_segmentation.tflite`` into weights for :class:`SelfieSegmentation`.

The ``.tflite`` comes from npm ``@mediapipe/selfie_segmentation`` (pinned with its integrity hash in
package-lock.json, installed by ``npm ci``). Its layers are named ``conv2d_N`` and
``depthwise_conv2d_N`` in the order they were created, which is the order our modules are declared
in, so the mapping is a walk over both in step, checked shape by shape. The weights are stored
as float16 in the file and become float32 here (exactly).

:func:`load_selfie_weights` is the one way weights reach a model: it converts on first use and
caches the result in the cache folder (:mod:`engines.settings`). The backbone module never imports
this one, so the dependency runs one way: importer -> backbone.

``python -m engines.importers.selfie_tflite`` converts, caches, and compares our forward pass with
the TFLite interpreter on the same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import settings
from ..backbones.selfie import SelfieSegmentation

INPUT_SIZE = 256  # the size the original graph was exported for
# Tensors of the original that SelfieSegmentation.named_features reproduces (NHWC there, NCHW here).
COMPARED_TENSORS = (
    "h_swish", "conv2d_4", "add__xeno_compat__1", "add_4__xeno_compat__1", "multiply_6",
    "add_7__xeno_compat__1", "add_10__xeno_compat__1", "add_13__xeno_compat__1", "segment",
)


def tflite_path() -> Path:
    """The ``.tflite`` that ``npm ci`` installs, in node_modules (``$PARTCAM_NODE_MODULES``)."""
    return settings.node_modules() / "@mediapipe" / "selfie_segmentation" / "selfie_segmentation.tflite"


def _require(path: Path | None) -> Path:
    path = Path(path) if path is not None else tflite_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run `npm ci` in {settings.repo_root()} to install @mediapipe/selfie_segmentation")
    return path


def _interpreter(path: Path | None, preserve_all_tensors: bool = False, num_threads: int | None = None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ImportError("converting the selfie model needs ai-edge-litert (requirements-dev.txt)") from error
    # The default XNNPACK delegate is also what implements MediaPipe's custom transposed convolution.
    with warnings.catch_warnings():  # preserving all tensors is what the comparison wants, not a mistake
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(str(_require(path)), experimental_preserve_all_tensors=preserve_all_tensors,
                                  num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def read_tflite_weights(path: Path | None = None) -> dict[str, np.ndarray]:
    """Every layer's kernel and bias as float32, keyed by the original tensor name."""
    interpreter = _interpreter(path)
    weights = {}
    for detail in interpreter.get_tensor_details():
        name = detail["name"]
        if name.endswith(("/Kernel", "/Bias")):
            weights[name] = interpreter.get_tensor(detail["index"]).astype(np.float32)
    return weights


def layer_names(model: SelfieSegmentation) -> dict[str, str]:
    """Map each of our convolution modules to the original layer that holds its weights."""
    names: dict[str, str] = {}
    convs = depthwise = 0
    for module_name, module in model.named_modules():
        if isinstance(module, nn.ConvTranspose2d):
            names[module_name] = "segment"
        elif isinstance(module, nn.Conv2d):
            if module.groups > 1:
                names[module_name] = "depthwise_conv2d" + (f"_{depthwise}" if depthwise else "")
                depthwise += 1
            else:
                names[module_name] = "conv2d" + (f"_{convs}" if convs else "")
                convs += 1
    return names


def _to_torch_kernel(kernel: np.ndarray, module: nn.Module) -> np.ndarray:
    # TFLite: conv (out, kh, kw, in); depthwise (1, kh, kw, channels); transposed conv (out, kh, kw, in).
    if isinstance(module, nn.ConvTranspose2d):
        return kernel.transpose(3, 0, 1, 2)  # torch: (in, out, kh, kw)
    if module.groups > 1:
        return kernel.transpose(3, 0, 1, 2)  # torch: (channels, 1, kh, kw)
    return kernel.transpose(0, 3, 1, 2)  # torch: (out, in, kh, kw)


def convert(path: Path | None = None) -> dict[str, torch.Tensor]:
    """Read the ``.tflite`` and return a state_dict for :class:`SelfieSegmentation`."""
    weights = read_tflite_weights(path)
    model = SelfieSegmentation()
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for module_name, layer in layer_names(model).items():
        module = modules[module_name]
        kernel = _to_torch_kernel(weights[f"{layer}/Kernel"], module)
        bias = weights[f"{layer}/Bias"]
        for key, value in (("weight", kernel), ("bias", bias)):
            expected = tuple(getattr(module, key).shape)
            if value.shape != expected:
                raise ValueError(f"{module_name}.{key} <- {layer}: shape {value.shape} != {expected}")
            state[f"{module_name}.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
        used.update({f"{layer}/Kernel", f"{layer}/Bias"})
    if unused := sorted(set(weights) - used):
        raise ValueError(f"layers of the original left unmapped: {unused}")
    model.load_state_dict(state)  # strict: every parameter of ours came from the file
    return state


def cached_weights_path(path: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Where the converted weights of this exact ``.tflite`` are cached (named by its sha256)."""
    digest = hashlib.sha256(_require(path).read_bytes()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else settings.cache_dir()
    return folder / f"selfie_segmentation-{digest}.safetensors"


def load_or_convert(path: Path | None = None, cache_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """The converted state_dict, from the cache when present, converting (and caching) otherwise."""
    from safetensors.torch import load_file, save_file

    path = _require(path)
    cached = cached_weights_path(path, cache_dir)
    if cached.is_file():
        return load_file(str(cached))
    state = convert(path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    save_file(state, str(partial), metadata={"source": "npm @mediapipe/selfie_segmentation", "file": path.name})
    partial.replace(cached)  # atomic, so a concurrent reader never sees half a file
    return state


def load_selfie_weights(module: nn.Module) -> SelfieSegmentation:
    """Load the converted MediaPipe weights into ``module`` (a SelfieSegmentation or a model holding one).

    The first call converts ``node_modules/@mediapipe/selfie_segmentation/selfie_segmentation.tflite``
    (installed by ``npm ci``) and caches it in the cache folder. Returns the backbone it loaded.
    """
    backbone = next((m for m in module.modules() if isinstance(m, SelfieSegmentation)), None)
    if backbone is None:
        raise TypeError(f"{type(module).__name__} holds no SelfieSegmentation backbone")
    backbone.load_state_dict(load_or_convert())
    return backbone


def reference_features(images: np.ndarray, path: Path | None = None) -> dict[str, np.ndarray]:
    """Run the original in the TFLite interpreter; ``images`` N×256×256×3 float32 in [0, 1].

    Returns the :data:`COMPARED_TENSORS` as N×C×H×W arrays, to compare with ``named_features``.
    """
    interpreter = _interpreter(path, preserve_all_tensors=True)
    index = {detail["name"]: detail["index"] for detail in interpreter.get_tensor_details()}
    input_index = interpreter.get_input_details()[0]["index"]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in COMPARED_TENSORS}
    for image in images:
        interpreter.set_tensor(input_index, np.ascontiguousarray(image[None], dtype=np.float32))
        interpreter.invoke()
        for name in COMPARED_TENSORS:
            collected[name].append(interpreter.get_tensor(index[name]).transpose(0, 3, 1, 2).copy())
    return {name: np.concatenate(arrays) for name, arrays in collected.items()}


def relative_errors(model: SelfieSegmentation, images: np.ndarray,
                    path: Path | None = None) -> dict[str, float]:
    """max|ours − original| / max|original| for each compared tensor, on N×256×256×3 images."""
    reference = reference_features(images, path)
    with torch.no_grad():
        ours = model.eval().named_features(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    return {name: float(np.abs(ours[name].numpy() - reference[name]).max() / np.abs(reference[name]).max())
            for name in COMPARED_TENSORS}


def sample_inputs(count: int = 2, size: int = INPUT_SIZE) -> np.ndarray:
    """Deterministic inputs that exercise the whole range: uniform noise, then smooth gradients."""
    rng = np.random.default_rng(0)
    images = [rng.random((size, size, 3), dtype=np.float32)]
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    while len(images) < count:
        phase = len(images)
        images.append(np.stack([np.add.outer(ramp, ramp) / 2, np.outer(ramp, ramp[::-1]),
                                np.full((size, size), 0.1 * phase % 1.0, np.float32)], axis=-1))
    return np.stack(images[:count]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite", type=Path, default=None, help="default: the npm package's file in node_modules")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest relative error accepted")
    args = parser.parse_args(argv)

    state = load_or_convert(args.tflite)
    print(f"weights: {cached_weights_path(args.tflite)} ({sum(v.numel() for v in state.values()):,} parameters)")
    model = SelfieSegmentation()
    model.load_state_dict(state)
    errors = relative_errors(model, sample_inputs(2), args.tflite)
    print(f"{'tensor':<24} {'max|ours-orig|/max|orig|':>26}")
    for name, error in errors.items():
        print(f"{name:<24} {error:>26.2e}")
    worst = max(errors.values())
    print(f"worst {worst:.2e} (tolerance {args.tolerance:.0e}): {'OK' if worst <= args.tolerance else 'FAILED'}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
