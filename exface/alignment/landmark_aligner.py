"""Landmark-based aligners: a landmark source, a 5-point template, one batched warp.

:class:`LandmarkAligner` is the general form (any registered
:class:`~exface.alignment.landmarks.LandmarkSource`, any template preset);
:class:`ArcFaceAligner` and :class:`DlibChipAligner` fix the template and expose its
parameters. The warp is ``F.grid_sample``: batched, on the images' device, and differentiable
with respect to the images (landmarks are detached unless ``detach_landmarks=False``).

With a ``detector`` (a registered :mod:`exface.detectors` part, e.g. ``SSDMobileNetV1``) the
landmark source starts from the face the detector found (one per image, picked by
``choose``) instead of its fixed box: what photos with the face anywhere need. Images in
which the detector finds no face fall back to the source's box, and are flagged in
:attr:`LandmarkAligner.last_found` so callers (``exface benchmark``) can name them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from exface.alignment.base import Aligner
from exface.alignment.faces import FaceTally, detect_faces
from exface.alignment.geometry import float_dtype, warp_affine
from exface.alignment.keypoints import to_keypoints
from exface.alignment.landmarks import FACE_BOXES, LandmarkSource
from exface.alignment.templates import ArcFaceTemplate, DlibChipTemplate, FaceTemplate, make_template
from exface.detectors.base import FaceChoice, FaceDetector, select_faces
from exface.registry import create_part

__all__ = ["LandmarkAligner", "ArcFaceAligner", "DlibChipAligner", "LFW_DEEPFUNNELED_BOX"]

#: Relative face box of LFW's 250x250 deep-funneled images (``FACE_BOXES["lfw_deepfunneled"]``).
LFW_DEEPFUNNELED_BOX = FACE_BOXES["lfw_deepfunneled"]


def _make_detector(detector: str | FaceDetector | None, detector_args: dict[str, Any] | None) -> FaceDetector | None:
    if detector is None or isinstance(detector, FaceDetector):
        if detector_args:
            raise ValueError("detector_args only apply when detector is a registered name")
        return detector
    return create_part("detectors", detector, **(detector_args or {}))


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
        antialias: prefilter the region a crop covers when it shrinks more than 2x (see warp_affine).
        detach_landmarks: block gradients through the landmark estimate (the crop stays
            differentiable with respect to the pixels it samples).
        detector: a registered face detector name (``SSDMobileNetV1``) or instance; None
            (default) starts the landmark source from its own box.
        detector_args: keyword arguments of the detector, e.g. ``{"min_confidence": 0.3}``.
        choose: which face when there are several: ``largest``, ``best`` (score),
            ``centre`` (nearest the image centre) or ``nearest_box`` (nearest ``expected_box``).
        expected_box: relative ``(x0, y0, x1, y1)`` for ``choose="nearest_box"``.
    """

    def __init__(
        self,
        template: str | FaceTemplate = "arcface",
        source: str | LandmarkSource = "FaceApiLandmarks",
        source_args: dict[str, Any] | None = None,
        antialias: bool = True,
        detach_landmarks: bool = True,
        detector: str | FaceDetector | None = None,
        detector_args: dict[str, Any] | None = None,
        choose: FaceChoice = "largest",
        expected_box: tuple[float, float, float, float] | None = None,
    ) -> None:
        super().__init__()
        self.detector = _make_detector(detector, detector_args)
        self.choose = choose
        self.expected_box = tuple(expected_box) if expected_box is not None else None
        select_faces([], (1, 1), choose, self.expected_box)  # validate early
        #: After each call with a detector: ``[N]`` bool, whether a face was found per image.
        self.last_found: Tensor | None = None
        #: With a detector: how many faces it found in each image so far (reports count them).
        self.tally = FaceTally() if self.detector is not None else None
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
        boxes = None
        if self.detector is not None:
            detections = detect_faces(self.detector, images)  # on a copy of at most 1024 px
            self.tally.add([len(d) for d in detections])
            picked, found = select_faces(detections, tuple(images.shape[-2:]), self.choose, self.expected_box)
            boxes = self.source.default_boxes(images)
            found = found.to(boxes.device)
            boxes[found] = picked.to(boxes)[found]
            self.last_found = found.cpu()
        pts = self.source(images, boxes)
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

    ``output_size=(112, 96), shift_x=0`` gives the original 96x112 crops. The other
    arguments are :class:`LandmarkAligner`'s.
    """

    def __init__(
        self,
        output_size: tuple[int, int] = (112, 112),
        shift_x: float = 8.0,
        source: str | LandmarkSource = "FaceApiLandmarks",
        source_args: dict[str, Any] | None = None,
        antialias: bool = True,
        detach_landmarks: bool = True,
        detector: str | FaceDetector | None = None,
        detector_args: dict[str, Any] | None = None,
        choose: FaceChoice = "largest",
        expected_box: tuple[float, float, float, float] | None = None,
    ) -> None:
        super().__init__(ArcFaceTemplate(tuple(output_size), shift_x), source, source_args, antialias, detach_landmarks,
                         detector, detector_args, choose, expected_box)


class DlibChipAligner(LandmarkAligner):
    """dlib-style 150x150 face chips (dlib ``get_face_chip`` geometry) for dlib/face-api's ResNet.

    Same geometry as ``dlib.get_face_chip(img, shape5, size, padding)``. Default landmarks:
    face-api's 68-point net, reduced to dlib's 5 points (eye corners, nose base). On LFW's
    deep-funneled images pass ``source_args={"box": "lfw_deepfunneled"}``; on photos with the
    face anywhere, ``detector="SSDMobileNetV1"``. The other arguments are :class:`LandmarkAligner`'s.
    """

    def __init__(
        self,
        size: int = 150,
        padding: float = 0.25,
        source: str | LandmarkSource = "FaceApiLandmarks",
        source_args: dict[str, Any] | None = None,
        antialias: bool = True,
        detach_landmarks: bool = True,
        detector: str | FaceDetector | None = None,
        detector_args: dict[str, Any] | None = None,
        choose: FaceChoice = "largest",
        expected_box: tuple[float, float, float, float] | None = None,
    ) -> None:
        super().__init__(DlibChipTemplate(size, padding), source, source_args, antialias, detach_landmarks,
                         detector, detector_args, choose, expected_box)
