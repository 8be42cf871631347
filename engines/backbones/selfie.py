"""MediaPipe selfie segmentation in PyTorch: a person-aware encoder pretrained on real photos.

The network is the general-purpose selfie segmenter shipped in npm ``@mediapipe/selfie_segmentation``
(``selfie_segmentation.tflite``, Apache-2.0): a MobileNetV3-style encoder, an LR-ASPP-style pooling
branch and a three-stage decoder that ends in a person logit. This is a hand-written PyTorch version
of that graph. It reproduces the original at 256×256 and runs at any input size: the graph's
fixed-size global pools become means over the actual feature map, its fixed-size upsamplings become
2× upsamplings cropped to the skip connection's size, and the padding of strided layers is computed
from the input size so that odd sizes keep the geometry of the even size it was trained at.

Weights: ``selfie_encoder()`` builds random weights, which is what loading a checkpoint needs.
Training starts from the pretrained weights with ``load_selfie_weights`` in
``engines.importers.selfie_tflite``, which converts the ``.tflite`` once and caches the result.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..preprocessing import UNIT_RANGE
from .contract import BackboneOutputs, BackboneSpec


class SameConv2d(nn.Conv2d):
    """Conv2d padded as TensorFlow pads "SAME" on the even sizes the original was trained at.

    For a stride-2 layer on an even input TensorFlow pads ``(k − 2) // 2`` before and the rest after,
    so output ``i`` is centred on input ``2i + 1``; PyTorch's symmetric padding would shift every
    feature by half a pixel. On odd inputs TensorFlow would switch to symmetric padding (centre
    ``2i``), a geometry the network never saw; keeping the even-size offset instead (one more pixel
    of padding after) makes every size behave like the training size.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads: list[int] = []
            for size, kernel, stride in ((int(x.shape[-1]), self.kernel_size[1], self.stride[1]),
                                         (int(x.shape[-2]), self.kernel_size[0], self.stride[0])):
                out = -(-size // stride)
                before = (kernel - stride) // 2
                pads += [before, (out - 1) * stride + kernel - size - before]
            x = F.pad(x, pads)
        return super().forward(x)


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "hardswish": nn.Hardswish()}[name]


class SqueezeExcite(nn.Module):
    """Channel gate from the global mean: ``x · sigmoid(expand(relu(reduce(mean(x)))))``."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(scale))))


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise → optional squeeze-excite → project (1×1, linear) [+ input]."""

    def __init__(self, in_ch: int, expanded: int, out_ch: int, kernel: int, stride: int,
                 activation: str, squeeze: int | None) -> None:
        super().__init__()
        self.expand = SameConv2d(in_ch, expanded, 1)
        self.expand_act = _activation(activation)
        self.depthwise = SameConv2d(expanded, expanded, kernel, stride, groups=expanded)
        self.depthwise_act = _activation(activation)
        self.se = SqueezeExcite(expanded, squeeze) if squeeze else nn.Identity()
        self.project = SameConv2d(expanded, out_ch, 1)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise_act(self.depthwise(self.expand_act(self.expand(x))))
        y = self.project(self.se(y))
        return x + y if self.use_residual else y


