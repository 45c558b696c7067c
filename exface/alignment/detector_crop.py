"""Crop the face box a detector found (widened by a margin), resized: no landmarks needed.

What HSE_FaceRec_tf's authors feed their MobileNet (a detector box widened by 10 px per
side, clipped to the image, resized to 224x224), and a cheap crop for any embedder on photos
with the face anywhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from exface.alignment.base import Aligner
from exface.alignment.crops import _check_size
from exface.alignment.faces import FaceTally, detect_faces
from exface.alignment.geometry import float_dtype, warp_affine
from exface.alignment.landmarks import resolve_box
from exface.detectors.base import FaceChoice, FaceDetector, select_faces

__all__ = ["DetectorCropAligner", "box_crop_matrices"]


def box_crop_matrices(boxes: Tensor, output_size: tuple[int, int]) -> Tensor:
    """``[N, 4]`` pixel-edge boxes -> ``[N, 2, 3]`` crop->image maps of an axis-aligned resize."""
    h, w = output_size
    sx = (boxes[:, 2] - boxes[:, 0]) / w
    sy = (boxes[:, 3] - boxes[:, 1]) / h
    a = torch.zeros(boxes.shape[0], 2, 3, dtype=boxes.dtype, device=boxes.device)
    a[:, 0, 0], a[:, 1, 1] = sx, sy
    a[:, 0, 2] = boxes[:, 0] - 0.5 + 0.5 * sx  # crop pixel centre u -> x0 + (u + 0.5) * sx (edges)
    a[:, 1, 2] = boxes[:, 1] - 0.5 + 0.5 * sy
    return a


class DetectorCropAligner(Aligner):
    """The detected face box, widened by ``margin`` per side, resized to ``output_size``.

    Args:
        detector: a registered detector name (default ``SSDMobileNetV1``) or instance.
        output_size: ``(height, width)`` of the crops.
        margin: added on each side, as a fraction of the box's width/height (0.1: HSE's
            10 px on a ~100 px face).
        square: widen the shorter side to a square around the box's centre first.
        clip: clip the widened box to the image (HSE's authors do) instead of padding black.
        choose, expected_box: which face when there are several (see
            :func:`exface.detectors.base.select_faces`).
        fallback_box: relative ``(x0, y0, x1, y1)`` (or a name of
            :data:`exface.alignment.landmarks.FACE_BOXES`) cropped where no face is found;
            :attr:`last_found` flags those images.
        detector_args: keyword arguments of the detector when it is given by name.
    """

    def __init__(
        self,
        detector: str | FaceDetector = "SSDMobileNetV1",
        output_size: tuple[int, int] = (224, 224),
        margin: float = 0.1,
        square: bool = False,
        clip: bool = True,
        choose: FaceChoice = "largest",
        expected_box: tuple[float, float, float, float] | None = None,
        fallback_box: tuple[float, float, float, float] | str | None = None,
        detector_args: dict[str, Any] | None = None,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        from exface.alignment.landmark_aligner import _make_detector

        self.detector = _make_detector(detector, detector_args)
        self.output_size = _check_size(output_size)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin, self.square, self.clip = float(margin), bool(square), bool(clip)
        self.choose = choose
        self.expected_box = tuple(expected_box) if expected_box is not None else None
        select_faces([], (1, 1), choose, self.expected_box)
        self.fallback_box = fallback_box if fallback_box is None or isinstance(fallback_box, str) else tuple(fallback_box)
        resolve_box(self.fallback_box, 1, 1, 1)
        self.antialias = bool(antialias)
        #: After each call: ``[N]`` bool, whether a face was found per image.
        self.last_found: Tensor | None = None
        #: How many faces the detector found in each image so far (reports count them).
        self.tally = FaceTally()

    def face_boxes(self, images: Tensor) -> Tensor:
        """``[N, 4]`` pixel boxes that are cropped (margin, square and clip applied)."""
        n, _, h, w = images.shape
        detections = detect_faces(self.detector, images)  # on a copy of at most 1024 px
        self.tally.add([len(d) for d in detections])
        picked, found = select_faces(detections, (h, w), self.choose, self.expected_box)
        boxes = resolve_box(self.fallback_box, n, h, w).to(torch.float64)
        boxes[found] = picked.to(boxes)[found]
        self.last_found = found
        lo, hi = boxes[:, :2], boxes[:, 2:]
        size = hi - lo
        if self.square:
            centre = (lo + hi) / 2
            size = size.max(1, keepdim=True).values.expand(-1, 2)
            lo, hi = centre - size / 2, centre + size / 2
        lo, hi = lo - self.margin * size, hi + self.margin * size
        if self.clip:
            lo = lo.clamp(min=0)
            hi = torch.minimum(hi, torch.tensor([float(w), float(h)], dtype=hi.dtype))
        return torch.cat([lo, hi], 1)

    def forward(self, images: Tensor) -> Tensor:
        a = box_crop_matrices(self.face_boxes(images).to(images.device), self.output_size)
        return warp_affine(images, a.to(float_dtype(images)), self.output_size, self.antialias)
