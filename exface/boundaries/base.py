"""The boundary-learner contract: fit R linear boundaries over one latent bank."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from exface.registry import Registrable

__all__ = ['Boundaries', 'BoundaryLearner']


@dataclass
class Boundaries:
    """R hyperplanes ``n_r . x + b_r = 0`` in one latent space.

    ``normals`` are unit vectors ``[R, d]`` and ``offsets`` ``[R]`` are expressed in the
    raw space named by ``space`` ("z", "w", ...): any scaling a learner used internally is
    folded back, so ``signed_distance(x) = x @ n + b`` holds for raw latents.
    ``val_balanced_accuracy`` and ``val_auc`` (``[R]``) come from held-out latents.
    """

    normals: Tensor
    offsets: Tensor
    space: str
    val_balanced_accuracy: Tensor
    val_auc: Tensor
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.normals.shape[0]

    def signed_distance(self, x: Tensor, index: Tensor | int | None = None) -> Tensor:
        """``[N, R]`` distances of every x to every boundary (or ``[N]`` for one index)."""
        if index is None:
            return x @ self.normals.T.to(x) + self.offsets.to(x)
        return (x * self.normals[index].to(x)).sum(-1) + self.offsets[index].to(x)

    def save(self, path: str | Path) -> None:
        torch.save({k: getattr(self, k) for k in self.__dataclass_fields__}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "Boundaries":
        return cls(**torch.load(str(path), map_location="cpu", weights_only=True))


class BoundaryLearner(Registrable, ABC):
    """Learns one linear boundary per reference from a shared bank of latents.

    Contract: :meth:`fit` takes latents ``x`` ``[N, d]`` and labels ``y`` ``[R, N]``
    (1 = positive / identity-similar, 0 = negative, -1 = ignore this latent for that
    reference) and returns :class:`Boundaries` with unit normals in the raw space of ``x``.
    """

    registry_kind: ClassVar[str] = "boundaries"

    @abstractmethod
    def fit(self, x: Tensor, y: Tensor, space: str = "w") -> Boundaries:
        """Fit all R boundaries."""
