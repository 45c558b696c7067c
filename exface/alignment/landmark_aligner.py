"""Landmark-based aligners: a landmark source, a 5-point template, one batched warp.

:class:`LandmarkAligner` is the general form (any registered
:class:`~exface.alignment.landmarks.LandmarkSource`, any template preset);
:class:`ArcFaceAligner` and :class:`DlibChipAligner` fix the template and expose its
parameters. The warp is ``F.grid_sample``: batched, on the images' device, and differentiable
with respect to the images (landmarks are detached unless ``detach_landmarks=False``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from exface.alignment.base import Aligner
from exface.alignment.geometry import float_dtype, warp_affine
from exface.alignment.keypoints import to_keypoints
from exface.alignment.landmarks import FACE_BOXES, LandmarkSource
from exface.alignment.templates import ArcFaceTemplate, DlibChipTemplate, FaceTemplate, make_template
from exface.registry import create_part

__all__ = ["LandmarkAligner", "ArcFaceAligner", "DlibChipAligner", "LFW_DEEPFUNNELED_BOX"]

#: Relative face box of LFW's 250x250 deep-funneled images (``FACE_BOXES["lfw_deepfunneled"]``).
LFW_DEEPFUNNELED_BOX = FACE_BOXES["lfw_deepfunneled"]


def _make_source(source: str | LandmarkSource, source_args: dict[str, Any] | None) -> LandmarkSource:
    if isinstance(source, LandmarkSource):
        if source_args:
            raise ValueError("source_args only apply when source is a registered name")
        return source
    return create_part("landmark_sources", source, **(source_args or {}))


class LandmarkAligner(Aligner):
    """Landmarks from ``source``, warped onto ``template``.

    Args:
        template: a preset name of :data:`exface.alignment.templates.TEMPLATES` (``arcface``,
            ``arcface96``, ``dlib``) or a :class:`~exface.alignment.templates.FaceTemplate`.
        source: a registered landmark source name (``FaceApiLandmarks``, ``DlibLandmarks``,
            ``MTCNNLandmarks``) or an instance.
        source_args: keyword arguments of the source, e.g. ``{"box": "lfw_deepfunneled"}``.
        antialias: pre-shrink with a Gaussian pyramid when crops shrink more than 2x.
        detach_landmarks: block gradients through the landmark estimate (the crop stays
            differentiable with respect to the pixels it samples).
    """

    def __init__(
        self,
        template: str | FaceTemplate = "arcface",
        source: str | LandmarkSource = "FaceApiLandmarks",
        source_args: dict[str, Any] | None = None,
        antialias: bool = True,
        detach_landmarks: bool = True,
    ) -> None:
        super().__init__()
        self.template = make_template(template) if isinstance(template, str) else template
        self.source = _make_source(source, source_args)
        # Fail at construction, not at the first batch, when source and template do not fit.
        probe = torch.zeros(1, 68 if self.source.scheme == "ibug68" else 5, 2)
        to_keypoints(probe, self.source.scheme, self.template.scheme)
        self.output_size = tuple(self.template.output_size)
        self.antialias = bool(antialias)
        self.detach_landmarks = bool(detach_landmarks)

    def keypoints(self, images: Tensor) -> Tensor:
        """The template's 5 keypoints ``[N, 5, 2]`` in image pixels."""
        pts = self.source(images)
        if self.detach_landmarks:
            pts = pts.detach()
        return to_keypoints(pts, self.source.scheme, self.template.scheme)

    def align(self, images: Tensor, keypoints: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(crops, crop_to_image [N, 2, 3])``; pass ``keypoints`` to skip the landmark source."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        kp = self.keypoints(images) if keypoints is None else keypoints
        a = self.template.crop_to_image(kp.to(float_dtype(images)))
        return warp_affine(images, a, self.output_size, self.antialias), a

    def forward(self, images: Tensor) -> Tensor:
        return self.align(images)[0]


class ArcFaceAligner(LandmarkAligner):
    """5-point similarity alignment to the ArcFace template (112x112, +8 px), for insightface-style embedders.

    ``output_size=(112, 96), shift_x=0`` gives the original 96x112 crops.
    """

    def __init__(
        self,
        output_size: tuple[int, int] = (112, 112),
        shift_x: float = 8.0,
        source: str | LandmarkSource = "FaceApiLandmarks",
        source_args: dict[str, Any] | None = None,
        antialias: bool = True,
        detach_landmarks: bool = True,
    ) -> None:
        super().__init__(ArcFaceTemplate(tuple(output_size), shift_x), source, source_args, antialias, detach_landmarks)


class DlibChipAligner(LandmarkAligner):
    """dlib-style 150x150 face chips (dlib ``get_face_chip`` geometry) for dlib/face-api's ResNet.

    Same geometry as ``dlib.get_face_chip(img, shape5, size, padding)``. Default landmarks:
    face-api's 68-point net, reduced to dlib's 5 points (eye corners, nose base). On LFW's
    deep-funneled images pass ``source_args={"box": "lfw_deepfunneled"}``.
    """

    def __init__(
        self,
        size: int = 150,
        padding: float = 0.25,
        source: str | LandmarkSource = "FaceApiLandmarks",
        source_args: dict[str, Any] | None = None,
        antialias: bool = True,
        detach_landmarks: bool = True,
    ) -> None:
        super().__init__(DlibChipTemplate(size, padding), source, source_args, antialias, detach_landmarks)
