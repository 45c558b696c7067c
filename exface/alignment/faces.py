"""Which face to align when a photo holds several, and a tally of the photos that held none.

Landmark sources start from a face box. Given a face detector, the box comes from its
detections; a photo may hold several faces (LFW images show bystanders; users' photos show
groups) or none. :func:`nearest_faces` picks, per image, the face whose centre is nearest
the expected box's centre (the box the source would otherwise start on), or the image
centre when there is no expected box; the largest face, dlib's and face-api's habit, gets
the wrong person on LFW's multi-face images. :class:`FaceTally` records how many faces each
image held, so reports can count and name images with no face or several faces.

:func:`detect_boxes` runs a registered face detector (kind ``detectors``, such as face-api's
SSD MobileNet v1) on a copy of the images shrunk to at most ``max_side`` pixels: detectors
resize their input to a few hundred pixels anyway, so a 12-Mpx photo need not be converted
to float at full size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.alignment.geometry import as_float_images

__all__ = ["FaceTally", "nearest_faces", "detect_boxes", "make_detector"]


@dataclass
class FaceTally:
    """Faces found per image, in the order images went through a landmark source."""

    counts: list[int] = field(default_factory=list)

    def reset(self) -> None:
        self.counts.clear()

    def add(self, counts: Sequence[int]) -> None:
        self.counts.extend(int(c) for c in counts)

    def summary(self, names: Sequence[str] | None = None, limit: int = 50) -> dict[str, Any]:
        """``{"images", "no_face", "several_faces", "no_face_images", "several_faces_images"}``;
        the image lists hold ``names`` (default: indices), at most ``limit`` of each."""
        names = list(names) if names is not None else [str(i) for i in range(len(self.counts))]
        none = [names[i] for i, c in enumerate(self.counts) if c == 0]
        many = [names[i] for i, c in enumerate(self.counts) if c > 1]
        return {
            "images": len(self.counts),
            "no_face": len(none),
            "several_faces": len(many),
            "no_face_images": none[:limit],
            "several_faces_images": many[:limit],
        }


def nearest_faces(candidates: Sequence[Tensor], expected: Tensor) -> tuple[Tensor, list[int]]:
    """Per image, the candidate box ``[K, 4]`` whose centre is nearest ``expected[i]``'s centre.

    ``candidates``: one ``[K_i, 4]`` pixel box tensor (x0, y0, x1, y1) per image;
    ``expected``: ``[N, 4]`` pixel boxes (also the answer where ``K_i == 0``). Returns
    ``(boxes [N, 4], face counts)``.
    """
    if len(candidates) != len(expected):
        raise ValueError(f"{len(candidates)} detection lists for {len(expected)} images")
    out = expected.clone()
    counts = []
    for i, c in enumerate(candidates):
        counts.append(int(len(c)))
        if len(c) == 0:
            continue
        c = c.to(out)
        d = ((c[:, :2] + c[:, 2:]) / 2 - (expected[i, :2] + expected[i, 2:]) / 2).norm(dim=1)
        out[i] = c[int(d.argmin())]
    return out, counts


def make_detector(detector: nn.Module | str) -> nn.Module:
    """A detector instance, or the registered detector (kind ``detectors``) of that name."""
    if not isinstance(detector, str):
        return detector
    from exface.registry import REGISTRIES, create_part, load_plugins

    load_plugins()
    if "detectors" not in REGISTRIES:
        raise ValueError(f"no face detectors are installed, so {detector!r} cannot be built; drop the detector option")
    return create_part("detectors", detector)  # an unknown name: RegistryError listing near names


def _boxes_of(det: Any) -> Tensor:
    """``[K, 4]`` pixel boxes from one image's detections (a ``Detections`` or a tensor)."""
    boxes = getattr(det, "boxes", det)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, boxes.shape[-1] if len(boxes) else 4)
    return boxes[:, :4]


@torch.no_grad()
def detect_boxes(detector: nn.Module, images: Tensor, max_side: int = 1024) -> list[Tensor]:
    """Every face's pixel box ``[K, 4]`` per image, run on a copy of at most ``max_side`` px.

    ``images`` are float in [-1, 1] or uint8; boxes are in the pixels of ``images``.
    """
    h, w = images.shape[-2:]
    f = max(h, w) / max_side
    small = images
    if f > 1:
        size = (max(1, round(h / f)), max(1, round(w / f)))
        small = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    small = as_float_images(small)
    sy, sx = h / small.shape[-2], w / small.shape[-1]
    scale = torch.tensor([sx, sy, sx, sy])
    return [_boxes_of(d).cpu() * scale for d in detector(small)]
