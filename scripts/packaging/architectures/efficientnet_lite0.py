"""EfficientNet-Lite0 architecture, written to load the ImageNet weights ported from TensorFlow.

State-dict keys follow the `_conv_stem` / `_blocks.N` / `_fc` naming. Lite variants drop
squeeze-and-excitation, use ReLU6, and keep the stem (32) and head (1280) widths fixed.
TensorFlow's "SAME" padding is asymmetric for strided convolutions, so it is computed at run
time from the input size, unless `fix_input_size` froze it for one size (the ONNX export does:
constant pads are what lets ONNX Runtime fuse each Pad into its convolution); batch-norm
epsilon is TensorFlow's 1e-3.

This file defines exactly one nn.Module class, as an architecture file must (TorchServe's
model-file convention): export builds the model from it before loading the checkpoint.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
NUM_CLASSES = 1000
# (kernel, stride, expand ratio, out channels, repeats) per stage, as in EfficientNet-B0.
STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]


def same_pads(h: int, w: int, kernel: int, stride: int) -> list[int]:
    """TensorFlow's SAME padding as F.pad's [left, right, top, bottom]: extra pixel bottom/right."""
    if stride == 1:
        p = (kernel - 1) // 2
        return [p, p, p, p]
    pad_h = max((int(math.ceil(h / stride)) - 1) * stride + kernel - h, 0)
    pad_w = max((int(math.ceil(w / stride)) - 1) * stride + kernel - w, 0)
    return [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]


def _same_pad(x: torch.Tensor, kernel: int, stride: int, fixed: list[int]) -> torch.Tensor:
    """Pad like TensorFlow's SAME; `fixed` (non-empty) is the precomputed answer for one size."""
    if len(fixed) > 0:
        return F.pad(x, fixed)
    return F.pad(x, same_pads(x.shape[-2], x.shape[-1], kernel, stride))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier; input is a normalized NCHW float tensor (224x224)."""

    _fixed_pads: list[list[int]]  # declared here: TorchScript cannot type an empty list in __init__

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = _conv_bn(3, 32, 3, stride=2)
        self._blocks = nn.ModuleList()
        # Per-block hyper-parameters live in plain lists so TorchScript can iterate them.
        self._kernels = []
        self._strides = []
        self._residual = []
        # Pads per padded layer (stem first), frozen by fix_input_size; empty = computed per input.
        self._fixed_pads = [[] for _ in range(1 + sum(r for *_, r in STAGES))]
        cin = 32
        for kernel, stride, expand, cout, repeats in STAGES:
            for i in range(repeats):
                s = stride if i == 0 else 1
                self._blocks.append(self._make_block(cin, cout, kernel, s, expand))
                self._kernels.append(kernel)
                self._strides.append(s)
                self._residual.append(s == 1 and cin == cout)
                cin = cout
        self._conv_head, self._bn1 = _conv_bn(cin, 1280, 1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    @staticmethod
    def _make_block(cin: int, cout: int, kernel: int, stride: int, expand: int) -> nn.ModuleDict:
        mid = cin * expand
        block = nn.ModuleDict()
        if expand != 1:
            block["_expand_conv"], block["_bn0"] = _conv_bn(cin, mid, 1)
        else:
            # Identity keeps every block one TorchScript type; relu6 of the stem output
            # (already in [0, 6]) leaves it unchanged, and Identity adds no weights.
            block["_expand_conv"], block["_bn0"] = nn.Identity(), nn.Identity()
        block["_depthwise_conv"], block["_bn1"] = _conv_bn(mid, mid, kernel, stride, groups=mid)
        block["_project_conv"], block["_bn2"] = _conv_bn(mid, cout, 1)
        return block

    def fix_input_size(self, size: int) -> None:
        """Freeze every SAME pad for size x size inputs: the pads become constants in an exported
        graph instead of arithmetic on the input's shape. Other sizes then pad wrongly."""
        side = size
        pads = [same_pads(side, side, 3, 2)]
        side = math.ceil(side / 2)
        for kernel, stride in zip(self._kernels, self._strides, strict=True):
            pads.append(same_pads(side, side, kernel, stride))
            side = math.ceil(side / stride)
        self._fixed_pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(_same_pad(x, 3, 2, self._fixed_pads[0]))))
        for i, block in enumerate(self._blocks):
            out = F.relu6(block["_bn0"](block["_expand_conv"](x)))
            out = _same_pad(out, self._kernels[i], self._strides[i], self._fixed_pads[i + 1])
            out = F.relu6(block["_bn1"](block["_depthwise_conv"](out)))
            out = block["_bn2"](block["_project_conv"](out))
            x = out + x if self._residual[i] else out
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))
