"""IResNet: the "improved residual" face-recognition trunk of insightface's arcface_torch.

The network maps a 112x112 face crop (3 channels, normalized to about [-1, 1]) to an
unnormalized 512-d embedding. Layout, so that ``state_dict`` keys match the
``backbone.pth`` files published by arcface_torch and ElasticFace:

- stem: ``conv1`` (3x3, 64 ch, stride 1) -> ``bn1`` -> ``prelu``;
- four stages ``layer1`` .. ``layer4`` (64, 128, 256, 512 channels). Each block is
  pre-activation style, ``bn1 -> conv1 (3x3) -> bn2 -> prelu -> conv2 (3x3, stride)
  -> bn3``, plus a shortcut; the first block of every stage halves the resolution;
- head: ``bn2`` -> dropout -> flatten (512 x 7 x 7) -> ``fc`` -> ``features``
  (BatchNorm1d whose scale is frozen at 1).

The first block of ``layer1`` keeps 64 channels. arcface_torch gives it a projection
shortcut (``downsample``: 1x1 conv + BN, stride 2); AdaFace's IR backbones instead use
a strided identity (``MaxPool2d(1, 2)``, i.e. take every other pixel). Everything else
is the same network, so ``strided_identity_shortcut=True`` builds the AdaFace variant and
:mod:`exface.models.checkpoint_io` renames AdaFace keys onto this module.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["IResNet", "IResNetBlock", "IRESNET_LAYERS", "build_iresnet", "iresnet_arch_of"]

#: Blocks per stage for each published depth (arcface_torch's ``get_model`` names).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}

_STAGE_WIDTHS = (64, 128, 256, 512)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IResNetBlock(nn.Module):
    """One IResNet unit: ``x + bn3(conv2(prelu(bn2(conv1(bn1(x))))))``.

    ``downsample`` is the projection shortcut (``Sequential(conv1x1, BatchNorm2d)``) or
    None. With no projection and ``stride > 1`` the shortcut is a strided identity
    (AdaFace's ``MaxPool2d(1, stride)``).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        if downsample is None and cin != cout:
            raise ValueError(f"a block from {cin} to {cout} channels needs a projection shortcut")
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        elif self.stride > 1:
            shortcut = x[:, :, :: self.stride, :: self.stride]
        else:
            shortcut = x
        return out + shortcut


class IResNet(nn.Module):
    """The IResNet trunk + embedding head (see the module docstring for the layout).

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 14, 3)`` for IResNet-50.
        num_features: embedding size (``fc`` output).
        dropout: dropout before ``fc`` (training only; arcface_torch uses 0).
        input_size: side of the square input; the head's ``fc`` sees
            ``512 * (input_size / 16) ** 2`` inputs (112 -> 7x7, AdaFace also has 224).
        strided_identity_shortcut: AdaFace layout (no projection in ``layer1.0``).
        fp16: as arcface_torch's ``fp16`` option: the stem, the four stages, ``bn2``, the
            flatten and the dropout run under autocast (float16 on CUDA, bfloat16 on CPU),
            and only ``fc`` and ``features`` in float32 (on the float32 cast of the
            dropout's output); the output is float32 either way.

    Initialization follows arcface_torch (conv ~ N(0, 0.1), BN scale 1 / shift 0,
    ``features`` scale fixed at 1 and not trained), so training from scratch behaves
    like the reference.
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_features: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
        strided_identity_shortcut: bool = False,
        fp16: bool = False,
    ) -> None:
        super().__init__()
        self.fp16 = bool(fp16)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must give 4 positive block counts, got {tuple(layers)}")
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 (4 stride-2 stages), got {input_size}")
        self.layers = tuple(int(n) for n in layers)
        self.num_features = num_features
        self.input_size = input_size
        self.strided_identity_shortcut = strided_identity_shortcut

        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for i, (n, width) in enumerate(zip(self.layers, _STAGE_WIDTHS), start=1):
            setattr(self, f"layer{i}", self._make_stage(cin, width, n))
            cin = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        side = input_size // 16
        self.fc = nn.Linear(512 * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self._init_weights()

    def _make_stage(self, cin: int, cout: int, blocks: int) -> nn.Sequential:
        downsample = None
        if cin != cout or not self.strided_identity_shortcut:
            downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=2, bias=False),
                nn.BatchNorm2d(cout, eps=1e-5),
            )
        units = [IResNetBlock(cin, cout, stride=2, downsample=downsample)]
        units += [IResNetBlock(cout, cout) for _ in range(blocks - 1)]
        return nn.Sequential(*units)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward_trunk(self, x: Tensor) -> Tensor:
        """Stem and the four stages: ``[N, 3, S, S] -> [N, 512, S/16, S/16]``."""
        x = self.prelu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"IResNet built for {self.input_size}x{self.input_size} input, got "
                f"{tuple(x.shape[-2:])}"
            )
        if self.fp16:  # arcface_torch: bn2/flatten/dropout inside autocast, fc on x.float()
            dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
            with torch.autocast(device_type=x.device.type, dtype=dtype):
                x = self.dropout(torch.flatten(self.bn2(self.forward_trunk(x)), 1))
            x = x.float()
        else:
            x = self.dropout(torch.flatten(self.bn2(self.forward_trunk(x)), 1))
        return self.features(self.fc(x))


def build_iresnet(arch: str = "r50", **kwargs) -> IResNet:
    """IResNet by arcface_torch name (``r18``, ``r34``, ``r50``, ``r100``, ``r200``)."""
    try:
        layers = IRESNET_LAYERS[arch]
    except KeyError:
        raise ValueError(f"unknown IResNet arch {arch!r}; choose one of {', '.join(IRESNET_LAYERS)}") from None
    return IResNet(layers, **kwargs)


def iresnet_arch_of(layers: Sequence[int]) -> str | None:
    """The arch name for a blocks-per-stage tuple, or None if it is not a published depth."""
    layers = tuple(layers)
    return next((name for name, ls in IRESNET_LAYERS.items() if ls == layers), None)
