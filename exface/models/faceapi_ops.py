"""Building blocks shared by the face-api TF.js ports: TF padding, separable convs, preprocessing.

Three TensorFlow conventions matter for bit-level agreement with TF.js and are made explicit
here rather than approximated with PyTorch defaults:

- ``'same'`` padding pads ``max((ceil(n/s) - 1) * s + k - n, 0)`` pixels in total and puts the
  odd pixel at the bottom/right. With stride 2 on an even input that is ``(0, 1)``, which
  ``nn.Conv2d(padding=1)`` would get wrong by a pixel.
- ``separableConv2d`` is a depthwise 3x3 (HWC1 filter, no bias) followed by a pointwise 1x1
  (11CO filter) and one bias.
- ``resizeBilinear(alignCorners=false, halfPixelCenters=false)`` (what face-api's
  ``toBatchTensor`` calls) samples output pixel ``i`` at source index ``i * in / out``, not at
  the half-pixel centres PyTorch's ``interpolate`` uses.

face-api's input pipeline (``NetInput.toBatchTensor(112, true)`` then ``normalize``) is
:func:`faceapi_input`: images on the [0, 255] scale are zero-padded to a centred square,
resized to 112x112 with the legacy bilinear rule, and mapped to ``(x - mean_rgb) / 255``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FACEAPI_MEAN_RGB",
    "FACEAPI_INPUT_SIZE",
    "tf_same_pad",
    "TFConv2d",
    "SeparableConv2d",
    "tf_resize_bilinear",
    "pad_to_square",
    "faceapi_input",
    "WeightReader",
    "resolve_manifest",
    "load_faceapi_weights",
]

#: face-api's per-channel RGB mean on the [0, 255] scale (``normalize(x, meanRgb) / 255``).
FACEAPI_MEAN_RGB = (122.782, 117.001, 104.298)
#: Side of the square input all three attribute nets run at.
FACEAPI_INPUT_SIZE = 112


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def tf_same_pad(x: Tensor, kernel: int, stride: int, value: float = 0.0) -> Tensor:
    """Pad an NCHW tensor the way TensorFlow's ``padding='same'`` does (extra pixel bottom/right)."""
    top, bottom = _same_pads(x.shape[-2], kernel, stride)
    left, right = _same_pads(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class TFConv2d(nn.Module):
    """``tf.conv2d(x, filters, stride, 'same') + bias`` (dense, square kernel)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(cin, cout, kernel, stride, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(tf_same_pad(x, self.kernel, self.stride))

    def load_tf(self, w: "WeightReader", prefix: str) -> None:
        """Copy ``{prefix}/filters`` (HWIO) and ``{prefix}/bias``."""
        w.copy(self.conv.weight, f"{prefix}/filters", (3, 2, 0, 1))
        w.copy(self.conv.bias, f"{prefix}/bias")


class SeparableConv2d(nn.Module):
    """``tf.separableConv2d(x, depthwise, pointwise, stride, 'same') + bias`` with 3x3 depthwise."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.depthwise = nn.Conv2d(cin, cin, 3, stride, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(tf_same_pad(x, 3, self.stride)))

    def load_tf(self, w: "WeightReader", prefix: str) -> None:
        """Copy ``depthwise_filter`` (3,3,C,1), ``pointwise_filter`` (1,1,C,O) and ``bias``."""
        w.copy(self.depthwise.weight, f"{prefix}/depthwise_filter", (2, 3, 0, 1))
        w.copy(self.pointwise.weight, f"{prefix}/pointwise_filter", (3, 2, 0, 1))
        w.copy(self.pointwise.bias, f"{prefix}/bias")


class WeightReader:
    """Copies named TF.js arrays into parameters and checks that every array was used once.

    ``copy`` names the weight and the tensor it fills, so a manifest of another model
    (missing names, other shapes) fails with a message naming the weight instead of
    producing a garbled network.
    """

    def __init__(self, weights: dict[str, np.ndarray], source: str) -> None:
        self.weights = weights
        self.source = source
        self.used: set[str] = set()

    def copy(self, param: Tensor, name: str, perm: tuple[int, ...] | None = None) -> None:
        if name not in self.weights:
            raise KeyError(
                f"{self.source} has no weight {name!r}; is it the manifest of another face-api "
                f"model? (it holds {len(self.weights)} weights, e.g. {sorted(self.weights)[:3]})"
            )
        arr = self.weights[name]
        if perm is not None:
            arr = arr.transpose(perm)
        if tuple(arr.shape) != tuple(param.shape):
            raise ValueError(
                f"{self.source}: weight {name!r} has shape {arr.shape} after layout conversion, "
                f"the network expects {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
        self.used.add(name)

    def check_all_used(self) -> None:
        left = sorted(set(self.weights) - self.used)
        if left:
            raise ValueError(
                f"{self.source} holds {len(left)} weights the network does not use "
                f"(e.g. {left[:3]}); it belongs to another model"
            )


def _legacy_bilinear_matrix(n_in: int, n_out: int, device, dtype) -> Tensor:
    """``[n_out, n_in]`` interpolation weights of TF's resizeBilinear (no half-pixel centres)."""
    scale = n_in / n_out
    src = torch.arange(n_out, dtype=torch.float64) * scale
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = torch.minimum(src.ceil().long(), torch.tensor(n_in - 1))
    frac = src - src.floor()
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(device=device, dtype=dtype)


def tf_resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """TF's ``resizeBilinear(x, size, alignCorners=false, halfPixelCenters=false)`` on NCHW.

    Separable and written as two matrix products, so it is exact, differentiable and batched.
    """
    h, w = x.shape[-2:]
    oh, ow = size
    if (h, w) == (oh, ow):
        return x
    my = _legacy_bilinear_matrix(h, oh, x.device, x.dtype)
    mx = _legacy_bilinear_matrix(w, ow, x.device, x.dtype)
    return torch.einsum("yh,nchw,xw->ncyx", my, x, mx)


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def pad_to_square(x: Tensor, value: float = 0.0) -> Tensor:
    """face-api's ``padToSquare(x, isCenterImage=true)`` on NCHW.

    The shorter side gets ``round(diff / 2)`` pixels appended (bottom/right) and the rest
    prepended, exactly as face-api splits an odd difference (JS ``Math.round``).
    """
    h, w = x.shape[-2:]
    if h == w:
        return x
    diff = abs(h - w)
    after = _round_half_up(diff * 0.5)
    before = diff - after
    if h > w:
        return F.pad(x, (before, after, 0, 0), value=value)
    return F.pad(x, (0, 0, before, after), value=value)


def faceapi_input(images: Tensor, size: int = FACEAPI_INPUT_SIZE) -> Tensor:
    """[-1, 1] RGB NCHW images of any size -> the normalized 112x112 batch face-api's nets take.

    Steps (face-api ``toBatchTensor(112, true)`` + ``normalize``): back to [0, 255], zero-pad
    to a centred square, legacy bilinear resize, subtract the mean RGB and divide by 255.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected RGB images [N, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}"
        )
    x = (images.float() + 1.0) * 127.5
    x = tf_resize_bilinear(pad_to_square(x), (size, size))
    mean = torch.tensor(FACEAPI_MEAN_RGB, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / 255.0


def resolve_manifest(manifest: str | Path | None, zoo_name: str) -> Path:
    """``manifest`` as a Path, or the model zoo's copy of ``zoo_name`` when it is None."""
    if manifest is not None:
        path = Path(manifest)
        if not path.is_file():
            raise FileNotFoundError(
                f"no TF.js weights manifest at {path}; pass the path of a "
                f"'*-weights_manifest.json' (its .bin shard beside it) or leave it out to use "
                f"the model zoo's {zoo_name!r}"
            )
        return path
    try:
        from exface.zoo import fetch
    except ImportError as err:  # pragma: no cover - the zoo ships with exface
        raise RuntimeError(
            f"exface.zoo is unavailable ({err}); pass the manifest path of {zoo_name!r} explicitly"
        ) from err
    return Path(fetch(zoo_name))


def load_faceapi_weights(module: nn.Module, manifest: str | Path | None, zoo_name: str) -> nn.Module:
    """Fill ``module`` (which has ``load_tf(WeightReader)``) from a face-api manifest; eval mode."""
    from exface.models.tfjs import load_tfjs_weights

    path = resolve_manifest(manifest, zoo_name)
    reader = WeightReader(load_tfjs_weights(path), str(path))
    module.load_tf(reader)
    reader.check_all_used()
    return module.eval()
