"""ElasticArcFace and ElasticCosFace: margin losses with a per-sample random margin.

ElasticFace (Boutros et al., CVPRW 2022) replaces the fixed margin m of ArcFace/CosFace by
a margin drawn for each sample from N(m, std). With ``plus=True`` the drawn margins are
sorted and handed out by the sample's current target cosine: the sample nearest to its
class centre gets the smallest margin, the hardest sample the largest.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.losses.base import FRLoss

__all__ = ["ElasticArcFace", "ElasticCosFace"]


class _ElasticMargin(FRLoss):
    register = False

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 std: float = 0.0175, plus: bool = False) -> None:
        super().__init__(embedding_dim, num_classes)
        self.s, self.m, self.std, self.plus = s, m, std, plus
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim).normal_(0, 0.01))

    def margins(self, target_cos: Tensor) -> Tensor:
        """One margin per sample, N(m, std); sorted against the target cosine when ``plus``."""
        margin = torch.randn_like(target_cos) * self.std + self.m
        if self.plus:
            order = torch.argsort(target_cos.detach(), descending=True)
            sorted_margin = torch.sort(margin).values
            margin = torch.empty_like(margin).scatter_(0, order, sorted_margin)
        return margin

    def cosine(self, embeddings: Tensor) -> Tensor:
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float())).clamp(-1, 1)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = self.cosine(embeddings)
        rows = torch.arange(len(labels), device=cos.device)
        target = cos[rows, labels]
        logits = cos.clone()
        logits[rows, labels] = self.apply_margin(target, self.margins(target))
        return F.cross_entropy(logits * self.s, labels)

    @abstractmethod
    def apply_margin(self, target_cos: Tensor, margin: Tensor) -> Tensor:
        """Target logit (before the scale s) for target cosines and per-sample margins."""


class ElasticArcFace(_ElasticMargin):
    """ArcFace with an additive angular margin drawn per sample from N(m, std) (ElasticFace-Arc)."""

    def apply_margin(self, target_cos: Tensor, margin: Tensor) -> Tensor:
        theta = torch.acos(target_cos.clamp(-1 + 1e-7, 1 - 1e-7))
        # Past pi - m, cos(theta + m) is no longer monotonic: fall back to CosFace-style.
        return torch.where(theta + margin < math.pi, torch.cos(theta + margin), target_cos - margin * math.sin(self.m))


class ElasticCosFace(_ElasticMargin):
    """CosFace with an additive cosine margin drawn per sample from N(m, std) (ElasticFace-Cos)."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35,
                 std: float = 0.025, plus: bool = False) -> None:
        super().__init__(embedding_dim, num_classes, s=s, m=m, std=std, plus=plus)

    def apply_margin(self, target_cos: Tensor, margin: Tensor) -> Tensor:
        return target_cos - margin
