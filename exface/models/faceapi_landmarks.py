"""face-api's ``face_landmark_68_model`` in PyTorch: 68 facial landmarks from a face crop.

Network: :class:`~exface.models.faceapi_features.FaceFeatureExtractor` (256 features) and one
fully connected layer to 136 values, the (x, y) of the 68 points of the iBUG-300W scheme
(jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67), interleaved
``x0, y0, x1, y1, ...`` and relative to the 112x112 padded-square network input (0..1).

Post-processing (face-api ``FaceLandmark68NetBase.postProcess``) undoes the centred padding
to square: with ``s = 112 / max(H, W)``, ``x_rel = (raw_x * 112 - pad_x) / (W * s)`` where
``pad_x = |W s - H s| / 2`` if the image is taller than wide (else 0), likewise for y; face-api
then reports pixel positions ``x_rel * W``, ``y_rel * H``. :meth:`FaceLandmark68Net.forward`
returns exactly those pixel positions for the image it was given.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from exface.models.faceapi_features import FaceFeatureExtractor
from exface.models.faceapi_ops import (
    FACEAPI_INPUT_SIZE,
    WeightReader,
    faceapi_input,
    load_faceapi_weights,
)

__all__ = ["FaceLandmark68Net", "landmarks_from_raw"]


def landmarks_from_raw(raw: Tensor, height: int, width: int, size: int = FACEAPI_INPUT_SIZE) -> Tensor:
    """Raw ``[N, 136]`` net output -> ``[N, 68, 2]`` pixel (x, y) in an ``height x width`` image."""
    scale = size / max(height, width)
    w, h = width * scale, height * scale
    pad_x = abs(w - h) / 2 if w < h else 0.0
    pad_y = abs(w - h) / 2 if h < w else 0.0
    pts = raw.view(raw.shape[0], 68, 2) * size
    offset = torch.tensor([pad_x, pad_y], device=raw.device, dtype=raw.dtype)
    dims = torch.tensor([w, h], device=raw.device, dtype=raw.dtype)
    rel = (pts - offset) / dims
    return rel * torch.tensor([width, height], device=raw.device, dtype=raw.dtype)


class FaceLandmark68Net(nn.Module):
    """[-1, 1] RGB face crops (any size) -> ``[N, 68, 2]`` landmark pixel coordinates."""

    zoo_name = "faceapi-face-landmark-68"

    def __init__(self) -> None:
        super().__init__()
        self.features = FaceFeatureExtractor()
        self.fc = nn.Linear(FaceFeatureExtractor.out_features, 136)

    def forward_raw(self, x: Tensor) -> Tensor:
        """Normalized 112x112 batch (:func:`faceapi_input`) -> raw ``[N, 136]`` (face-api ``runNet``)."""
        return self.fc(self.features(x))

    def forward(self, images: Tensor) -> Tensor:
        raw = self.forward_raw(faceapi_input(images))
        return landmarks_from_raw(raw, images.shape[-2], images.shape[-1])

    def load_tf(self, w: WeightReader) -> None:
        self.features.load_tf(w)
        w.copy(self.fc.weight, "fc/weights", (1, 0))
        w.copy(self.fc.bias, "fc/bias")

    @classmethod
    def from_manifest(cls, manifest: str | Path | None = None) -> "FaceLandmark68Net":
        """Load face-api weights (default: the zoo's ``faceapi-face-landmark-68``); eval mode."""
        return load_faceapi_weights(cls(), manifest, cls.zoo_name)
