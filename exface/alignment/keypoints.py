"""Landmark schemes and the 5-point subsets alignment templates are defined on.

Schemes of landmark sources:

- ``"ibug68"``: the 68 points of iBUG-300W (jaw 0-16, brows 17-26, nose bridge 27-30, nose
  base 31-35, eyes 36-41 / 42-47, mouth 48-67), as face-api's and dlib's 68-point predictors
  output them. Index 36 is the outer corner of the eye on the image's left.
- ``"dlib5"``: dlib's 5-point predictor: outer and inner corner of the eye on the image's
  right (iBUG 45, 42), outer and inner corner of the eye on the image's left (36, 39), and
  the bottom of the nose between the nostrils (33).
- ``"insightface5"``: eye centres (image-left eye first), nose tip, mouth corners
  (image-left first): what MTCNN/RetinaFace output and the ArcFace template is defined on.

:func:`to_keypoints` converts a source's points to the scheme a template needs, or explains
why it cannot (dlib's 5 points have no mouth; MTCNN's have no eye corners).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SCHEMES", "IBUG68_TO_DLIB5", "to_keypoints"]

SCHEMES = ("ibug68", "dlib5", "insightface5")

#: iBUG-68 indices of dlib's 5 points, in dlib's order.
IBUG68_TO_DLIB5 = (45, 42, 36, 39, 33)

_NUM_POINTS = {"ibug68": 68, "dlib5": 5, "insightface5": 5}


def _ibug68_to_insightface5(p: Tensor) -> Tensor:
    return torch.stack(
        [p[:, 36:42].mean(1), p[:, 42:48].mean(1), p[:, 30], p[:, 48], p[:, 54]], dim=1
    )


def to_keypoints(points: Tensor, source: str, target: str) -> Tensor:
    """``[N, K, 2]`` points in scheme ``source`` -> ``[N, 5, 2]`` (or 68) in scheme ``target``."""
    for name in (source, target):
        if name not in SCHEMES:
            raise ValueError(f"unknown landmark scheme {name!r}; schemes are {', '.join(SCHEMES)}")
    if points.dim() != 3 or points.shape[1:] != (_NUM_POINTS[source], 2):
        raise ValueError(
            f"{source} landmarks must be [N, {_NUM_POINTS[source]}, 2], got {tuple(points.shape)}"
        )
    if source == target:
        return points
    if source == "ibug68" and target == "dlib5":
        return points[:, list(IBUG68_TO_DLIB5)]
    if source == "ibug68" and target == "insightface5":
        return _ibug68_to_insightface5(points)
    raise ValueError(
        f"a {source} landmark source cannot feed a template defined on {target} points "
        f"({'dlib5 has no mouth corners' if source == 'dlib5' else 'insightface5 has eye centres, not eye corners'}); "
        f"use a 68-point source (FaceApiLandmarks or DlibLandmarks(points=68)) or a template "
        f"defined on {source}"
    )
