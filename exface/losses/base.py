"""The FR-loss contract: margin-based classification heads for face recognition."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from exface.registry import Registrable

__all__ = ['FRLoss']


class FRLoss(Registrable, nn.Module, ABC):
    """A face-recognition training loss that owns its class-centre weights.

    Contract: built with ``embedding_dim`` and ``num_classes``; :meth:`forward` takes
    embeddings ``[N, embedding_dim]`` (unnormalized backbone output) and integer labels
    ``[N]`` and returns a scalar loss.
    """

    registry_kind: ClassVar[str] = "losses"

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes

    @abstractmethod
    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scalar loss."""
