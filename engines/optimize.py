"""Inference-only graph rewrites shared by the runtimes."""

from __future__ import annotations

import copy
import itertools

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every Conv2d→BatchNorm2d pair folded into one conv.

    BatchNorm is a per-channel affine map at inference, so folding it into the preceding
    convolution gives identical outputs (to float rounding) and skips a full pass over memory.
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (name, conv), (bn_name, bn) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module._modules[name] = fuse_conv_bn_eval(conv, bn)
                module._modules[bn_name] = nn.Identity()
    return model
