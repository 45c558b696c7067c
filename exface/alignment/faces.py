"""Which face to align when a photo holds several, and a tally of the photos that held none.

Landmark sources start from a face box. Given a face detector (dlib's HOG in
:class:`~exface.alignment.landmarks.DlibLandmarks`, or a registered :mod:`exface.detectors`
part on a :class:`~exface.alignment.landmark_aligner.LandmarkAligner`), the box comes from
its detections; a photo may hold several faces (LFW images show bystanders; users' photos
show groups) or none. :func:`pick_faces` takes, per image, the face whose centre is nearest
the expected box's centre (the box the source would otherwise start on), or the image
centre when there is no expected box; the largest face, dlib's and face-api's habit, gets
the wrong person on LFW's multi-face images. :class:`FaceTally` records how many faces each
image held, so reports can count and name images with no face or several faces.

:func:`detect_faces` runs a detector on a copy of the images shrunk to at most ``max_side``
pixels: detectors resize their input to a few hundred pixels anyway, so a 12-Mpx photo need
not be converted to float at full size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.alignment.geometry import as_float_images
from exface.detectors.base import Detections, select_faces

__all__ = ["FaceTally", "pick_faces", "detect_faces"]


@dataclass
class FaceTally:
    """Faces found per image, in the order images went through a landmark source."""

    counts: list[int] = field(default_factory=list)

    def reset(self) -> None:
        self.counts.clear()

    def add(self, counts: Sequence[int]) -> None:
        self.counts.extend(int(c) for c in counts)

    def summary(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """``{"images", "no_face", "several_faces", "no_face_images", "several_faces_images"}``;
        the image lists hold ``names`` (default: indices)."""
        names = list(names) if names is not None else [str(i) for i in range(len(self.counts))]
        none = [names[i] for i, c in enumerate(self.counts) if c == 0]
        many = [names[i] for i, c in enumerate(self.counts) if c > 1]
        return {
            "images": len(self.counts),
            "no_face": len(none),
            "several_faces": len(many),
            "no_face_images": none,
            "several_faces_images": many,
        }


def pick_faces(
    detections: Sequence[Detections],
    fallback: Tensor,
    expected_box: Sequence[float] | None,
    image_size: tuple[int, int],
    tally: FaceTally | None = None,
) -> Tensor:
    """One pixel box ``[N, 4]`` per image: the detected face nearest ``expected_box`` (relative
    x0, y0, x1, y1), or nearest the image centre when it is None; ``fallback[i]`` where
    image ``i`` has no face. ``tally`` (when given) records how many faces each image had."""
    choose = "nearest_box" if expected_box is not None else "centre"
    picked, found = select_faces(detections, image_size, choose, expected_box)
    out = fallback.clone()
    found = found.to(out.device)
    out[found] = picked.to(out)[found]
    if tally is not None:
        tally.add([len(d) for d in detections])
    return out


@torch.no_grad()
def detect_faces(detector: nn.Module, images: Tensor, max_side: int = 1024) -> list[Detections]:
    """Every face per image, found on a float copy shrunk to at most ``max_side`` pixels
    (antialiased); boxes in the pixels of ``images`` (float in [-1, 1], or uint8)."""
    h, w = images.shape[-2:]
    f = max(h, w) / max_side
    small = images
    if f > 1:
        size = (max(1, round(h / f)), max(1, round(w / f)))
        src = images if images.dtype in (torch.uint8, torch.float32) else images.float()
        small = F.interpolate(src, size=size, mode="bilinear", align_corners=False, antialias=True)
    small = as_float_images(small)
    sy, sx = h / small.shape[-2], w / small.shape[-1]
    scale = torch.tensor([sx, sy, sx, sy])
    return [Detections(d.boxes.detach().float().cpu().view(-1, 4) * scale, d.scores.detach().cpu()) for d in detector(small)]
