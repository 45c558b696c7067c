"""Pure-PyTorch resampling and activation ops used by the StyleGAN2/3 networks.

NVIDIA ships these as custom CUDA kernels (``upfirdn2d``, ``bias_act``,
``filtered_lrelu``) that are compiled at first use. exface computes the same linear
algebra with ordinary ``torch.nn.functional`` calls so that a pickle runs anywhere
torch runs (CPU, CUDA, MPS) with no compiler. The semantics follow the published
definitions of the ops:

- ``upfirdn2d``: upsample by zero insertion, pad (negative = crop), convolve with a
  FIR filter, keep every ``down``-th sample.
- ``bias_act``: add a per-channel bias, apply an activation, scale by a gain, clamp.
- ``filtered_lrelu``: bias, upsample + low-pass filter, gain, leaky ReLU, clamp,
  low-pass filter + downsample.
- ``conv2d_resample``: a convolution whose input is upsampled (or output downsampled)
  by a FIR filter, padding applied once with respect to the upsampled image.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
    "bias_act",
    "filtered_lrelu",
    "conv2d_resample",
]

# name -> (function(x, alpha), default alpha, default gain)
ACTIVATIONS = {
    "linear": (lambda x, a: x, 0.0, 1.0),
    "relu": (lambda x, a: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": (lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2)),
    "tanh": (lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, a: torch.sigmoid(x), 0.0, 1.0),
    "elu": (lambda x, a: F.elu(x), 0.0, 1.0),
    "selu": (lambda x, a: F.selu(x), 0.0, 1.0),
    "softplus": (lambda x, a: F.softplus(x), 0.0, 1.0),
    "swish": (lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def _pad4(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """``padding`` as (x0, x1, y0, y1); an int or an (x, y) pair applies to both sides."""
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        return p, p, p, p
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding}")
    return padding[0], padding[1], padding[2], padding[3]


def _filter_size(f: Tensor | None) -> tuple[int, int]:
    """(width, height) of a separable ``[taps]`` or full ``[h, w]`` filter; (1, 1) for None."""
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def setup_filter(
    f: Sequence[float] | np.ndarray | Tensor | None,
    normalize: bool = True,
    flip: bool = False,
    gain: float = 1.0,
    separable: bool | None = None,
) -> Tensor:
    """A float32 FIR filter for :func:`upfirdn2d` from a list of taps (or a 2-D kernel).

    A short 1-D list (fewer than 8 taps) becomes its 2-D outer product, as StyleGAN2
    stores its ``[1, 3, 3, 1]`` resampling filter; longer ones stay separable. The
    filter is normalised to unit DC gain unless ``normalize=False``.
    """
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32).clone()
    if f.ndim == 0:
        f = f.reshape(1)
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"a FIR filter is 1-D taps or a 2-D kernel, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip:
        f = f.flip(list(range(f.ndim)))
    return f * (gain ** (f.ndim / 2))


def upfirdn2d(
    x: Tensor,
    f: Tensor | None,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> Tensor:
    """Upsample (zero insertion), pad/crop, FIR-filter and downsample every channel of ``x``.

    ``x`` is ``[N, C, H, W]``; ``f`` a separable ``[taps]`` or full ``[h, w]`` float32
    filter (None = identity); ``padding`` is with respect to the upsampled image and
    may be negative (cropping). ``flip_filter=False`` is a true convolution.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects [N, C, H, W], got shape {tuple(x.shape)}")
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _pad4(padding)
    n, c, h, w = x.shape
    if f is not None and (upx > 1 or upy > 1):
        return _upfirdn2d_polyphase(x, f, (upx, upy), (downx, downy), (px0, px1, py0, py1), flip_filter, gain)

    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    if max(px0, px1, py0, py1) > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if min(px0, px1, py0, py1) < 0:
        x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]

    if f is None:
        if gain != 1:
            x = x * gain
        return x[:, :, ::downy, ::downx]

    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:  # conv2d correlates; flipping the taps makes it a convolution
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].expand(c, 1, *f.shape)
        return F.conv2d(x, weight, stride=(downy, downx), groups=c)
    taps = f.shape[0]
    x = F.conv2d(x, f.reshape(1, 1, 1, taps).expand(c, 1, 1, taps), stride=(1, downx), groups=c)
    x = F.conv2d(x, f.reshape(1, 1, taps, 1).expand(c, 1, taps, 1), stride=(downy, 1), groups=c)
    return x


