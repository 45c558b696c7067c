"""The two small MLPs of identity/attribute disentanglement (Nitzan et al. 2020, arXiv 2005.07728).

- :class:`LatentMapper`: concatenated (identity, attribute) codes -> a latent of a frozen
  generator. The paper's StyleGAN mapper is ``2560 -> 2048 -> 1024 -> 512 -> 512`` with
  LeakyReLU(0.2) between the layers and none after the last (its code:
  ``model/latent_mapping.py``); here the input, hidden and output sizes are arguments, so the
  same network maps into DCGAN's z (100-D) or StyleGAN's w (512-D).
- :class:`LatentDiscriminator`: a latent -> one logit (real latent of the generator vs a
  mapped one), ``512 -> 256 -> 128 -> 64 -> 1`` with LeakyReLU(0.2) in the paper
  (``model/discriminator.py``).

Initialization follows the reference code: He (Kaiming) normal with the LeakyReLU(0.2) gain
for the discriminator's layers and the mapper's last two layers; PyTorch's default for the
mapper's first layers (the reference leaves Keras' Glorot default there; both are
variance-preserving, the difference is immaterial at these sizes).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["LatentMapper", "LatentDiscriminator", "leaky_mlp"]

SLOPE = 0.2


def leaky_mlp(sizes: Sequence[int], he_init_last: int) -> nn.Sequential:
    """Linear layers of ``sizes`` (in, hidden..., out) with LeakyReLU(0.2) between them.

    ``he_init_last``: how many of the last layers get He-normal weights for the LeakyReLU
    gain (``std = sqrt(2 / (1 + 0.2^2) / fan_in)``) and zero bias.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"an MLP needs an input and an output size >= 1, got {sizes}")
    layers: list[nn.Module] = []
    linears = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.LeakyReLU(SLOPE))
        lin = nn.Linear(a, b)
        layers.append(lin)
        linears.append(lin)
    for lin in linears[len(linears) - he_init_last:] if he_init_last > 0 else []:
        nn.init.kaiming_normal_(lin.weight, a=SLOPE, nonlinearity="leaky_relu")
        nn.init.zeros_(lin.bias)
    return nn.Sequential(*layers)


class LatentMapper(nn.Module):
    """(identity code, attribute code) -> generator latent ``[N, out_dim]``.

    Args:
        id_dim: size of the identity embedding.
        attr_dim: size of the attribute code.
        out_dim: size of the generator latent (z_dim for z, w_dim for w).
        hidden: hidden layer sizes (the paper: ``(2048, 1024, 512)``).
    """

    def __init__(self, id_dim: int, attr_dim: int, out_dim: int, hidden: Sequence[int] = (2048, 1024, 512)) -> None:
        super().__init__()
        self.id_dim, self.attr_dim, self.out_dim = int(id_dim), int(attr_dim), int(out_dim)
        self.net = leaky_mlp([self.id_dim + self.attr_dim, *hidden, self.out_dim], he_init_last=min(2, len(hidden) + 1))

    def forward(self, id_code: Tensor, attr_code: Tensor) -> Tensor:
        if id_code.shape[-1] != self.id_dim or attr_code.shape[-1] != self.attr_dim:
            raise ValueError(
                f"LatentMapper takes identity codes of size {self.id_dim} and attribute codes of size "
                f"{self.attr_dim}, got {id_code.shape[-1]} and {attr_code.shape[-1]}"
            )
        return self.net(torch.cat([id_code, attr_code], dim=-1))


class LatentDiscriminator(nn.Module):
    """A generator latent ``[N, dim]`` -> ``[N]`` logits (positive: a latent of the generator's own prior).

    Args:
        dim: latent size.
        hidden: hidden layer sizes (the paper: ``(256, 128, 64)``).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 128, 64)) -> None:
        super().__init__()
        self.dim = int(dim)
        self.net = leaky_mlp([self.dim, *hidden, 1], he_init_last=len(hidden) + 1)

    def forward(self, latent: Tensor) -> Tensor:
        return self.net(latent).squeeze(-1)
