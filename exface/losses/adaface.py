"""AdaFace (Kim et al., CVPR 2022): a margin that adapts to image quality via the feature norm.

The feature norm ``||z||`` (clipped to [0.001, 100], no gradient) is standardized with a
moving batch mean/std (``mu <- a mu_B + (1 - a) mu``, the same for ``sigma``; ``a =
t_alpha``, initial 20 and 100, updated with the current batch first, as in the authors'
code) and scaled by ``h``: ``z_hat = clip((||z|| - mu) / (sigma + eps) * h, -1, 1)``. On the
target class ``g_angle = -m z_hat`` and ``g_add = m z_hat + m``:

    f(theta_y) = s * (cos(clip(theta_y + g_angle, eps, pi - eps)) - g_add)

and ``s cos(theta_j)`` elsewhere (the clip also applies there, changing nothing but the
angles within ``eps`` of 0 and pi). High-norm (high-quality) samples get an ArcFace-like
margin, low-norm ones a CosFace-like one. Defaults are the paper's (``m = 0.4, h = 0.333,
s = 64``, ``t_alpha = 0.01``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.losses.base import FRLoss
from exface.losses.margin import _check_labels, normalized_cosine

__all__ = ["AdaFace"]


class AdaFace(FRLoss):
    """AdaFace loss; ``embeddings`` must be the backbone's *unnormalized* output (their norm is the quality)."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.4, h: float = 0.333,
                 t_alpha: float = 0.01, eps: float = 1e-3) -> None:
        super().__init__(embedding_dim, num_classes)
        self.s, self.m, self.h, self.t_alpha, self.eps = float(s), float(m), float(h), float(t_alpha), float(eps)
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_dim)))
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def margin_scaler(self, embeddings: Tensor) -> Tensor:
        """``z_hat`` ``[N]``; in training mode this also advances the norm statistics."""
        norms = embeddings.detach().float().norm(dim=1).clamp(0.001, 100)
        if self.training:
            with torch.no_grad():
                std = norms.std() if len(norms) > 1 else torch.zeros((), device=norms.device)
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * norms.mean())
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
        return ((norms - self.batch_mean) / (self.batch_std + self.eps) * self.h).clamp(-1, 1)

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scaled logits ``[N, C]`` with the adaptive margin on each target."""
        _check_labels(labels, self.num_classes)
        z = self.margin_scaler(embeddings)
        cos = normalized_cosine(embeddings, self.weight).clamp(-1 + self.eps, 1 - self.eps)
        onehot = F.one_hot(labels, self.num_classes).to(cos.dtype)
        theta = torch.acos(cos) + onehot * (-self.m * z).unsqueeze(1)
        out = torch.cos(theta.clamp(self.eps, math.pi - self.eps)) - onehot * (self.m * z + self.m).unsqueeze(1)
        return out * self.s

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)
