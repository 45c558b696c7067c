"""The offline default generator: DCGAN trained on DigiFace-1M (gan-face-generate 1.1.1)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from exface.generators.base import Generator
from exface.models.dcgan import load_dcgan_weights

__all__ = ["DCGANDigiFace"]


class DCGANDigiFace(Generator):
    """DCGAN trained on DigiFace-1M (the offline default): z [N, 100] -> 64x64 RGB.

    Images are in [-1, 1]. There is no mapping network, so z is the only latent space.

    Args:
        weights: path of the package's ``weights.tar``; None fetches the model-zoo entry
            ``dcgan-digiface`` (the ``gan-face-generate==1.1.1`` wheel from PyPI).
    """

    latent_spaces: ClassVar[tuple[str, ...]] = ("z",)

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        if weights is None:
            from exface.zoo import fetch

            weights = str(fetch("dcgan-digiface"))
        self.weights = str(weights)
        self.net = load_dcgan_weights(weights)
        self.z_dim = self.w_dim = self.net.nz
        self.num_ws = 1
        self.resolution = 64

    def train(self, mode: bool = True) -> "DCGANDigiFace":
        """Batch norm keeps its trained running statistics: the network stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def synthesize(self, latent: Tensor, space: str = "z", **kwargs) -> Tensor:
        self.check_space(space)
        if kwargs:
            raise TypeError(f"DCGANDigiFace.synthesize takes no options, got {sorted(kwargs)}")
        if latent.ndim != 2 or latent.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [N, {self.z_dim}], got {tuple(latent.shape)}")
        z = latent.to(self.device, torch.float32).reshape(-1, self.z_dim, 1, 1)
        return self.net(z).clamp(-1, 1)
