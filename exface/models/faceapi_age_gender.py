"""face-api's ``age_gender_model`` in PyTorch: age regression and male/female classification.

Network: :class:`~exface.models.faceapi_features.TinyXception` (7x7x512), a 7x7 average pool
to 512 features and two fully connected heads: ``age`` (512 -> 1, in years, unbounded
regression) and ``gender`` (512 -> 2 logits, index 0 = male, 1 = female; face-api applies a
softmax and reports ``probMale = p[0]``).
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from exface.models.faceapi_features import TinyXception
from exface.models.faceapi_ops import WeightReader, faceapi_input, load_faceapi_weights

__all__ = ["AgeGenderNet"]


class AgeGenderNet(nn.Module):
    """[-1, 1] RGB face crops (any size) -> ``(age [N] in years, gender probabilities [N, 2])``."""

    zoo_name = "faceapi-age-gender"

    def __init__(self) -> None:
        super().__init__()
        self.features = TinyXception(num_main_blocks=2)
        self.fc_age = nn.Linear(TinyXception.out_channels, 1)
        self.fc_gender = nn.Linear(TinyXception.out_channels, 2)

    def forward_raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalized 112x112 batch -> ``(age [N], gender logits [N, 2])`` (face-api ``runNet``)."""
        pooled = F.avg_pool2d(self.features(x), 7, 2).flatten(1)
        return self.fc_age(pooled).squeeze(1), self.fc_gender(pooled)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        age, logits = self.forward_raw(faceapi_input(images))
        return age, logits.softmax(dim=1)

    def load_tf(self, w: WeightReader) -> None:
        self.features.load_tf(w)
        w.copy(self.fc_age.weight, "fc/age/weights", (1, 0))
        w.copy(self.fc_age.bias, "fc/age/bias")
        w.copy(self.fc_gender.weight, "fc/gender/weights", (1, 0))
        w.copy(self.fc_gender.bias, "fc/gender/bias")

    @classmethod
    def from_manifest(cls, manifest: str | Path | None = None) -> "AgeGenderNet":
        """Load face-api weights (default: the zoo's ``faceapi-age-gender``); eval mode."""
        return load_faceapi_weights(cls(), manifest, cls.zoo_name)
