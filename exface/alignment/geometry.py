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
    "as_float_images",
    "float_dtype",
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


def float_dtype(images: Tensor) -> torch.dtype:
    """The float dtype coordinates and crops of ``images`` use: theirs, float32 for uint8."""
    return images.dtype if images.is_floating_point() else torch.float32


def as_float_images(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` images -> float ``[-1, 1]``; float images are returned unchanged."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images


def _grid(a: Tensor, output_size: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """Image pixel coordinates ``[N, h, w, 2]`` of every crop pixel centre."""
    h, w = output_size
    v, u = torch.meshgrid(
        torch.arange(h, device=a.device, dtype=dtype),
        torch.arange(w, device=a.device, dtype=dtype),
        indexing="ij",
    )
    uv1 = torch.stack([u, v, torch.ones_like(u)], -1).view(1, h * w, 3)
    return (uv1 @ a.to(dtype).transpose(1, 2)).view(-1, h, w, 2)


def _sample(images: Tensor, xy: Tensor, x0: int = 0, y0: int = 0, size: tuple[int, int] | None = None) -> Tensor:
    """Bilinear samples of float ``images`` at pixel coordinates ``xy`` ``[N, h, w, 2]`` given in
    the frame of a larger image whose ``(x0, y0)`` pixel is ``images``' top-left one, and whose
    region ``size`` (h, w) ``images`` was resized from (default: ``images``' own size). Black
    (-1) outside."""
    h_in, w_in = size if size is not None else images.shape[-2:]
    gx = (2.0 * (xy[..., 0] - x0) + 1.0) / w_in - 1.0
    gy = (2.0 * (xy[..., 1] - y0) + 1.0) / h_in - 1.0
    out = F.grid_sample(images + 1.0, torch.stack([gx, gy], -1).to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out - 1.0


def warp_affine(
    images: Tensor,
    crop_to_image: Tensor,
    output_size: tuple[int, int],
    antialias: bool = True,
) -> Tensor:
    """Sample ``[N, C, h, w]`` crops in [-1, 1] from ``[N, C, H, W]`` images.

    ``images``: float in [-1, 1], or uint8 in [0, 255] (photos as decoded: only the pixels a
    crop needs are converted to float). ``crop_to_image``: ``[N, 2, 3]``, crop pixel -> image
    pixel (see the module docstring). ``output_size``: ``(h, w)``.

    With ``antialias``, a crop that shrinks its source by more than 2x is taken from a
    prefiltered copy of only the region it covers (its bounding box plus the filter's
    margin), shrunk once, with an antialiased bilinear (triangle) filter, to the output's
    scale; the crop is then sampled bilinearly from that copy. Cost therefore follows the
    face's size, not the photo's: a face in a 12-Mpx photo costs what it costs in a 250-px
    one. (dlib and earlier exface versions go down a Gaussian pyramid of the *whole* image,
    one octave per factor of 2: similar filtering, but 2 s per 12-Mpx photo.) Without
    antialias, or when no crop shrinks more than 2x, float batches are sampled in one call.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    n, _, h_in, w_in = images.shape
    if crop_to_image.shape != (n, 2, 3):
        raise ValueError(f"crop_to_image must be [{n}, 2, 3], got {tuple(crop_to_image.shape)}")
    dtype = float_dtype(images)
    a = crop_to_image.to(dtype)
    xy = _grid(a, output_size, dtype)
    scales = a[:, :, :2].det().abs().sqrt() if antialias else torch.ones(n, dtype=dtype)
    if images.is_floating_point() and bool((scales <= 2).all()):
        return _sample(images, xy)
    out = []
    for i in range(n):
        pts = xy[i].reshape(-1, 2)
        s = float(scales[i])
        margin = math.ceil(s) + 2 if s > 2 else 2
        x0 = max(0, math.floor(float(pts[:, 0].min())) - margin)
        y0 = max(0, math.floor(float(pts[:, 1].min())) - margin)
        x1 = min(w_in, math.ceil(float(pts[:, 0].max())) + margin + 1)
        y1 = min(h_in, math.ceil(float(pts[:, 1].max())) + margin + 1)
        if x1 <= x0 or y1 <= y0:  # the crop lies wholly outside the image
            out.append(torch.full((1, images.shape[1], *output_size), -1.0, dtype=dtype, device=images.device))
            continue
        region = images[i : i + 1, :, y0:y1, x0:x1]
        rh, rw = y1 - y0, x1 - x0
        if s > 2:
            size = (max(1, round(rh / s)), max(1, round(rw / s)))
            src = region if region.dtype in (torch.uint8, torch.float32) else region.float()
            src = F.interpolate(src, size=size, mode="bilinear", align_corners=False, antialias=True)
            if region.dtype == torch.uint8:
                src = src.float()
                src = src / 127.5 - 1.0
            region = src.to(dtype)
        out.append(_sample(as_float_images(region).to(dtype), xy[i : i + 1], x0, y0, (rh, rw)))
    return torch.cat(out, 0)
