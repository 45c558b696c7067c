"""face-api's ``face_recognition_model``: dlib's 29-layer ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

The network maps a 150x150 RGB face chip (dlib's 5-point alignment, padding 0.25) to a
128-D descriptor. Its layout, as dlib defines it and face-api re-implements it in TF.js:

- ``conv32_down``: 7x7/2 conv, 'valid' padding, then a per-channel affine (dlib's ``affine``
  layer, i.e. a frozen batch-norm: "scale" here) and ReLU; then 3x3/2 max-pool, 'valid'.
- residual blocks (conv3x3 -> scale -> ReLU -> conv3x3 -> scale, plus the identity, ReLU),
  at 32, 64, 128 and 256 channels.
- "down" residual blocks: the first conv has stride 2 and 'valid' padding; the shortcut is a
  2x2/2 average pool whose channels are zero-extended to the block's width. When the two
  branches disagree in spatial size (odd inputs) the smaller one is zero-padded at the
  bottom/right, which is what dlib's ``add_prev`` does with tensors of different shapes.
- global average pool and a 256x128 bias-free fully connected layer.

Convolutions with stride 1 use 'same' padding, which for a 3x3 kernel is a symmetric 1 pixel.
The output is the *raw* descriptor: dlib does not L2-normalize it (its verification threshold
is a Euclidean distance of 0.6); :class:`exface.embedders.FaceApiResNet34` normalizes.

Weights come from face-api's TF.js manifest (uint8-quantized, filters in HWIO), read by
:func:`exface.models.tfjs.load_tfjs_weights` and transposed to PyTorch's OIHW here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.models.tfjs import load_tfjs_weights

__all__ = ["FaceApiResNet", "load_faceapi_resnet"]

#: face-api's (and dlib's) per-channel RGB mean on the [0, 255] scale.
FACEAPI_MEAN_RGB = (122.782, 117.001, 104.298)


class ConvScale(nn.Module):
    """Conv (+bias) followed by face-api's "scale" layer (per-channel ``x * w + b``).

    ``down=True`` is the stride-2 'valid' variant; otherwise stride 1 with symmetric 'same'
    padding (``k // 2``).
    """

    def __init__(self, cin: int, cout: int, kernel: int, down: bool, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=2 if down else 1,
                              padding=0 if down else kernel // 2, bias=True)
        self.scale_weight = nn.Parameter(torch.ones(cout))
        self.scale_bias = nn.Parameter(torch.zeros(cout))
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = torch.addcmul(self.scale_bias.view(1, -1, 1, 1), x, self.scale_weight.view(1, -1, 1, 1))
        return F.relu(x) if self.relu else x


class Residual(nn.Module):
    """Two 3x3 conv+scale layers with an identity (or, for ``down``, pooled) shortcut."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        if not down and cin != cout:
            raise ValueError(f"an identity residual block needs cin == cout, got {cin} -> {cout}")
        self.down = down
        self.conv1 = ConvScale(cin, cout, 3, down=down, relu=True)
        self.conv2 = ConvScale(cout, cout, 3, down=False, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        if not self.down:
            return F.relu(out + x)
        short = F.avg_pool2d(x, 2, 2)  # 'valid': floor(H / 2)
        # Zero-pad whichever branch is smaller, at the end of each axis (dlib's add_prev).
        dc = out.shape[1] - short.shape[1]
        dh = out.shape[2] - short.shape[2]
        dw = out.shape[3] - short.shape[3]
        if dc < 0:
            raise ValueError("a down block cannot narrow the channels")
        short = F.pad(short, (0, max(dw, 0), 0, max(dh, 0), 0, dc))
        out = F.pad(out, (0, max(-dw, 0), 0, max(-dh, 0)))
        return F.relu(out + short)


# (name, cin, cout, down) in forward order, after the stem.
_BLOCKS: tuple[tuple[str, int, int, bool], ...] = (
    ("conv32_1", 32, 32, False),
    ("conv32_2", 32, 32, False),
    ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True),
    ("conv64_1", 64, 64, False),
    ("conv64_2", 64, 64, False),
    ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True),
    ("conv128_1", 128, 128, False),
    ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True),
    ("conv256_1", 256, 256, False),
    ("conv256_2", 256, 256, False),
    ("conv256_down_out", 256, 256, True),
)


