"""A tiny deterministic age predictor for pipeline tests (a random network, never a measurement)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.attributes.base import AttributePredictor
from exface.testing.tiny import _seeded_init

__all__ = ["TinyAgePredictor", "age_rl_recipe_overrides"]


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


def age_rl_recipe_overrides(tmp_path: str | Path) -> list[str]:
    """CLI overrides that run ``recipes/dcgan_faceapi_age_rl.yaml`` on tiny parts under ``tmp_path``."""
    tmp_path = Path(tmp_path)
    e = "--model.init_args.env.init_args"
    return [
        f"{e}.generator=exface.testing.tiny.TinyGenerator", f"{e}.generator.init_args.resolution=16",
        f"{e}.embedder=exface.testing.tiny.TinyEmbedder",
        f"{e}.age_predictor=exface.testing.tiny_age.TinyAgePredictor",
        f"{e}.aligner=ResizeAligner", f"{e}.aligner.init_args.output_size=[16,16]",
        f"{e}.attribute_aligner=ResizeAligner", f"{e}.attribute_aligner.init_args.output_size=[16,16]",
        f"{e}.space=z", f"{e}.prior_samples=200", f"{e}.max_steps=3",
        "--model.init_args.num_envs=6", "--model.init_args.minibatch_size=8", "--model.init_args.ppo_epochs=2",
        f"--model.init_args.save_path={tmp_path / 'policy.pt'}",
        "--trainer.callbacks.init_args.dirpath=" + str(tmp_path / "ckpt"),
    ]
