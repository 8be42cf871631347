#!/usr/bin/env python3
"""Compare the PyTorch MoveNet MultiPose port with the original TF.js graph run under Node.js.

Needs the model files from ``scripts/setup.sh`` (``.cache/human-models/``), Node.js, and a scratch
TF.js install that is not part of the product:

    mkdir -p .cache/tfjs-verify && cd .cache/tfjs-verify && npm init -y && \\
      npm install @tensorflow/tfjs-core@4.22.0 @tensorflow/tfjs-converter@4.22.0 \\
                  @tensorflow/tfjs-backend-cpu@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0

Then ``.venv/bin/python scripts/verify_movenet.py [--sizes 256 320] [--backend cpu|wasm] [IMAGE ...]``.
Each image is letterboxed to each size; both models get the same int32 pixels. The table gives,
per image and size: people with person score >= 0.2 (TF.js / torch), the largest keypoint
position error in input pixels (over those people, and over all 6 slots), the largest keypoint
and person score errors, the largest box error in pixels and the largest difference of the six
raw head outputs. Exit status 1 when a person-level check misses its target (1 px, 0.01).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines import settings
from engines.pose.movenet import (
    HEADS,
    MoveNetMultiPose,
    decode_multipose,
    letterbox,
    load_movenet,
    movenet_layout,
    source_files,
)

TFJS_DIR = settings.cache_dir() / "tfjs-verify"
PERSON_THRESHOLD = 0.2
# The graph's nodes for the raw heads (NHWC) and the final output.
HEAD_NODES = {
    "center": "center_0/conv2d_4/BiasAdd", "box_scale": "box_scale_0/conv2d_5/BiasAdd",
    "box_offset": "box_offset_0/conv2d_6/BiasAdd", "kpt_heatmap": "kpt_heatmap_0/conv2d_7/BiasAdd",
    "kpt_regress": "kpt_regress_0/conv2d_8/BiasAdd", "kpt_offset": "kpt_offset_0/conv2d_9/BiasAdd",
}
OUTPUT_NODE = "Identity"

RUNNER_JS = r"""
// Runs the TF.js graph on raw int32 NHWC images and writes the requested nodes as float32.
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const tfc = require('@tensorflow/tfjs-converter');

