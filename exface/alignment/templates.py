"""Alignment templates: where 5 facial keypoints go in the output crop, and how the crop is cut.

- :class:`ArcFaceTemplate`: the 5-point template of the insightface/ArcFace evaluation sets.
  Its points are the 96x112 SphereFace/CASIA template; the 112x112 crops of the ``.bin``
  sets (LFW, CFP-FP, AgeDB, ...) shift it right by 8 px (``shift_x=8``, the default). The
  crop is the least-squares similarity (Umeyama) from the detected points to the template.
- :class:`DlibChipTemplate`: dlib's ``get_face_chip_details`` + ``extract_image_chip`` for a
  5-point shape (the alignment dlib's ResNet face descriptor, and face-api's port of it,
  were trained on: 150x150, padding 0.25). dlib fits the similarity from its mean-face chip
  points (scaled by ``size``, padded by ``padding``) to the image points, then cuts a
  rotated rectangle of ``size * scale`` pixels centred on the image of the chip point
  ``(size/2, size/2)``, whose corner pixels land exactly on the rectangle's corners; that
  makes the effective pixel pitch ``(size * scale - 1) / (size - 1)`` instead of ``scale``
  and shifts the crop half a pixel from the plain similarity. Reproduced here.

Each template maps ``[N, 5, 2]`` keypoints (in its :attr:`~FaceTemplate.scheme`) to the
``[N, 2, 3]`` crop->image matrices :func:`exface.alignment.geometry.warp_affine` samples with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from exface.alignment.geometry import invert_affine, similarity_lstsq

__all__ = ["FaceTemplate", "ArcFaceTemplate", "DlibChipTemplate", "TEMPLATES", "TEMPLATE_MAPS", "make_template"]

#: SphereFace/CASIA 96x112 5-point template (x, y): eye centres, nose tip, mouth corners.
ARCFACE_96x112 = (
    (30.2946, 51.6963),
    (65.5318, 51.5014),
    (48.0252, 71.7366),
    (33.5493, 92.3655),
    (62.7299, 92.2041),
)

#: dlib's mean-face positions of its 5 shape-predictor points (relative to the unpadded chip).
DLIB5_MEAN_FACE = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)


class FaceTemplate(ABC):
    """Where keypoints go in an ``output_size`` crop; see the module docstring."""

    scheme: str
    output_size: tuple[int, int]

    @abstractmethod
    def crop_to_image(self, keypoints: Tensor) -> Tensor:
        """``[N, 5, 2]`` keypoints (image pixels) -> ``[N, 2, 3]`` crop-pixel -> image-pixel maps."""


class ArcFaceTemplate(FaceTemplate):
    """insightface's 5-point similarity alignment.

    ``output_size=(112, 112), shift_x=8`` (default) is the ArcFace 112x112 crop;
    ``output_size=(112, 96), shift_x=0`` the original 96x112 (width 96) crop.
    """

    scheme = "insightface5"

    def __init__(self, output_size: tuple[int, int] = (112, 112), shift_x: float = 8.0) -> None:
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.shift_x = float(shift_x)
        pts = torch.tensor(ARCFACE_96x112, dtype=torch.float64)
        self.points = pts + torch.tensor([self.shift_x, 0.0], dtype=torch.float64)

    def crop_to_image(self, keypoints: Tensor) -> Tensor:
        dst = self.points.to(keypoints.device)
        image_to_crop = similarity_lstsq(keypoints.double(), dst)
        return invert_affine(image_to_crop).to(keypoints.dtype)

    def __repr__(self) -> str:
        return f"ArcFaceTemplate(output_size={self.output_size}, shift_x={self.shift_x})"


class DlibChipTemplate(FaceTemplate):
    """dlib's ``get_face_chip(img, shape5, size, padding)`` geometry."""

    scheme = "dlib5"

    def __init__(self, size: int = 150, padding: float = 0.25) -> None:
        if size < 2 or padding < 0:
            raise ValueError(f"dlib chips need size >= 2 and padding >= 0, got {size}, {padding}")
        self.size = int(size)
        self.padding = float(padding)
        self.output_size = (self.size, self.size)
        mean = torch.tensor(DLIB5_MEAN_FACE, dtype=torch.float64)
        self.points = (self.padding + mean) / (2 * self.padding + 1) * self.size

    def crop_to_image(self, keypoints: Tensor) -> Tensor:
        n = keypoints.shape[0]
        chip = self.points.to(keypoints.device)
        t = similarity_lstsq(chip.unsqueeze(0).expand(n, -1, -1), keypoints.double())
        m = t[:, :, :2]
        scale = m[:, :, 0].norm(dim=1)  # |M (1, 0)|
        rot = m / scale.view(n, 1, 1)
        size = float(self.size)
        centre_chip = torch.tensor([size / 2, size / 2, 1.0], dtype=torch.float64, device=t.device)
        centre = t @ centre_chip  # [N, 2]: image of the chip point (size/2, size/2)
        pitch = (size * scale - 1.0) / (size - 1.0)
        lin = rot * pitch.view(n, 1, 1)
        half = torch.full((2,), (size - 1.0) / 2, dtype=torch.float64, device=t.device)
        trans = centre - lin @ half
        return torch.cat([lin, trans.unsqueeze(-1)], -1).to(keypoints.dtype)

    def __repr__(self) -> str:
        return f"DlibChipTemplate(size={self.size}, padding={self.padding})"


#: Named presets for configs: ``arcface`` (112x112, +8 px), ``arcface96`` (96x112, no shift),
#: ``dlib`` (150x150 chips, padding 0.25).
TEMPLATES = {
    "arcface": lambda: ArcFaceTemplate((112, 112), 8.0),
    "arcface96": lambda: ArcFaceTemplate((112, 96), 0.0),
    "dlib": lambda: DlibChipTemplate(150, 0.25),
}


def make_template(name: str) -> FaceTemplate:
    """The template preset called ``name`` (see :data:`TEMPLATES`)."""
    try:
        return TEMPLATES[name]()
    except KeyError:
        raise ValueError(f"unknown template {name!r}; presets are {', '.join(TEMPLATES)}") from None


#: Fixed similarities between template crops, as ``[2, 3]`` matrices taking a pixel of the
#: *target* template's crop to a pixel of the *source* template's crop, keyed
#: ``(source, target)``. The templates are defined on different points (ArcFace: eye centres,
#: nose tip, mouth corners; dlib: eye corners, nose base), so the map between them depends on
#: face shape; this is its mean over the 807 faces of LFW fold 1, each aligned both ways from
#: the same face-api 68 landmarks (``benchmarks/bin_templates.py`` re-measures it).
TEMPLATE_MAPS: dict[tuple[str, str], tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # The 150-px chip covers ArcFace-crop pixels x 7.1..106.5, y 21.0..120.4: its bottom
    # 12.7 chip rows lie below the 112-px crop. Per-face spread: 2.5 px in translation.
    ("arcface", "dlib"): ((0.66281, -0.00156, 7.13944), (0.00156, 0.66281, 21.0145)),
}
