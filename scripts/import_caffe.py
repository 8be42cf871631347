#!/usr/bin/env python
"""Turn one of the paper's released Caffe models into a PartCam checkpoint.

    python scripts/import_caffe.py MODEL.caffemodel [--prototxt deploy.prototxt] --task parts --out CKPT

Reads the binary .caffemodel with protobuf (Caffe itself is not needed), maps VGG-16
DeepLab-LargeFOV (with pool5a for DeepLab v1's release) and its attention-to-scale or
max-over-scales merge onto PartCam's network, and records Caffe's preprocessing (BGR, mean
104.008/116.669/122.675, no std), resizing (Interp, corners aligned) and padding (mean colour,
bottom-right) in the checkpoint. The authors' prototxt templates (``${EXP}``, ``${NUM_LABELS}``)
are read as they are; see docs/caffe-import.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engines.importers import CaffeImportError, import_caffemodel
from engines.tasks import TASKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caffemodel", type=Path, help="the trained weights (.caffemodel)")
    parser.add_argument("--prototxt", type=Path, help="the model's net definition; gives the scale layout "
                        "and mean values (optional: the .caffemodel carries its own layer connections)")
    parser.add_argument("--task", required=True, choices=sorted(TASKS),
                        help="what the model parses; its fc8 must predict this task's number of classes "
                        "(parts: 7, the PASCAL-Person-Part models)")
    parser.add_argument("--out", type=Path, required=True, help="PartCam checkpoint to write (.safetensors)")
    parser.add_argument("--fc8", dest="fc8_layer", help="which classifier layer to use if there are several")
    parser.add_argument("--single-scale", action="store_true",
                        help="drop the attention and keep the scale-1 network only (about 3× faster)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input side the engine letterboxes to (default: the prototxt's test crop, else 513 "
                        "as the authors tested)")
    parser.add_argument("--define", "-D", action="append", default=[], metavar="NAME=VALUE",
                        help="fill a ${NAME} placeholder of a template prototxt (e.g. EXP=voc10_part); "
                        "by default they are inferred from the caffemodel's layer names")
    args = parser.parse_args(argv)
    defines = {}
    for item in args.define:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--define takes NAME=VALUE, got {item!r}")
        defines[name] = value

    try:
        result = import_caffemodel(args.caffemodel, task=args.task, out=args.out, prototxt=args.prototxt,
                                   fc8_layer=args.fc8_layer, single_scale=args.single_scale,
                                   input_size=args.input_size, defines=defines)
    except (CaffeImportError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"import_caffe: {message}", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.ignored_layers:
        print(f"note: layers with weights not used: {', '.join(result.ignored_layers)}", file=sys.stderr)
    attention = f", attention width {result.attention_width}" if result.attention_width else ""
    print(f"{args.caffemodel.name} ({result.layer_format!r} format) → {result.checkpoint}\n"
          f"  task {result.task}, {result.num_classes} classes from {result.fc8_layer}, merge {result.merge}, "
          f"scales {result.scales}{attention}, fc6/fc7 {result.fc_channels} channels"
          f"{', pool5a' if result.pool5a else ''}\n"
          f"  preprocessing {result.preprocessing.channel_order}, mean {list(result.preprocessing.mean)}, "
          f"std {list(result.preprocessing.std)}\n"
          f"  input {result.input_size} px, padded bottom-right with the mean colour; resized as Caffe's Interp "
          f"(corners aligned), input Interps {result.inference['input_interp']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