async function main() {
  const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  if (job.backend === 'wasm') require('@tensorflow/tfjs-backend-wasm');
  await tf.setBackend(job.backend);
  await tf.ready();
  const meta = JSON.parse(fs.readFileSync(job.model, 'utf8'));
  const specs = meta.weightsManifest.flatMap((g) => g.weights);
  const dir = path.dirname(job.model);
  const shards = meta.weightsManifest.flatMap((g) => g.paths.map((p) => fs.readFileSync(path.join(dir, p))));
  const all = Buffer.concat(shards);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const model = await tfc.loadGraphModel(tf.io.fromMemory({
    modelTopology: meta.modelTopology, weightSpecs: specs, weightData, format: meta.format,
    generatedBy: meta.generatedBy, convertedBy: meta.convertedBy, signature: meta.signature,
  }));
  const report = {backend: tf.getBackend(), versions: tf.version_core ? {core: tf.version_core} : {}, images: []};
  for (const im of job.images) {
    const raw = fs.readFileSync(im.path);
    const data = new Int32Array(new Uint8Array(raw).buffer);
    const x = tf.tensor(data, [1, im.h, im.w, 3], 'int32');
    const names = job.outputs;
    let outs = model.execute(x, names);
    if (!Array.isArray(outs)) outs = [outs];
    const entry = {name: im.name, files: {}, shapes: {}, ms: []};
    for (let i = 0; i < names.length; i++) {
      const file = `${im.path}.${i}.f32`;
      const values = await outs[i].data();
      fs.writeFileSync(file, Buffer.from(new Float32Array(values).buffer));
      entry.files[names[i]] = file;
      entry.shapes[names[i]] = outs[i].shape;
    }
    tf.dispose(outs);
    for (let r = 0; r < job.repeats; r++) {  // timing of the final output only
      const t0 = process.hrtime.bigint();
      const y = model.execute(x, 'Identity');
      await y.data();
      entry.ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
      y.dispose();
    }
    x.dispose();
    report.images.push(entry);
  }
  fs.writeFileSync(job.report, JSON.stringify(report));
}
main().catch((e) => { console.error(e); process.exit(1); });
"""


def default_images() -> list[Path]:
    """Real photos from installed packages, plus the real-photo benchmark set when it was built."""
    site = Path(sysconfig.get_paths()["purelib"])  # this interpreter's site-packages
    found = [site / "skimage" / "data" / "astronaut.png", site / "matplotlib" / "mpl-data" / "sample_data" /
             "grace_hopper.jpg"]
    bench = settings.realbench_dir() / "images"
    for name in ("voc_2011_000003", "street_walkers", "building_trio", "home_crowd_small", "feat_group",
                 "basketball", "lawn_pair"):
        found.append(bench / f"{name}.png")
    return [p for p in found if p.is_file()]


def tfjs_versions() -> dict[str, str]:
    out = {}
    for pkg in ("tfjs-core", "tfjs-converter", "tfjs-backend-cpu", "tfjs-backend-wasm"):
        meta = TFJS_DIR / "node_modules" / "@tensorflow" / pkg / "package.json"
        if meta.is_file():
            out[pkg] = json.loads(meta.read_text())["version"]
    return out


def run_tfjs(images: dict[str, np.ndarray], backend: str, repeats: int) -> dict[str, dict]:
    """Run the original graph under Node on each (H, W, 3) uint8 image; return its tensors by node."""
    node = shutil.which("node")
    if node is None or not (TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs-converter").is_dir():
        raise SystemExit(f"needs Node.js and the scratch TF.js install in {TFJS_DIR} (see this script's docstring)")
    json_path, _ = source_files()
    prefix = "StatefulPartitionedCall/"
    outputs = [OUTPUT_NODE] + [prefix + n for n in HEAD_NODES.values()]
    with tempfile.TemporaryDirectory(dir=TFJS_DIR) as tmp:
        tmp = Path(tmp)
        (TFJS_DIR / "run_movenet.js").write_text(RUNNER_JS)
        job = {"model": str(json_path), "backend": backend, "outputs": outputs, "repeats": repeats,
               "report": str(tmp / "report.json"), "images": []}
        for i, (name, img) in enumerate(images.items()):
            path = tmp / f"img{i}.i32"
            path.write_bytes(img.astype("<i4").tobytes())
            job["images"].append({"name": name, "path": str(path), "h": img.shape[0], "w": img.shape[1]})
        (tmp / "job.json").write_text(json.dumps(job))
        subprocess.run([node, str(TFJS_DIR / "run_movenet.js"), str(tmp / "job.json")], check=True, cwd=TFJS_DIR)
        report = json.loads((tmp / "report.json").read_text())
        results = {}
        for entry in report["images"]:
            tensors = {}
            for out_name, file in entry["files"].items():
                arr = np.fromfile(file, dtype="<f4").reshape(entry["shapes"][out_name])
                tensors[out_name.removeprefix(prefix)] = arr
            results[entry["name"]] = {"tensors": tensors, "ms": entry["ms"]}
    return results


@torch.inference_mode()
def run_torch(model: MoveNetMultiPose, img: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    heads = model.heads_forward(torch.from_numpy(img)[None].to(torch.int32))
    out = movenet_layout(decode_multipose(heads))
    return {k: v.permute(0, 2, 3, 1).numpy() for k, v in heads.items()}, out.numpy()


def compare(ref: np.ndarray, ours: np.ndarray, size: int) -> dict[str, float | str]:
    """Person-level differences between two (1, 6, 56) outputs at input size ``size``."""
    ref, ours = ref[0], ours[0]
    kp_r, kp_o = ref[:, :51].reshape(6, 17, 3), ours[:, :51].reshape(6, 17, 3)
    found_r = ref[:, 55] >= PERSON_THRESHOLD
    found_o = ours[:, 55] >= PERSON_THRESHOLD
    pos_err = np.abs(kp_r[..., :2] - kp_o[..., :2]).max(axis=-1) * size  # (6, 17) px
    return {
        "people": f"{found_r.sum()}/{found_o.sum()}" + ("" if (found_r == found_o).all() else " DIFF"),
        "kp_px_people": float(pos_err[found_r].max()) if found_r.any() else 0.0,
        "kp_px_all": float(pos_err.max()),
        "kp_score": float(np.abs(kp_r[..., 2] - kp_o[..., 2]).max()),
        "person_score": float(np.abs(ref[:, 55] - ours[:, 55]).max()),
        "box_px": float(np.abs(ref[:, 51:55] - ours[:, 51:55]).max() * size),
        "same_people": bool((found_r == found_o).all()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", type=Path, help="photos (default: packaged real photos)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 320])
    parser.add_argument("--backend", choices=["cpu", "wasm"], default="wasm",
                        help="TF.js backend: wasm (fast) or cpu (reference kernels, about 3 s an image)")
    parser.add_argument("--repeats", type=int, default=0, help="also time the TF.js graph this many times")
    parser.add_argument("--dump", type=Path, help="write the TF.js outputs (1x6x56) to this .json")
    args = parser.parse_args()

    torch.set_num_threads(2)
    model = load_movenet()
    paths = args.images or default_images()
    inputs, frames = {}, {}
    for path in paths:
        frame = np.asarray(Image.open(path).convert("RGB"))
        for size in args.sizes:
            inputs[f"{path.stem}@{size}"], _ = letterbox(frame, size)
            frames[f"{path.stem}@{size}"] = size
    t0 = time.perf_counter()
    tfjs = run_tfjs(inputs, args.backend, args.repeats)
    print(f"TF.js ({args.backend}) {tfjs_versions()} ran {len(inputs)} inputs in {time.perf_counter() - t0:.1f} s")

    rows, ok, dump = [], True, {}
    for key, img in inputs.items():
        size = frames[key]
        heads, out = run_torch(model, img)
        ref = tfjs[key]["tensors"]
        head_err = max(float(np.abs(ref[HEAD_NODES[h]] - heads[h]).max()) for h in HEADS)
        cmp = compare(ref[OUTPUT_NODE], out, size)
        dump[key] = ref[OUTPUT_NODE].tolist()
        ok &= cmp["same_people"] and cmp["kp_px_people"] <= 1.0 and cmp["person_score"] <= 0.01
        ms = f"{np.median(tfjs[key]['ms']):.0f}" if tfjs[key]["ms"] else "-"
        rows.append((key, cmp["people"], f"{cmp['kp_px_people']:.1e}", f"{cmp['kp_px_all']:.1e}",
                     f"{cmp['kp_score']:.2e}", f"{cmp['person_score']:.2e}", f"{cmp['box_px']:.1e}",
                     f"{head_err:.2e}", ms))
    header = ("input@size", "people tfjs/torch", "kp px (people)", "kp px (all 6)", "kp score",
              "person score", "box px", "raw heads", "tfjs ms")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    if args.dump:
        args.dump.write_text(json.dumps(dump))
    print("OK: every check within 1 px / 0.01 and the same people" if ok else "MISMATCH beyond the targets")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
