"""Aligners that need no landmarks: a fixed box (for pre-aligned generator output) and a resize.

FFHQ-style generators (StyleGAN2/3 on FFHQ, DCGAN-DigiFace) produce faces already aligned
by the dataset's own landmark procedure, so every image has its face at the same place; a
fixed crop is then as good as landmark alignment and much cheaper, and it is differentiable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from exface.alignment.base import Aligner
from exface.alignment.geometry import as_float_images

__all__ = ["FixedCropAligner", "ResizeAligner", "TemplateMapAligner", "CROP_BOXES"]

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
    """Float [-1, 1] ``x`` at ``size``; uint8 [0, 255] ``x`` is converted after a resize that
    shrinks it more than 2x (cheaper), before any other (no rounding to uint8)."""
    if x.dtype == torch.uint8 and x.shape[-2] * x.shape[-1] <= 4 * size[0] * size[1]:
        x = as_float_images(x)
    if tuple(x.shape[-2:]) != size:
        shrinking = x.shape[-2] > size[0] or x.shape[-1] > size[1]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias and shrinking)
    return as_float_images(x)


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
            images = F.pad(as_float_images(images) + 1.0, pad) - 1.0  # black outside the image
            x0, x1, y0, y1 = x0 + pad[0], x1 + pad[0], y0 + pad[2], y1 + pad[2]
        return _resize(images[..., y0:y1, x0:x1], self.output_size, self.antialias)


class TemplateMapAligner(Aligner):
    """Re-cut crops made for one alignment template into another template's crop.

    Pre-aligned sets (insightface's ``.bin`` files: 112x112 ArcFace-template crops) feed
    embedders trained on another template (dlib/face-api's 150x150 chips) through the fixed
    similarity between the two templates (:data:`~exface.alignment.templates.TEMPLATE_MAPS`):
    one warp, no landmarks. Input images of another size than the source template's crop are
    taken as that crop scaled. Where the target crop reaches beyond the source crop the
    pixels are lost: they are black (for ArcFace -> dlib chip, a strip along the chip's
    bottom edge, below the chin, and its lower corners).

    Args:
        source: the template the input crops were made with (a key of ``TEMPLATE_MAPS``).
        target: the template of the output crops.
        antialias: prefilter when the warp shrinks more than 2x.
    """

    def __init__(self, source: str = "arcface", target: str = "dlib", antialias: bool = True) -> None:
        super().__init__()
        from exface.alignment.templates import TEMPLATE_MAPS, make_template

        if (source, target) not in TEMPLATE_MAPS:
            known = ", ".join(f"{s}->{t}" for s, t in TEMPLATE_MAPS)
            raise ValueError(f"no template map from {source!r} to {target!r}; known maps: {known}")
        self.source_size = tuple(make_template(source).output_size)
        self.output_size = tuple(make_template(target).output_size)
        self.mapping = f"{source}->{target}"
        self.register_buffer("matrix", torch.tensor(TEMPLATE_MAPS[(source, target)], dtype=torch.float32), persistent=False)
        self.antialias = bool(antialias)

    def forward(self, images: Tensor) -> Tensor:
        from exface.alignment.geometry import warp_affine

        h, w = images.shape[-2:]
        sh, sw = self.source_size
        # Crop pixel centres scale about the pixel-edge origin: x' = (x + 0.5) * w / sw - 0.5.
        scale = torch.tensor([w / sw, h / sh], dtype=self.matrix.dtype, device=self.matrix.device)
        a = self.matrix.clone()
        a[:, :2] *= scale.view(2, 1)
        a[:, 2] = (a[:, 2] + 0.5) * scale - 0.5
        return warp_affine(images, a.expand(images.shape[0], 2, 3), self.output_size, self.antialias)