def _upfirdn2d_polyphase(x: Tensor, f: Tensor, up: tuple[int, int], down: tuple[int, int],
                         pad: tuple[int, int, int, int], flip_filter: bool, gain: float) -> Tensor:
    """:func:`upfirdn2d` for ``up > 1`` without multiplying the inserted zeros.

    A transposed convolution with stride ``up`` is zero insertion followed by a full
    convolution, i.e. padding ``(k - 1, k - up)`` around the zero-stuffed image; the
    rest of the requested padding (or cropping, if negative) is applied afterwards.
    """
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    c = x.shape[1]
    k = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if flip_filter:  # conv_transpose2d scatters, i.e. convolves; correlation needs the flip
        k = k.flip(list(range(k.ndim)))
    if k.ndim == 2:
        kh, kw = k.shape
        x = F.conv_transpose2d(x, k[None, None].expand(c, 1, kh, kw), stride=(upy, upx), groups=c)
        x = F.pad(x, [px0 - (kw - 1), px1 - (kw - upx), py0 - (kh - 1), py1 - (kh - upy)])
    else:
        taps = k.shape[0]
        x = F.conv_transpose2d(x, k.reshape(1, 1, 1, taps).expand(c, 1, 1, taps), stride=(1, upx), groups=c)
        x = F.conv_transpose2d(x, k.reshape(1, 1, taps, 1).expand(c, 1, taps, 1), stride=(upy, 1), groups=c)
        x = F.pad(x, [px0 - (taps - 1), px1 - (taps - upx), py0 - (taps - 1), py1 - (taps - upy)])
    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    return x


def upsample2d(x: Tensor, f: Tensor | None, up: int = 2, flip_filter: bool = False, gain: float = 1.0) -> Tensor:
    """Upsample by ``up`` with filter ``f`` so that the output is exactly ``up`` times larger."""
    fw, fh = _filter_size(f)
    pad = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * up * up)


def bias_act(
    x: Tensor,
    b: Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> Tensor:
    """``clamp(act(x + b) * gain)``: the bias is broadcast along ``dim``."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
    func, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = def_alpha if alpha is None else float(alpha)
    gain = def_gain if gain is None else float(gain)
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    x = func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def filtered_lrelu(
    x: Tensor,
    fu: Tensor | None = None,
    fd: Tensor | None = None,
    b: Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    gain: float = math.sqrt(2),
    slope: float = 0.2,
    clamp: float | None = None,
    flip_filter: bool = False,
) -> Tensor:
    """Alias-free leaky ReLU of StyleGAN3: bias, upsample with ``fu``, gain, leaky ReLU,
    clamp, filter with ``fd`` and downsample. ``padding`` is applied to the upsampled image.
    """
    if b is not None:
        x = x + b.reshape(1, -1, 1, 1)
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up * up, flip_filter=flip_filter)
    x = F.leaky_relu(x, slope) if slope != 1 else x
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return upfirdn2d(x, fd, down=down, flip_filter=flip_filter)


def _conv(x: Tensor, w: Tensor, stride: int = 1, padding=0, groups: int = 1, flip: bool = False) -> Tensor:
    if flip and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: Tensor,
    w: Tensor,
    f: Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> Tensor:
    """2-D convolution of ``x`` with ``w`` with optional FIR up/downsampling by ``f``.

    Defined as: ``upfirdn2d(x, f, up, pad)`` (when ``up > 1``), then a valid convolution
    with ``w`` (a correlation when ``flip_weight``), then ``upfirdn2d(f, down)`` (when
    ``down > 1``), where ``pad`` is ``padding`` plus what keeps the output exactly
    ``up``/``down`` times the input. Upsampling runs as a strided transposed convolution
    followed by the filter, which computes the same thing in a quarter of the work.
    """
    out_channels, in_per_group, kh, kw = (int(s) for s in w.shape)
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _pad4(padding)
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    if up == 1 and down == 1:
        if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
            return _conv(x, w, padding=(py0, px0), groups=groups, flip=not flip_weight)
        x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
        return _conv(x, w, groups=groups, flip=not flip_weight)

    if up > 1 and kw == 1 and kh == 1:
        # A 1x1 convolution commutes with the upsampling: run it at the low resolution.
        x = _conv(x, w, groups=groups, flip=not flip_weight)
        x = upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up, flip_filter=flip_filter)
    elif up > 1:
        # conv_transpose2d with stride `up` = zero insertion + a full convolution with the
        # kernel; that full convolution already pads (k-1) before and (k-up) after the
        # zero-stuffed image, so only the rest of the padding goes to the filter.
        wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        if flip_weight:  # correlation with w == convolution with flipped w
            wt = wt.flip([2, 3])
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        cx, cy = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = F.conv_transpose2d(x, wt, stride=up, padding=(cy, cx), groups=groups)
        x = upfirdn2d(x, f, padding=[px0 + cx, px1 + cx, py0 + cy, py1 + cy], gain=up * up, flip_filter=flip_filter)
    else:
        # Downsampling: filtering and convolving commute, so filter first and let the
        # convolution's stride do the subsampling.
        if kw == 1 and kh == 1:
            x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
            return _conv(x, w, groups=groups, flip=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip=not flip_weight)

    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x
