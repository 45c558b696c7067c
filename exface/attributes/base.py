"""The attribute-predictor contract: face crops in, named scalar scores out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from exface.registry import Registrable

__all__ = ['AttributePredictor']


class AttributePredictor(Registrable, nn.Module, ABC):
    """Predicts named scalar attributes (age, gender, smile, yaw, ...) of faces.

    Contract
    - Input: face crops, float ``[N, 3, H, W]``, RGB, in [-1, 1], ``(H, W) == input_size``.
    - Output of :meth:`forward`: ``dict[name, Tensor[N]]`` with exactly the keys of
      ``attribute_names``. Units are documented per predictor (age in years, yaw in degrees,
      probabilities in [0, 1]).
    """

    registry_kind: ClassVar[str] = "attributes"

    input_size: tuple[int, int] = (112, 112)
    attribute_names: tuple[str, ...] = ()

    @abstractmethod
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Scores for each name in :attr:`attribute_names`."""
