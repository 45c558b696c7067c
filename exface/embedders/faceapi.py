"""face-api's face recognizer (dlib's ResNet-34-style network) as an identity embedder.

This is exface's offline default embedder: its weights ship in the npm package
``@vladmandic/face-api`` (``face_recognition_model``), it needs no GPU, and on dlib-style
5-point face chips it reaches ~99% on LFW. It is a port of dlib's
``dlib_face_recognition_resnet_model_v1`` (face-api's weights are that model, uint8-quantized):
see :mod:`exface.models.faceapi_resnet` for the network and the parity check against dlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import Tensor

from exface.embedders.base import IdentityEmbedder
from exface.models.faceapi_resnet import FACEAPI_MEAN_RGB, load_faceapi_resnet

__all__ = ["FaceApiResNet34"]


class FaceApiResNet34(IdentityEmbedder):
    """face-api / dlib face-recognition ResNet: 150x150 dlib face chips -> 128-D identity.

    Args:
        weights: path of face-api's ``face_recognition_model-weights_manifest.json`` (its
            ``.bin`` shard beside it). ``None`` fetches it from the model zoo
            (``exface.zoo.fetch("faceapi-face-recognition")``).
        trainable: keep the weights trainable. By default they are frozen (``requires_grad``
            off), as for a pretrained identity loss; gradients still flow to the input images.
            (The network has no batch-norm or dropout, so train/eval mode changes nothing.)

    Input normalization is face-api's exactly: ``(rgb_255 - meanRgb) / 255`` (dlib itself
    divides by 256; the difference changes the descriptor's cosine by < 1e-6). Crops should
    come from dlib's ``get_face_chip(size=150, padding=0.25)`` alignment or an equivalent
    aligner; the network is sensitive to the crop (a plain centre crop costs several points
    of LFW accuracy).
    """

    input_size: ClassVar[tuple[int, int]] = (150, 150)
    embedding_dim: ClassVar[int] = 128
    color_order: ClassVar[str] = "RGB"
    mean: ClassVar[tuple[float, float, float]] = FACEAPI_MEAN_RGB
    std: ClassVar[tuple[float, float, float]] = (255.0, 255.0, 255.0)

    def __init__(self, weights: str | Path | None = None, trainable: bool = False) -> None:
        super().__init__()
        if weights is None:
            from exface.zoo import fetch

            weights = fetch("faceapi-face-recognition")
        self.weights_path = Path(weights)
        self.net = load_faceapi_resnet(self.weights_path)
        if not trainable:
            self.net.requires_grad_(False)
        self.trainable = trainable

    def embed_raw(self, x: Tensor) -> Tensor:
        """Raw (unnormalized) 128-D dlib descriptors of preprocessed ``[N, 3, 150, 150]`` input."""
        return self.net(x)
