"""Aligners that need no landmarks: a fixed box (for pre-aligned generator output) and a resize.

FFHQ-style generators (StyleGAN2/3 on FFHQ, DCGAN-DigiFace) produce faces already aligned
by the dataset's own landmark procedure, so every image has its face at the same place; a
fixed crop is then as good as landmark alignment and much cheaper, and it is differentiable.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from exface.alignment.base import Aligner

__all__ = ["FixedCropAligner", "ResizeAligner", "CROP_BOXES"]

#: Named relative boxes ``(x0, y0, x1, y1)``. ``ffhq_arcface``: the crop pSp/e4e's identity
#: loss takes from 256x256 FFHQ-aligned images (rows 35:223, columns 32:220) before resizing
#: to ArcFace's 112x112; ``full``: the whole image.
CROP_BOXES = {
    "full": (0.0, 0.0, 1.0, 1.0),
    "ffhq_arcface": (32 / 256, 35 / 256, 220 / 256, 223 / 256),
}


def _check_size(output_size: tuple[int, int]) -> tuple[int, int]:
    if len(output_size) != 2 or min(output_size) < 1:
        raise ValueError(f"output_size must be (height, width) > 0, got {output_size}")
    return int(output_size[0]), int(output_size[1])


def _resize(x: Tensor, size: tuple[int, int], antialias: bool) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    shrinking = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias and shrinking)


class ResizeAligner(Aligner):
    """Resize the whole image to ``output_size`` (bilinear, antialiased when shrinking).

    For generators whose output is already the crop the embedder expects.
    """

    def __init__(self, output_size: tuple[int, int] = (112, 112), antialias: bool = True) -> None:
        super().__init__()
        self.output_size = _check_size(output_size)
        self.antialias = bool(antialias)

    def forward(self, images: Tensor) -> Tensor:
        return _resize(images, self.output_size, self.antialias)


class FixedCropAligner(Aligner):
    """Cut the same relative box from every image, then resize it to ``output_size``.

    Args:
        box: relative ``(x0, y0, x1, y1)`` in fractions of width/height, or a name in
            :data:`CROP_BOXES`. Parts of the box outside the image are black.
        output_size: ``(height, width)`` of the crops.
        antialias: antialias the resize when it shrinks.
    """

    def __init__(
        self,
        box: tuple[float, float, float, float] | str = "ffhq_arcface",
        output_size: tuple[int, int] = (112, 112),
        antialias: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(box, str):
            if box not in CROP_BOXES:
                raise ValueError(f"unknown crop box {box!r}; named boxes are {', '.join(CROP_BOXES)}")
            box = CROP_BOXES[box]
        box = tuple(float(v) for v in box)
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"box must be relative (x0, y0, x1, y1) with x0 < x1, y0 < y1, got {box}")
        self.box = box
        self.output_size = _check_size(output_size)
        self.antialias = bool(antialias)

    def pixel_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The box in whole pixels ``(x0, y0, x1, y1)`` (end-exclusive) for an image size."""
        x0, y0, x1, y1 = self.box
        return (
            math.floor(x0 * width + 0.5),
            math.floor(y0 * height + 0.5),
            math.floor(x1 * width + 0.5),
            math.floor(y1 * height + 0.5),
        )

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        x0, y0, x1, y1 = self.pixel_box(h, w)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {self.box} is empty on {h}x{w} images")
        pad = (max(0, -x0), max(0, x1 - w), max(0, -y0), max(0, y1 - h))
        if any(pad):
            images = F.pad(images + 1.0, pad) - 1.0  # black outside the image
            x0, x1, y0, y1 = x0 + pad[0], x1 + pad[0], y0 + pad[2], y1 + pad[2]
        return _resize(images[..., y0:y1, x0:x1], self.output_size, self.antialias)
