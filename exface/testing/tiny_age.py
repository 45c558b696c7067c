"""A tiny deterministic age predictor for pipeline tests (a random network, never a measurement)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.attributes.base import AttributePredictor
from exface.testing.tiny import _seeded_init

__all__ = ["TinyAgePredictor"]


class TinyAgePredictor(AttributePredictor):
    """Random conv net: crops ``[N, 3, *input_size]`` -> ``age`` = 40 + 30 tanh(.) "years" (differentiable)."""

    attribute_names = ("age",)

    def __init__(self, input_size: tuple[int, int] = (16, 16), seed: int = 0) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.seed = int(seed)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 1)
        _seeded_init(self, self.seed)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = F.adaptive_avg_pool2d(torch.tanh(self.conv(images)), 4).flatten(1)
        return {"age": 40.0 + 30.0 * torch.tanh(3.0 * self.fc(x)[:, 0])}