class FaceApiResNet(nn.Module):
    """dlib's face-recognition ResNet: normalized ``[N, 3, 150, 150]`` -> raw ``[N, 128]``.

    Input normalization is the caller's job (face-api: ``(rgb_255 - FACEAPI_MEAN_RGB) / 255``);
    see :class:`exface.embedders.FaceApiResNet34`. Module names follow the TF.js weight names
    (``conv64_down/conv1/...`` -> ``conv64_down.conv1``), so the weights map one to one.
    """

    embedding_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv32_down = ConvScale(3, 32, 7, down=True, relu=True)
        self.blocks = nn.ModuleDict({name: Residual(cin, cout, down) for name, cin, cout, down in _BLOCKS})
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FaceApiResNet takes [N, 3, H, W] images, got shape {tuple(x.shape)}")
        out = self.conv32_down(x)
        out = F.max_pool2d(out, 3, 2)
        for block in self.blocks.values():
            out = block(out)
        return self.fc(out.mean(dim=(2, 3)))

    @torch.no_grad()
    def load_tfjs(self, weights: dict[str, np.ndarray]) -> None:
        """Copy face-api's TF.js weights (as read by ``load_tfjs_weights``) into this module.

        Every module parameter must be present with the expected shape, and every weight in
        the file must be used: a mismatch is an error naming the tensor.
        """
        expected: dict[str, tuple[nn.Parameter, callable]] = {}

        def conv_scale(prefix: str, mod: ConvScale) -> None:
            expected[f"{prefix}/conv/filters"] = (mod.conv.weight, lambda a: a.transpose(3, 2, 0, 1))
            expected[f"{prefix}/conv/bias"] = (mod.conv.bias, lambda a: a)
            expected[f"{prefix}/scale/weights"] = (mod.scale_weight, lambda a: a)
            expected[f"{prefix}/scale/biases"] = (mod.scale_bias, lambda a: a)

        conv_scale("conv32_down", self.conv32_down)
        for name, block in self.blocks.items():
            conv_scale(f"{name}/conv1", block.conv1)
            conv_scale(f"{name}/conv2", block.conv2)
        expected["fc"] = (self.fc.weight, lambda a: a.T)  # TF matMul(x, fc[256,128]) -> Linear weight [128,256]

        missing = sorted(set(expected) - set(weights))
        unused = sorted(set(weights) - set(expected))
        if missing or unused:
            raise ValueError(
                f"these weights do not belong to face-api's face_recognition_model: missing "
                f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                f"{unused[:5]}{'...' if len(unused) > 5 else ''}; pass the "
                f"face_recognition_model-weights_manifest.json"
            )
        for key, (param, to_torch) in expected.items():
            arr = np.ascontiguousarray(to_torch(np.asarray(weights[key], dtype=np.float32)))
            if tuple(arr.shape) != tuple(param.shape):
                raise ValueError(
                    f"weight {key!r} has shape {tuple(weights[key].shape)} (-> {arr.shape}), "
                    f"expected {tuple(param.shape)} after transposing to PyTorch layout"
                )
            param.copy_(torch.from_numpy(arr))


def load_faceapi_resnet(manifest: str | Path) -> FaceApiResNet:
    """Build :class:`FaceApiResNet` from face-api's ``face_recognition_model-weights_manifest.json``.

    The ``.bin`` shard must sit beside the manifest. Returns the network in eval mode.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} does not exist; pass face-api's face_recognition_model-weights_manifest.json "
            f"or fetch it with exface.zoo.fetch('faceapi-face-recognition')"
        )
    try:
        weights = load_tfjs_weights(manifest)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{manifest} is not a readable TF.js weights manifest ({type(err).__name__}: {err}); "
            f"the file is truncated or not face-api's face_recognition_model-weights_manifest.json "
            f"(fetch it again with `exface zoo --fetch-missing`)"
        ) from err
    net = FaceApiResNet()
    net.load_tfjs(weights)
    return net.eval()
