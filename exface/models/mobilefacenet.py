"""MobileFaceNet (Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face
Verification on Mobile Devices", 2018): a ~1 M-parameter face-recognition trunk.

Layout (the paper's Table 1, input 112x112; every conv is followed by BatchNorm, and by
PReLU unless marked linear):

- ``conv1``: 3x3, 64 channels, stride 2 -> ``conv2_dw``: depthwise 3x3, 64, stride 1;
- inverted-residual bottlenecks (1x1 expand by t, depthwise 3x3, linear 1x1 project,
  residual when the shape is kept), as ``(t, c, n, s)``: (2, 64, 5, 2), (4, 128, 1, 2),
  (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1);
- ``conv_sep``: 1x1 to 512 -> ``gdc``: linear global depthwise conv over the whole final
  map (7x7 at 112 input) -> ``linear``: linear 1x1 to ``embedding_dim`` (paper: 128) ->
  BatchNorm1d.

Deviation: the paper fixes the input at 112x112; here ``input_size`` may be any multiple of
16 (the GDC kernel is ``input_size / 16``), so the same network trains at 64 px on CPU.
``width`` multiplies every channel count (1.0 is the paper's network). Initialization is
Kaiming-normal for convs (fan-out), as in common MobileNet training code.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["MobileFaceNet", "MOBILEFACENET_SETTING"]

#: The paper's bottleneck stages ``(expansion t, channels c, repeats n, first stride s)``.
MOBILEFACENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


def _conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: expand 1x1 (PReLU), depthwise 3x3 (PReLU), linear project 1x1."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            _conv_bn(cin, hidden, 1, 1),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, cout, 1, 1, act=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet trunk + GDC head (see the module docstring).

    Args:
        embedding_dim: size of the embedding (paper: 128; arcface_torch's variant: 512).
        input_size: side of the square input, a multiple of 16.
        width: channel multiplier (1.0: the paper's network).
        setting: bottleneck stages ``(t, c, n, s)``.
        dropout: dropout before the final linear layer (training only).
    """

    def __init__(self, embedding_dim: int = 128, input_size: int = 112, width: float = 1.0,
                 setting: Sequence[Sequence[int]] = MOBILEFACENET_SETTING, dropout: float = 0.0) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 (4 stride-2 stages), got {input_size}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.input_size, self.num_features = int(input_size), int(embedding_dim)
        ch = lambda c: max(8, int(round(c * width)))  # noqa: E731
        c0 = ch(64)
        self.conv1 = _conv_bn(3, c0, 3, 2)
        self.conv2_dw = _conv_bn(c0, c0, 3, 1, groups=c0)
        blocks, cin = [], c0
        for t, c, n, s in setting:
            for i in range(n):
                blocks.append(Bottleneck(cin, ch(c), s if i == 0 else 1, t))
                cin = ch(c)
        self.blocks = nn.Sequential(*blocks)
        sep = ch(512)
        self.conv_sep = _conv_bn(cin, sep, 1, 1)
        side = self.input_size // 16
        self.gdc = _conv_bn(sep, sep, side, 1, groups=sep, act=False)
        self.gdc[0].padding = (0, 0)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Conv2d(sep, self.num_features, 1, bias=False)
        self.features = nn.BatchNorm1d(self.num_features)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"MobileFaceNet built for {self.input_size}x{self.input_size} input, got {tuple(x.shape[-2:])}")
        x = self.gdc(self.conv_sep(self.blocks(self.conv2_dw(self.conv1(x)))))
        return self.features(self.linear(self.dropout(x)).flatten(1))
