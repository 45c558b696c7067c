"""face-api's two feature backbones: the dense-block ``FaceFeatureExtractor`` and ``TinyXception``.

``FaceFeatureExtractor`` (shared by the 68-point landmark net and the expression net) is four
"dense blocks" of 3x3 convs with stride-2 entry (112 -> 56 -> 28 -> 14 -> 7 pixels, 32 -> 64
-> 128 -> 256 channels) and a 7x7 average pool: 256 features per face. Inside a block every
conv sees the ReLU'd sum of all earlier outputs of the block (DenseNet-style with sums)::

    o1 = relu(conv0(x)); o2 = conv1(o1); o3 = conv2(relu(o1 + o2))
    o4 = conv3(relu(o1 + o2 + o3)); out = relu(o1 + o2 + o3 + o4)

``conv0`` of the first block is a dense 3x3 conv; all others are depthwise-separable.

``TinyXception`` (the age/gender backbone) is an entry 3x3/2 conv, two "reduction blocks"
(two separable convs, a 3x3/2 'same' max-pool, plus a strided 1x1 "expansion" shortcut), two
residual "main blocks" of three separable convs, an exit reduction block and a final
separable conv to 512 channels with ReLU: 7x7x512 for a 112x112 input.

Both take the normalized 112x112 batch of :func:`exface.models.faceapi_ops.faceapi_input`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from exface.models.faceapi_ops import SeparableConv2d, TFConv2d, WeightReader, tf_same_pad

__all__ = ["DenseBlock", "FaceFeatureExtractor", "TinyXception"]


class DenseBlock(nn.Module):
    """face-api's ``denseBlock4`` (``num_convs=4``) / ``denseBlock3`` (``num_convs=3``)."""

    def __init__(self, cin: int, cout: int, first: bool = False, num_convs: int = 4) -> None:
        super().__init__()
        conv0: nn.Module = TFConv2d(cin, cout, 3, stride=2) if first else SeparableConv2d(cin, cout, 2)
        rest = [SeparableConv2d(cout, cout, 1) for _ in range(num_convs - 1)]
        self.convs = nn.ModuleList([conv0, *rest])

    def forward(self, x: Tensor) -> Tensor:
        outs = [F.relu(self.convs[0](x))]
        for conv in self.convs[1:]:
            outs.append(conv(F.relu(_sum_like_tf(outs)) if len(outs) > 1 else outs[0]))
        return F.relu(_sum_like_tf(outs))

    def load_tf(self, w: WeightReader, prefix: str) -> None:
        for i, conv in enumerate(self.convs):
            conv.load_tf(w, f"{prefix}/conv{i}")


def _sum_like_tf(xs: list[Tensor]) -> Tensor:
    """``o1 + (o2 + (o3 + o4))``: face-api's nesting, so float rounding matches TF.js."""
    acc = xs[-1]
    for t in reversed(xs[:-1]):
        acc = t + acc
    return acc


class FaceFeatureExtractor(nn.Module):
    """Normalized ``[N, 3, 112, 112]`` -> ``[N, 256]`` bottleneck features."""

    out_features = 256

    def __init__(self) -> None:
        super().__init__()
        self.dense0 = DenseBlock(3, 32, first=True)
        self.dense1 = DenseBlock(32, 64)
        self.dense2 = DenseBlock(64, 128)
        self.dense3 = DenseBlock(128, 256)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dense3(self.dense2(self.dense1(self.dense0(x))))
        # tf.avgPool(x, 7, 2, 'valid') on the 7x7 map of a 112 input: one 7x7 window.
        return F.avg_pool2d(x, 7, 2).flatten(1)

    def load_tf(self, w: WeightReader) -> None:
        for name in ("dense0", "dense1", "dense2", "dense3"):
            getattr(self, name).load_tf(w, name)


class _ReductionBlock(nn.Module):
    def __init__(self, cin: int, cout: int, activate_input: bool = True) -> None:
        super().__init__()
        self.activate_input = activate_input
        self.separable_conv0 = SeparableConv2d(cin, cout)
        self.separable_conv1 = SeparableConv2d(cout, cout)
        self.expansion_conv = TFConv2d(cin, cout, 1, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(x) if self.activate_input else x
        out = self.separable_conv1(F.relu(self.separable_conv0(out)))
        out = F.max_pool2d(tf_same_pad(out, 3, 2, value=float("-inf")), 3, 2)
        return out + self.expansion_conv(x)

    def load_tf(self, w: WeightReader, prefix: str) -> None:
        for name in ("separable_conv0", "separable_conv1", "expansion_conv"):
            getattr(self, name).load_tf(w, f"{prefix}/{name}")


class _MainBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([SeparableConv2d(c, c) for _ in range(3)])

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for conv in self.convs:
            out = conv(F.relu(out))
        return out + x

    def load_tf(self, w: WeightReader, prefix: str) -> None:
        for i, conv in enumerate(self.convs):
            conv.load_tf(w, f"{prefix}/separable_conv{i}")


class TinyXception(nn.Module):
    """Normalized ``[N, 3, 112, 112]`` -> ``[N, 512, 7, 7]`` (face-api ``TinyXception(2)``)."""

    out_channels = 512

    def __init__(self, num_main_blocks: int = 2) -> None:
        super().__init__()
        self.conv_in = TFConv2d(3, 32, 3, stride=2)
        self.reduction_block_0 = _ReductionBlock(32, 64, activate_input=False)
        self.reduction_block_1 = _ReductionBlock(64, 128)
        self.main_blocks = nn.ModuleList([_MainBlock(128) for _ in range(num_main_blocks)])
        self.exit_reduction_block = _ReductionBlock(128, 256)
        self.exit_separable_conv = SeparableConv2d(256, 512)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv_in(x))
        out = self.reduction_block_1(self.reduction_block_0(out))
        for block in self.main_blocks:
            out = block(out)
        out = self.exit_reduction_block(out)
        return F.relu(self.exit_separable_conv(out))

    def load_tf(self, w: WeightReader) -> None:
        self.conv_in.load_tf(w, "entry_flow/conv_in")
        self.reduction_block_0.load_tf(w, "entry_flow/reduction_block_0")
        self.reduction_block_1.load_tf(w, "entry_flow/reduction_block_1")
        for i, block in enumerate(self.main_blocks):
            block.load_tf(w, f"middle_flow/main_block_{i}")
        self.exit_reduction_block.load_tf(w, "exit_flow/reduction_block")
        self.exit_separable_conv.load_tf(w, "exit_flow/separable_conv")
