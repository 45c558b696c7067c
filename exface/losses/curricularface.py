"""CurricularFace (Huang et al., CVPR 2020): an ArcFace margin plus a curriculum on hard negatives.

Target logit: ArcFace ``cos(theta_y + m)`` (past ``theta_y = pi - m`` the authors' code uses
``cos(theta_y) - m sin(m)``, which is what is done here to match their published models).
Negative logit ``cos(theta_j)`` is modulated when the negative is *hard*, i.e. when
``cos(theta_j) > cos(theta_y + m)``: ``N = cos(theta_j) (t + cos(theta_j))``; easy negatives keep
``cos(theta_j)``. ``t`` is the curriculum: an exponential moving average of the batch's mean
target cosine, ``t <- alpha r + (1 - alpha) t`` with ``alpha = 0.01`` (the paper's momentum
0.99), ``t0 = 0``; as in the authors' code it is updated with the current batch before it is
used. Logits are scaled by ``s``. Unlike exface's ArcFace (straight-through margin), the
gradients here are those of the formulas, as in the authors' code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.losses.base import FRLoss
from exface.losses.margin import _check_labels, normalized_cosine

__all__ = ["CurricularFace"]


class CurricularFace(FRLoss):
    """CurricularFace loss (defaults: the paper's ``s = 64, m = 0.5``, momentum 0.99)."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 t_alpha: float = 0.01) -> None:
        super().__init__(embedding_dim, num_classes)
        self.s, self.m, self.t_alpha = float(s), float(m), float(t_alpha)
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_dim)))
        self.register_buffer("t", torch.zeros(()))

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scaled logits ``[N, C]``; in training mode this also advances ``t``."""
        _check_labels(labels, self.num_classes)
        cos = normalized_cosine(embeddings, self.weight)
        rows = torch.arange(len(labels), device=cos.device)
        target = cos[rows, labels].unsqueeze(1)
        sin = (1.0 - target.pow(2)).clamp_min(0).sqrt()
        target_m = target * math.cos(self.m) - sin * math.sin(self.m)  # cos(theta + m)
        final_target = torch.where(target > math.cos(math.pi - self.m), target_m,
                                   target - math.sin(math.pi - self.m) * self.m)
        if self.training:
            with torch.no_grad():
                self.t.mul_(1 - self.t_alpha).add_(self.t_alpha * target.mean())
        hard = cos > target_m
        out = torch.where(hard, cos * (self.t + cos), cos)
        out = out.scatter(1, labels.unsqueeze(1), final_target)
        return out * self.s

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)
