"""Additive-margin softmax losses: ArcFace, CosFace and insightface's combined margin.

All three are ``s * cos(m1 * theta + m2) - s * m3`` on the target class and ``s * cos(theta)``
elsewhere, theta being the angle between an embedding and a class centre:
ArcFace is ``(1, m, 0)``, CosFace ``(1, 0, m)``, SphereFace-like margins use ``m1 > 1``.

Formulation (as arcface_torch's ``CombinedMarginLoss``): the margin is applied to the
target logit's *value* in angle space (``arccos`` -> add margin -> ``cos``) while the
gradient flows to the cosine unchanged, i.e. ``d logit / d cos = s``. This avoids the
``1 / sin(theta)`` factor of differentiating ``cos(arccos(c) + m)``, which is unbounded
at ``theta = 0`` and ``theta = pi``; it is how arcface_torch trains its published models.

Where ``m1 * theta + m2`` passes ``pi`` the cosine would rise again and the target logit
would no longer fall with the angle. Two remedies, as in insightface:

- ``easy_margin=True``: apply the margin only where ``cos(theta) > 0``;
- otherwise (default) past ``theta_b = (pi - m2) / m1`` use ``cos(theta) - penalty_b - m3``,
  where ``penalty_b = 1 + cos(theta_b)`` is the margin's penalty at ``theta_b``, so the
  target logit stays continuous and decreasing in ``theta``. (insightface's ArcFace uses
  ``cos(theta) - m * sin(m)`` there, which jumps at ``theta_b``.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.losses.base import FRLoss

__all__ = ["ArcFace", "CombinedMargin", "CosFace", "MarginFunction", "normalized_cosine"]


class MarginFunction:
    """``(cosine [N, C], labels [N]) -> scaled logits [N, C]`` with the combined margin on targets.

    Rows whose label is ``-1`` get no margin: under model parallelism a rank sees
    samples whose class centre lives on another rank (see :class:`~exface.losses.partial_fc.PartialFC`).
    """

    def __init__(
        self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0, easy_margin: bool = False
    ) -> None:
        if s <= 0:
            raise ValueError(f"scale s must be positive, got {s}")
        if m1 <= 0:
            raise ValueError(f"multiplicative margin m1 must be positive, got {m1}")
        if not 0 <= m2 < math.pi:
            raise ValueError(f"additive angular margin m2 must be in [0, pi), got {m2}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.easy_margin = easy_margin
        self.theta_b = (math.pi - self.m2) / self.m1
        self.penalty_b = 1.0 + math.cos(self.theta_b)

    def __repr__(self) -> str:
        return (f"MarginFunction(s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
                f"easy_margin={self.easy_margin})")

    def target_logit(self, cosine: Tensor) -> Tensor:
        """The unscaled target logit for target cosines (value only; see the module docstring)."""
        cosine = cosine.clamp(-1.0, 1.0)
        out = cosine - self.m3
        if self.m1 != 1.0 or self.m2 != 0.0:
            theta = torch.acos(cosine)
            angular = torch.cos(self.m1 * theta + self.m2) - self.m3
            if self.easy_margin:
                out = torch.where(cosine > 0, angular, cosine)
            else:
                out = torch.where(theta <= self.theta_b, angular, cosine - self.penalty_b - self.m3)
        return out

    def __call__(self, cosine: Tensor, labels: Tensor) -> Tensor:
        rows = torch.nonzero(labels >= 0).squeeze(1)
        cols = labels[rows]
        target = cosine[rows, cols]
        with torch.no_grad():
            shift = self.target_logit(target) - target
        # Straight-through: the value gets the margin, the gradient stays d/dcos = s.
        logits = cosine.index_put((rows, cols), shift, accumulate=True)
        return logits * self.s


def normalized_cosine(embeddings: Tensor, weight: Tensor) -> Tensor:
    """``cos`` between each embedding and each class centre, in float32, clamped to [-1, 1]."""
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(weight.float(), dim=1)).clamp(-1.0, 1.0)


def _check_labels(labels: Tensor, num_classes: int) -> None:
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-d tensor of class indices, got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got [{int(labels.min())}, {int(labels.max())}]. "
            f"Is num_classes set to the dataset's number of identities?"
        )


class _MarginSoftmax(FRLoss):
    """Softmax cross-entropy over margin logits against learned, L2-normalized class centres."""

    def __init__(self, embedding_dim: int, num_classes: int, margin: MarginFunction) -> None:
        super().__init__(embedding_dim, num_classes)
        self.margin = margin
        # arcface_torch's init for the class centres.
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_dim)))

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scaled logits with the margin on each sample's target class ``[N, num_classes]``."""
        _check_labels(labels, self.num_classes)
        return self.margin(normalized_cosine(embeddings, self.weight), labels)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, margin={self.margin!r}"


class ArcFace(_MarginSoftmax):
    """ArcFace (Deng et al. 2019): additive angular margin ``cos(theta + m)``, scale ``s``."""

    def __init__(
        self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5, easy_margin: bool = False
    ) -> None:
        super().__init__(embedding_dim, num_classes, MarginFunction(s=s, m2=m, easy_margin=easy_margin))


class CosFace(_MarginSoftmax):
    """CosFace (Wang et al. 2018): additive cosine margin ``cos(theta) - m``, scale ``s``."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.4) -> None:
        super().__init__(embedding_dim, num_classes, MarginFunction(s=s, m2=0.0, m3=m))


class CombinedMargin(_MarginSoftmax):
    """insightface's combined margin ``cos(m1 * theta + m2) - m3`` (ArcFace: 1, 0.5, 0; CosFace: 1, 0, 0.4)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_dim, num_classes, MarginFunction(s=s, m1=m1, m2=m2, m3=m3, easy_margin=easy_margin))
