"""The age policy's networks (plain modules; the RL wiring lives in :mod:`exface.agerl.module`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GaussianPolicyNet", "ValueNet"]


def _mlp(inp: int, hidden: int, layers: int, out: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = inp
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.Tanh()]
        d = hidden
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


class GaussianPolicyNet(nn.Module):
    """Observation ``[N, obs_dim]`` -> (loc ``[N, A]``, scale ``[N, A]``) of a Gaussian over pre-tanh actions.

    A state-independent log standard deviation (PPO's usual choice for continuous control),
    initialised at ``init_log_std``; the last layer starts near zero so the initial policy
    is the mean action ``init_loc`` (in pre-tanh units) whatever the observation.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 64, layers: int = 2,
                 init_log_std: float = -0.5, init_loc: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.obs_dim, self.action_dim, self.hidden, self.layers = int(obs_dim), int(action_dim), int(hidden), int(layers)
        self.body = _mlp(self.obs_dim, self.hidden, self.layers, self.action_dim)
        with torch.no_grad():
            self.body[-1].weight.mul_(0.01)
            self.body[-1].bias.zero_()
            if init_loc is not None:
                self.body[-1].bias.copy_(torch.as_tensor(init_loc, dtype=torch.float32))
        self.log_std = nn.Parameter(torch.full((self.action_dim,), float(init_log_std)))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        loc = self.body(obs)
        return loc, self.log_std.exp().expand_as(loc)


class ValueNet(nn.Module):
    """Observation ``[N, obs_dim]`` -> state value ``[N, 1]``."""

    def __init__(self, obs_dim: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.body = _mlp(int(obs_dim), int(hidden), int(layers), 1)

    def forward(self, obs: Tensor) -> Tensor:
        return self.body(obs)
