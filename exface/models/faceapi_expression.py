"""face-api's ``face_expression_model`` in PyTorch: 7 facial-expression probabilities.

Network: :class:`~exface.models.faceapi_features.FaceFeatureExtractor` (the same architecture
as the landmark net, its own weights) and a 256 -> 7 fully connected layer; face-api applies a
softmax. Class order (face-api ``FACE_EXPRESSION_LABELS``): :data:`EXPRESSIONS`.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from exface.models.faceapi_features import FaceFeatureExtractor
from exface.models.faceapi_ops import WeightReader, faceapi_input, load_faceapi_weights

__all__ = ["EXPRESSIONS", "FaceExpressionNet"]

#: Output order of the expression net.
EXPRESSIONS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")


class FaceExpressionNet(nn.Module):
    """[-1, 1] RGB face crops (any size) -> ``[N, 7]`` probabilities in :data:`EXPRESSIONS` order."""

    zoo_name = "faceapi-face-expression"

    def __init__(self) -> None:
        super().__init__()
        self.features = FaceFeatureExtractor()
        self.fc = nn.Linear(FaceFeatureExtractor.out_features, len(EXPRESSIONS))

    def forward_raw(self, x: Tensor) -> Tensor:
        """Normalized 112x112 batch -> logits ``[N, 7]`` (face-api ``runNet``)."""
        return self.fc(self.features(x))

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_raw(faceapi_input(images)).softmax(dim=1)

    def load_tf(self, w: WeightReader) -> None:
        self.features.load_tf(w)
        w.copy(self.fc.weight, "fc/weights", (1, 0))
        w.copy(self.fc.bias, "fc/bias")

    @classmethod
    def from_manifest(cls, manifest: str | Path | None = None) -> "FaceExpressionNet":
        """Load face-api weights (default: the zoo's ``faceapi-face-expression``); eval mode."""
        return load_faceapi_weights(cls(), manifest, cls.zoo_name)
