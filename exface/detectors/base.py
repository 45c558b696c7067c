"""The face-detector contract: images in, every face's box and score out; and picking one face.

A :class:`FaceDetector` (registered kind ``detectors``) maps images ``[N, 3, H, W]`` in
[-1, 1] RGB to one :class:`Detections` per image: all faces it found, best score first, as
pixel boxes ``(x0, y0, x1, y1)`` in the pixel-edge convention (the whole image is
``(0, 0, W, H)``). :func:`select_faces` reduces them to one box per image for the
single-face consumers (landmark sources, aligners): the largest face, the best-scoring one,
the one nearest the image centre, or the one nearest an expected box; and says which
images had no face, so callers can name them instead of embedding a guess silently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence

import torch
from torch import Tensor, nn

from exface.registry import Registrable

__all__ = ["Detections", "FaceDetector", "select_faces", "FaceChoice"]

#: How :func:`select_faces` picks one face among several.
FaceChoice = Literal["largest", "best", "centre", "nearest_box"]


@dataclass
class Detections:
    """The faces found in one image: ``boxes [K, 4]`` (x0, y0, x1, y1 pixels), ``scores [K]``."""

    boxes: Tensor
    scores: Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class FaceDetector(Registrable, nn.Module, ABC):
    """Images ``[N, 3, H, W]`` in [-1, 1] RGB -> a :class:`Detections` per image (all faces)."""

    registry_kind: ClassVar[str] = "detectors"

    @abstractmethod
    def detect(self, images: Tensor) -> list[Detections]:
        """Every face of every image, best score first."""

    def forward(self, images: Tensor) -> list[Detections]:
        return self.detect(images)


def select_faces(
    detections: Sequence[Detections],
    image_size: tuple[int, int],
    choose: FaceChoice = "largest",
    expected_box: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """One face per image: ``(boxes [N, 4], found [N] bool)``; rows without a face are zeros.

    Args:
        detections: one :class:`Detections` per image.
        image_size: ``(H, W)`` of the images (for ``centre`` and a relative ``expected_box``).
        choose: ``largest`` (box area), ``best`` (score), ``centre`` (box centre nearest the
            image centre), ``nearest_box`` (box centre nearest ``expected_box``'s centre).
        expected_box: relative ``(x0, y0, x1, y1)`` where the face should be, for ``nearest_box``.
    """
    if choose not in ("largest", "best", "centre", "nearest_box"):
        raise ValueError(f"choose must be largest, best, centre or nearest_box, got {choose!r}")
    if choose == "nearest_box" and expected_box is None:
        raise ValueError("choose='nearest_box' needs expected_box (relative x0, y0, x1, y1)")
    h, w = image_size
    if choose == "centre":
        target = torch.tensor([w / 2, h / 2])
    elif choose == "nearest_box":
        x0, y0, x1, y1 = expected_box
        target = torch.tensor([(x0 + x1) / 2 * w, (y0 + y1) / 2 * h])
    out = torch.zeros(len(detections), 4)
    found = torch.zeros(len(detections), dtype=torch.bool)
    for i, det in enumerate(detections):
        if len(det) == 0:
            continue
        b = det.boxes.detach().float().cpu()
        if choose == "largest":
            j = int(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).argmax())
        elif choose == "best":
            j = int(det.scores.argmax())
        else:
            centres = (b[:, :2] + b[:, 2:]) / 2
            j = int((centres - target).norm(dim=1).argmin())
        out[i], found[i] = b[j], True
    return out, found
