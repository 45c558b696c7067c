"""Batched, differentiable 2-D geometry for face alignment: similarity fits and affine warps.

Conventions used by every aligner in this package:

- Points are ``(x, y)`` pixel coordinates with pixel *centres* at integers (OpenCV's and
  dlib's convention): the top-left pixel spans [-0.5, 0.5] and its centre is (0, 0).
- A warp is described by ``[N, 2, 3]`` matrices ``A`` mapping *output* (crop) pixel
  coordinates to *input* image coordinates, ``(x, y) = A @ (u, v, 1)``; the crop is sampled
  bilinearly at those points with ``F.grid_sample`` (gradients flow to the images and, through
  ``A``, to the landmarks). Samples outside the image are black (-1 in [-1, 1] units), like
  OpenCV's ``warpAffine`` default border and dlib's chip extraction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "similarity_lstsq",
    "invert_affine",
    "apply_affine",
    "warp_affine",
    "gaussian_pyramid_down",
]


def similarity_lstsq(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares similarity transform (Umeyama 1991, no reflection) taking ``src`` to ``dst``.

    ``src``: ``[N, K, 2]``; ``dst``: ``[N, K, 2]`` or ``[K, 2]``. Returns ``[N, 2, 3]`` with
    ``dst ~ A @ (src, 1)`` minimizing the summed squared error over scale, rotation and
    translation. In 2-D this is the linear least-squares problem for ``M = [[a, -b], [b, a]]``,
    whose closed form (centre both sets; ``a = <s, d> / |s|^2``, ``b = <s x d> / |s|^2``) equals
    Umeyama's SVD solution without its reflection case, and is differentiable everywhere the
    source points are not all identical.
    """
    if src.dim() != 3 or src.shape[-1] != 2:
        raise ValueError(f"src points must be [N, K, 2], got {tuple(src.shape)}")
    if dst.dim() == 2:
        dst = dst.unsqueeze(0).expand(src.shape[0], -1, -1)
    if dst.shape != src.shape:
        raise ValueError(f"src {tuple(src.shape)} and dst {tuple(dst.shape)} must have the same points")
    if src.shape[1] < 2:
        raise ValueError("a similarity transform needs at least 2 point pairs")
    src64, dst64 = src.double(), dst.double()
    ms, md = src64.mean(1, keepdim=True), dst64.mean(1, keepdim=True)
    s, d = src64 - ms, dst64 - md
    norm = (s * s).sum((1, 2)).clamp_min(1e-12)
    a = (s * d).sum((1, 2)) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(1) / norm
    m = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # [N, 2, 2]
    t = md.squeeze(1) - (m @ ms.squeeze(1).unsqueeze(-1)).squeeze(-1)
    return torch.cat([m, t.unsqueeze(-1)], -1).to(src.dtype)


def invert_affine(a: Tensor) -> Tensor:
    """Inverse of ``[N, 2, 3]`` affine maps."""
    m, t = a[..., :2], a[..., 2:]
    mi = torch.linalg.inv(m)
    return torch.cat([mi, -mi @ t], -1)


def apply_affine(a: Tensor, pts: Tensor) -> Tensor:
    """``[N, 2, 3]`` maps applied to ``[N, K, 2]`` points."""
    return pts @ a[..., :2].transpose(-1, -2) + a[..., 2].unsqueeze(1)


def gaussian_pyramid_down(x: Tensor) -> Tensor:
    """One octave down: separable ``[1, 4, 6, 4, 1] / 16`` blur, keep even pixels.

    Output pixel ``i`` sits at input pixel ``2 i`` (so coordinates halve exactly). Used before
    warps that shrink more than 2x, where plain bilinear sampling would alias (dlib's chip
    extraction uses the same 5-tap filter in its image pyramid for the same reason).
    """
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device, dtype=x.dtype) / 16.0
    c = x.shape[1]
    pad = F.pad(x, (2, 2, 2, 2), mode="replicate")
    pad = F.conv2d(pad, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    pad = F.conv2d(pad, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return pad[..., ::2, ::2]


def warp_affine(
    images: Tensor,
    crop_to_image: Tensor,
    output_size: tuple[int, int],
    antialias: bool = True,
) -> Tensor:
    """Sample ``[N, C, h, w]`` crops from ``[N, C, H, W]`` images in [-1, 1].

    ``crop_to_image``: ``[N, 2, 3]``, crop pixel -> image pixel (see the module docstring).
    ``output_size``: ``(h, w)``. With ``antialias``, when every crop of the batch shrinks its
    source by more than 2x the images first go down a Gaussian pyramid (one octave per
    factor of 2 beyond the first), so large generator outputs do not alias.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    n, _, h_in, w_in = images.shape
    if crop_to_image.shape != (n, 2, 3):
        raise ValueError(f"crop_to_image must be [{n}, 2, 3], got {tuple(crop_to_image.shape)}")
    a = crop_to_image.to(images.dtype)
    if antialias:
        scale = a[:, :, :2].det().abs().sqrt().min().item()
        levels = max(0, math.ceil(math.log2(scale)) - 1) if scale > 2 else 0
        for _ in range(levels):
            images = gaussian_pyramid_down(images)
            a = a / 2.0
        h_in, w_in = images.shape[-2:]
    h, w = output_size
    v, u = torch.meshgrid(
        torch.arange(h, device=images.device, dtype=images.dtype),
        torch.arange(w, device=images.device, dtype=images.dtype),
        indexing="ij",
    )
    uv1 = torch.stack([u, v, torch.ones_like(u)], -1).view(1, h * w, 3)
    xy = uv1 @ a.transpose(1, 2)  # [N, h*w, 2]
    gx = (2.0 * xy[..., 0] + 1.0) / w_in - 1.0
    gy = (2.0 * xy[..., 1] + 1.0) / h_in - 1.0
    grid = torch.stack([gx, gy], -1).view(n, h, w, 2)
    out = F.grid_sample(images + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out - 1.0
