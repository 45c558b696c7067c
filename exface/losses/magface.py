"""MagFace (Meng et al., CVPR 2021): margin and a regularizer that grow with the feature magnitude.

With ``a = clip(||f||, l_a, u_a)`` the target margin is linear in ``a``,
``m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m``, on an ArcFace target logit
``s cos(theta_y + m(a))`` (past ``theta_y = pi - m(a)``: ``s (cos(theta_y) - m(a) sin(m(a)))``,
as the authors' code), ``s cos(theta_j)`` elsewhere; the loss adds
``lambda_g * mean(g(a))`` with ``g(a) = a / u_a^2 + 1 / a``, which pushes magnitudes up so the
magnitude becomes a quality score. Defaults are the paper's / code's for ``s = 64``:
``l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8, lambda_g = 35``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.losses.base import FRLoss
from exface.losses.margin import _check_labels, normalized_cosine

__all__ = ["MagFace"]


class MagFace(FRLoss):
    """MagFace loss; ``embeddings`` must be the backbone's unnormalized output."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, l_a: float = 10.0, u_a: float = 110.0,
                 l_m: float = 0.45, u_m: float = 0.8, lambda_g: float = 35.0) -> None:
        super().__init__(embedding_dim, num_classes)
        if not 0 < l_a < u_a:
            raise ValueError(f"need 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        self.s, self.l_a, self.u_a, self.l_m, self.u_m, self.lambda_g = map(float, (s, l_a, u_a, l_m, u_m, lambda_g))
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_dim)))

    def magnitude(self, embeddings: Tensor) -> Tensor:
        """``a = clip(||f||, l_a, u_a)`` ``[N]`` (with gradient)."""
        return embeddings.float().norm(dim=1).clamp(self.l_a, self.u_a)

    def margin(self, a: Tensor) -> Tensor:
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def regularizer(self, a: Tensor) -> Tensor:
        """``g(a) = a / u_a^2 + 1 / a``."""
        return a / self.u_a ** 2 + 1.0 / a

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scaled logits ``[N, C]`` with the magnitude-dependent margin on each target."""
        _check_labels(labels, self.num_classes)
        m = self.margin(self.magnitude(embeddings)).unsqueeze(1)
        cos = normalized_cosine(embeddings, self.weight)
        sin = (1.0 - cos.pow(2)).clamp_min(0).sqrt()
        cos_m = cos * torch.cos(m) - sin * torch.sin(m)
        cos_m = torch.where(cos > torch.cos(math.pi - m), cos_m, cos - torch.sin(math.pi - m) * m)
        onehot = F.one_hot(labels, self.num_classes).to(cos.dtype)
        return self.s * (onehot * cos_m + (1 - onehot) * cos)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        ce = F.cross_entropy(self.logits(embeddings, labels), labels)
        return ce + self.lambda_g * self.regularizer(self.magnitude(embeddings)).mean()
