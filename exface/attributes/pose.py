"""Scores computed from 68 facial landmarks (iBUG-300W order): head pose and facial actions.

All functions take ``[N, 68, 2]`` pixel coordinates (e.g. from
:meth:`exface.attributes.FaceApiLandmarks68.landmarks`) and return ``[N]`` tensors.

- :func:`head_pose`: yaw, pitch, roll in degrees, from OpenCV's ``solvePnP`` fitting a generic
  3-D face (:data:`GENERIC_FACE_3D`, 11 rigid points in millimetres) with a pinhole camera
  of focal length ``max(H, W)`` pixels centred on the image. Signs (as seen in the image):
  yaw > 0 when the face turns towards the image's right (the subject turns to *their* left),
  pitch > 0 when it tilts up, roll > 0 when the head tilts clockwise (the eye on the image's
  right is lower). Not differentiable (CPU, per image).
- :func:`mouth_open`: inner-lip gap over mouth width (0 closed, ~0.1 slightly open, 0.3-0.6
  wide open). Differentiable.
- :func:`smile`: mouth-corner lift over mouth width, measured perpendicular to the eye line
  (about 0 or below for neutral mouths, > 0.05 for clear smiles). Differentiable.
- :func:`eyes_open`: the eye aspect ratio (Soukupova & Cech 2016) averaged over both eyes
  (~0.25-0.35 open, < 0.15 closed). Differentiable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["GENERIC_FACE_3D", "head_pose", "mouth_open", "smile", "eyes_open", "landmark_scores"]

#: Generic adult face, OpenCV camera axes (x to the image's right, y down, z away from the
#: camera), millimetres, origin at the nose tip; iBUG index -> (x, y, z). Rigid points only
#: (no jaw outline, no lips' inner edge): eye corners, nose, mouth corners, chin, brows.
GENERIC_FACE_3D = {
    30: (0.0, 0.0, 0.0),  # nose tip
    27: (0.0, -36.0, 24.0),  # nasion
    33: (0.0, 16.0, 14.0),  # nose base (subnasale)
    36: (-45.0, -34.0, 34.0),  # outer eye corner, image left
    39: (-15.0, -33.0, 28.0),  # inner eye corner, image left
    42: (15.0, -33.0, 28.0),
    45: (45.0, -34.0, 34.0),
    48: (-25.0, 36.0, 28.0),  # mouth corner, image left
    54: (25.0, 36.0, 28.0),
    8: (0.0, 72.0, 26.0),  # chin
    19: (-33.0, -52.0, 28.0),  # brow top, image left
    24: (33.0, -52.0, 28.0),
}


def _check(points: Tensor) -> None:
    if points.dim() != 3 or points.shape[1:] != (68, 2):
        raise ValueError(f"expected 68 landmarks [N, 68, 2], got {tuple(points.shape)}")


def head_pose(points: Tensor, image_size: tuple[int, int]) -> dict[str, Tensor]:
    """``{"yaw", "pitch", "roll"}`` in degrees (see the module docstring for the signs).

    ``image_size``: ``(H, W)`` of the image the landmarks are in (sets the camera).
    """
    import cv2

    _check(points)
    h, w = image_size
    f = float(max(h, w))
    cam = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], dtype=np.float64)
    idx = list(GENERIC_FACE_3D)
    model = np.array([GENERIC_FACE_3D[i] for i in idx], dtype=np.float64)
    pts = np.ascontiguousarray(points.detach().double().cpu().numpy()[:, idx])
    out = np.full((pts.shape[0], 3), np.nan)
    for k, p in enumerate(pts):
        if not np.isfinite(p).all():
            continue
        # Start from a frontal face at the distance that matches the eye distance in pixels.
        iod = np.linalg.norm(p[idx.index(45)] - p[idx.index(36)])
        z0 = f * 90.0 / max(iod, 1e-3)
        cx, cy = p[idx.index(30)]
        tvec0 = np.array([(cx - cam[0, 2]) * z0 / f, (cy - cam[1, 2]) * z0 / f, z0])
        ok, rvec, _ = cv2.solvePnP(
            model, np.ascontiguousarray(p).reshape(-1, 1, 2), cam, None, np.zeros(3), tvec0,
            useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE,
        )
        if not ok:
            continue
        r, _ = cv2.Rodrigues(rvec)
        fwd = r @ np.array([0.0, 0.0, -1.0])  # where the face points, camera axes
        right = r @ np.array([1.0, 0.0, 0.0])
        yaw = math.degrees(math.atan2(fwd[0], -fwd[2]))
        pitch = math.degrees(math.atan2(-fwd[1], math.hypot(fwd[0], fwd[2])))
        roll = math.degrees(math.atan2(right[1], right[0]))
        out[k] = (yaw, pitch, roll)
    t = torch.from_numpy(out).to(device=points.device, dtype=points.dtype)
    return {"yaw": t[:, 0], "pitch": t[:, 1], "roll": t[:, 2]}


def _dist(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).norm(dim=-1)


def mouth_open(points: Tensor) -> Tensor:
    """Mean inner-lip gap (61-67, 62-66, 63-65) divided by the mouth width (48-54)."""
    _check(points)
    gap = (_dist(points[:, 61], points[:, 67]) + _dist(points[:, 62], points[:, 66])
           + _dist(points[:, 63], points[:, 65])) / 3
    return gap / _dist(points[:, 48], points[:, 54]).clamp_min(1e-6)


def smile(points: Tensor) -> Tensor:
    """How far the mouth corners (48, 54) sit above the lips' centre (51, 57, 62, 66),
    perpendicular to the eye line, divided by the mouth width."""
    _check(points)
    eye_l, eye_r = points[:, 36:42].mean(1), points[:, 42:48].mean(1)
    across = eye_r - eye_l
    across = across / across.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    down = torch.stack([-across[:, 1], across[:, 0]], -1)  # image "down" in the face frame
    centre = points[:, [51, 57, 62, 66]].mean(1)
    corners = (points[:, 48] + points[:, 54]) / 2
    lift = ((centre - corners) * down).sum(-1)
    return lift / _dist(points[:, 48], points[:, 54]).clamp_min(1e-6)


def eyes_open(points: Tensor) -> Tensor:
    """Eye aspect ratio ``(|p2-p6| + |p3-p5|) / (2 |p1-p4|)``, mean of both eyes."""
    _check(points)

    def ear(e: Tensor) -> Tensor:
        return (_dist(e[:, 1], e[:, 5]) + _dist(e[:, 2], e[:, 4])) / (2 * _dist(e[:, 0], e[:, 3]).clamp_min(1e-6))

    return (ear(points[:, 36:42]) + ear(points[:, 42:48])) / 2


def landmark_scores(points: Tensor, image_size: tuple[int, int]) -> dict[str, Tensor]:
    """All of the above: yaw, pitch, roll, mouth_open, smile, eyes_open."""
    out = head_pose(points, image_size)
    out.update(mouth_open=mouth_open(points), smile=smile(points), eyes_open=eyes_open(points))
    return out
