"""The boundary-learner contract: fit R linear boundaries over one latent bank."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from exface.registry import Registrable

__all__ = ["Boundaries", "BoundaryLearner", "check_boundary_inputs", "hyperplanes_to_raw", "latent_split"]


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


def check_boundary_inputs(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Validate the learner contract's inputs; returns ``x float32 [N, d]``, ``y int8 [R, N]``."""
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"latents x must be a float [N, d] array, got {x.dtype} of shape {tuple(x.shape)}")
    if y.ndim == 1:
        y = y[None]
    if y.ndim != 2 or y.shape[1] != x.shape[0]:
        raise ValueError(
            f"labels y must be [R, N] with N = {x.shape[0]} latents (one row per reference), "
            f"got shape {tuple(y.shape)}; transpose it if it is [N, R]"
        )
    if y.is_floating_point():
        raise ValueError(f"labels y must be integers in {{1, 0, -1}}, got dtype {y.dtype}")
    bad = (y != 1) & (y != 0) & (y != -1)
    if bad.any():
        raise ValueError(f"labels y must be 1 (positive), 0 (negative) or -1 (ignore); found {y[bad][0].item()}")
    x = x.detach().float()
    if not torch.isfinite(x).all():
        raise ValueError("latents x contain NaN or inf")
    return x, y.detach().to(torch.int8)


def latent_split(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of ``n`` latent indices into (train, val)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    if n_val < 2 or n - n_val < 2:
        raise ValueError(f"{n} latents are too few to hold out {val_fraction:.0%} for validation")
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def hyperplanes_to_raw(
    weights: Tensor, biases: Tensor, scale: Tensor | None = None, shift: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Fold a hyperplane fitted on ``x' = scale * x + shift`` back to raw ``x``; unit normals.

    ``w . x' + b = (w * scale) . x + (b + w . shift)``; the result is divided by
    ``|w * scale|`` so normals have unit length and signed distances are Euclidean in
    raw space. Min-max scaling to [-1, 1] is ``scale = 2 / (hi - lo)``,
    ``shift = -1 - lo * scale``; standardization is ``scale = 1 / sigma``,
    ``shift = -mu / sigma``. Inputs ``weights [R, d]``, ``biases [R]``.
    """
    w = weights.double()
    b = biases.double()
    if scale is not None:
        w_raw = w * scale.double()
    else:
        w_raw = w
    b_raw = b + (w * shift.double()).sum(1) if shift is not None else b
    norm = w_raw.norm(dim=1)
    if (norm == 0).any():
        bad = (norm == 0).nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"boundaries {bad} have a zero normal (the classifier learned nothing); check that "
            "those references have both positive and negative latents and a large enough C"
        )
    return (w_raw / norm[:, None]).float(), (b_raw / norm).float()