class PoolingBranch(nn.Module):
    """LR-ASPP-style top: ``relu(conv(x)) · sigmoid(gate(mean(x)))``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)
        self.gate = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)) * torch.sigmoid(self.gate(x.mean(dim=(2, 3), keepdim=True)))


class DecoderStage(nn.Module):
    """Upsample ×2, project, fuse with a skip through a gated sum, then a residual depthwise block."""

    def __init__(self, in_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_ch, skip_ch, 1)
        self.attention = SqueezeExcite(skip_ch, skip_ch)  # only its two convs: the gate is applied to the skip
        self.pointwise = nn.Conv2d(skip_ch, skip_ch, 1)
        self.depthwise = nn.Conv2d(skip_ch, skip_ch, 3, padding=1, groups=skip_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Exactly 2× as in the original, then crop: an odd-sized skip is the 2× grid less its last row/column.
        height, width = int(skip.shape[-2]), int(skip.shape[-1])
        up = F.interpolate(x, size=(2 * int(x.shape[-2]), 2 * int(x.shape[-1])), mode="bilinear", align_corners=False)
        up = self.project(up[..., :height, :width])
        summed = skip + up
        # The original gates the skip alone with channel weights computed from skip + upsampled.
        gate = torch.sigmoid(self.attention.expand(F.relu(self.attention.reduce(
            summed.mean(dim=(2, 3), keepdim=True)))))
        fused = F.relu(self.pointwise(skip * gate + up))
        return fused + F.relu(self.depthwise(fused))


class SelfieSegmentation(nn.Module):
    """The selfie-segmentation network; ``forward`` returns the features a segmentation head needs.

    ``forward(x)`` with ``x`` RGB in [0, 1] returns ``{"out": 128 channels at stride 16,
    "low": 24 channels at stride 8, "mask": the person logit before the sigmoid, at the input's size}``.
    Feature maps have ``ceil(size / stride)`` pixels.
    ``low="decoder"`` (default) takes the decoder's stride-8 features, which already combine the
    deep context with the skip; ``low="encoder"`` takes the encoder's own stride-8 block.
    """

    def __init__(self, low: str = "decoder") -> None:
        super().__init__()
        if low not in ("decoder", "encoder"):
            raise ValueError(f"low must be 'decoder' or 'encoder', got {low!r}")
        self.low_source = low
        # Declaration order matters: the converter assigns the original's layers in this order.
        self.stem = SameConv2d(3, 16, 3, stride=2)
        self.blocks = nn.ModuleList([
            InvertedResidual(16, 16, 16, 3, 2, "relu", 8),
            InvertedResidual(16, 72, 24, 3, 2, "relu", None),
            InvertedResidual(24, 88, 24, 3, 1, "relu", None),
            InvertedResidual(24, 96, 32, 5, 2, "hardswish", 24),
            InvertedResidual(32, 128, 32, 5, 1, "hardswish", 32),
            InvertedResidual(32, 128, 32, 5, 1, "hardswish", 32),
            InvertedResidual(32, 96, 32, 5, 1, "hardswish", 24),
            InvertedResidual(32, 96, 32, 5, 1, "hardswish", 24),
        ])
        self.pooling = PoolingBranch(32, 128)
        self.decoder = nn.ModuleList([DecoderStage(128, 24), DecoderStage(24, 16), DecoderStage(16, 16)])
        self.segment = nn.ConvTranspose2d(16, 1, 2, stride=2)
        self.outputs = BackboneOutputs(out=128, low=24, mask=1)
        self.channels_last = True
        self.output_stride = 16

    def named_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every tensor worth comparing with the original, under the original graph's names."""
        if self.channels_last:
            # Its thin layers (16–128 channels) run about 1.4x faster on CPU in NHWC than in NCHW.
            x = x.contiguous(memory_format=torch.channels_last)
        stem = F.hardswish(self.stem(x))
        y = stem
        skips: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks):
            y = block(y)
            skips[index] = y
        deep = self.pooling(y)
        d8 = self.decoder[0](deep, skips[2])
        d4 = self.decoder[1](d8, skips[0])
        d2 = self.decoder[2](d4, stem)
        return {
            "h_swish": stem,
            "conv2d_4": skips[0],
            "add__xeno_compat__1": skips[2],
            "add_4__xeno_compat__1": y,
            "multiply_6": deep,
            "add_7__xeno_compat__1": d8,
            "add_10__xeno_compat__1": d4,
            "add_13__xeno_compat__1": d2,
            "segment": self.segment(d2)[..., : x.shape[-2], : x.shape[-1]],
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        named = self.named_features(x)
        low = named["add_7__xeno_compat__1" if self.low_source == "decoder" else "add__xeno_compat__1"]
        return {"out": named["multiply_6"], "low": low, "mask": named["segment"]}


def selfie_encoder(*, low: str = "decoder", pretrained: bool = False) -> SelfieSegmentation:
    """Build the selfie-segmentation backbone.

    Weights are random unless ``pretrained``. Training code should call ``load_selfie_weights``
    (engines.importers.selfie_tflite) on the built model instead of passing ``pretrained=True``
    through ``build_model``: the model's config records its backbone kwargs, and a checkpoint saved
    with ``pretrained=True`` would need the npm package again just to be loaded, although the
    checkpoint holds every weight.
    """
    model = SelfieSegmentation(low=low)
    if pretrained:
        # Only here, at call time: the importer depends on this module, never the other way.
        from ..importers.selfie_tflite import load_selfie_weights

        load_selfie_weights(model)
    return model


SPEC = BackboneSpec(
    builder=selfie_encoder,
    preprocessing=UNIT_RANGE,
    head="light",
    attention_width=64,
    description="MediaPipe selfie segmentation (real-photo pretrained), output stride 16, person mask",
)
