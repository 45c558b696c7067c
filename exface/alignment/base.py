"""The aligner contract: generator output in, embedder-ready face crops out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from exface.registry import Registrable

__all__ = ['Aligner']


class Aligner(Registrable, nn.Module, ABC):
    """Maps images ``[N, 3, H, W]`` in [-1, 1] (any size) to crops ``[N, 3, *output_size]``
    in [-1, 1], RGB: the configurable step between a generator and an embedder or predictor.

    The built-in aligners also take uint8 images in [0, 255] (photos as decoded) and convert
    only what the crop needs: turning a whole 12-Mpx photo into floats costs more than
    aligning it.
    """

    registry_kind: ClassVar[str] = "aligners"

    output_size: tuple[int, int] = (112, 112)

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """Aligned crops."""
