"""The generator contract every face GAN in exface fulfils."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from exface.registry import Registrable
from exface.tensors import module_device

__all__ = ['Generator', 'LATENT_SPACES']

LATENT_SPACES = ("z", "w", "w+")


class Generator(Registrable, nn.Module, ABC):
    """A pretrained face generator: latents in, RGB images in [-1, 1] out.

    Contract
    - ``z_dim``: size of the input noise z; ``w_dim``: size of the intermediate latent
      (equal to ``z_dim`` for generators with no mapping network); ``num_ws``: how many
      w vectors the synthesis network consumes (w+ has shape ``[N, num_ws, w_dim]``).
    - ``latent_spaces``: the spaces this generator accepts, a subset of ``("z", "w", "w+")``.
    - ``resolution``: the native output size (square).
    - :meth:`sample_z` draws z reproducibly from a seed; :meth:`to_w` maps z to w (with
      truncation where the model has a mapping network); :meth:`synthesize` renders a
      batch from any supported space. Output is ``[N, 3, resolution, resolution]``,
      float, RGB, in [-1, 1].
    """

    registry_kind: ClassVar[str] = "generators"
    latent_spaces: ClassVar[tuple[str, ...]] = ("z",)

    z_dim: int
    w_dim: int
    num_ws: int = 1
    resolution: int

    def sample_z(self, n: int, seed: int | None = None, device: torch.device | str | None = None) -> Tensor:
        """``n`` standard-normal z vectors; the same seed gives the same latents on any device."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        z = torch.randn(n, self.z_dim, generator=gen)
        return z.to(device or self.device)

    def to_w(self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None) -> Tensor:
        """Map z to w ``[N, w_dim]``; the identity for generators without a mapping network."""
        return z

    @abstractmethod
    def synthesize(self, latent: Tensor, space: str = "z", **kwargs) -> Tensor:
        """Render images in [-1, 1] from latents of ``space`` (one of :attr:`latent_spaces`)."""

    def forward(self, latent: Tensor, space: str = "z", **kwargs) -> Tensor:
        return self.synthesize(latent, space=space, **kwargs)

    def check_space(self, space: str) -> None:
        if space not in self.latent_spaces:
            raise ValueError(
                f"{type(self).__name__} has latent spaces {self.latent_spaces}, not {space!r}; "
                f"pass space= one of those"
            )

    @property
    def device(self) -> torch.device:
        return module_device(self)
