"""The policy's view of the age-editing MDP: observation features and the action parametrization.

Both are functions of an :class:`~exface.editing.base.EditState`, so the same code maps the
policy's output to a latent during training (:class:`~exface.agerl.env.AgeEditVectorEnv`)
and when the trained policy runs as an editor (:class:`~exface.agerl.editors.AgePolicyEditor`)
beside the baselines.

**Action** (``ACTION_DIM = 3``, each component in [-1, 1]; the paper's "step along the locally
linear age direction plus a bounded correction")::

    x' = x + max_step * (a0 * u + a1 * v1 + a2 * v2)         (then clipped to max_step)

- ``u``: the unit locally linear age direction, the gradient of the predicted age with
  respect to the latent, signed toward the target (``sign(target - age) * g / |g|``);
  ``a0 < 0`` steps away from the target (to undo an overshoot).
- ``v1``: the unit direction back to the start latent, with its ``u`` component removed: a
  correction that restores identity without undoing the age change (to first order).
- ``v2``: the unit direction toward the prior's centre (``-x``, or ``mu - x`` in w), with its
  ``u`` and ``v1`` components removed: a correction back into the prior's typical shell.

Why this and not a free d-dimensional step: with ~10^4 environment steps affordable on two
CPU cores (every step renders, ages and embeds the face), a policy over 100-512 raw latent
dimensions learns little; three coefficients on directions that carry the task let it learn
*how far* to step and how much to correct, which is what a fixed-step walk cannot adapt.
Directions with zero length (at the start, ``v1 = 0``) contribute nothing.

**Observation** (``BASE_FEATURES = 8``, then optionally the latent itself)::

    (target - age) / age_scale, (age - start_age) / age_scale,
    (similarity - bound) / (1 - bound), step / max_steps, chi(x) / 10 (prior z-score),
    ||x - x0|| / (max_step * max_steps), log(|g| * max_step / age_scale) / 3 (local steepness),
    sign(target - start_age)

The local steepness ``|g|`` (years per latent unit) tells the policy how far a step of a
given length moves the age, which a fixed-step walk ignores. ``include_latent`` appends the
raw latent (the paper conditions on it); off by default for sample efficiency (see above).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from exface.editing.base import EditState

if TYPE_CHECKING:
    from exface.agerl.env import AgeEditEnv

__all__ = ["ACTION_DIM", "BASE_FEATURES", "ObservationConfig", "observation", "observation_dim", "apply_action",
           "step_directions"]

ACTION_DIM = 3
BASE_FEATURES = 8


def observation_dim(latent_shape: tuple[int, ...], include_latent: bool) -> int:
    return BASE_FEATURES + (math.prod(latent_shape) if include_latent else 0)


class ObservationConfig:
    """The env settings an observation depends on (saved with a policy, so it sees what it was trained on)."""

    def __init__(self, identity_bound: float, max_step: float, age_scale: float, prior_mu: Tensor,
                 prior_sq_mean: float, prior_sq_std: float) -> None:
        self.identity_bound = float(identity_bound)
        self.max_step = float(max_step)
        self.age_scale = float(age_scale)
        self.prior_mu = prior_mu
        self.prior_sq_mean = float(prior_sq_mean)
        self.prior_sq_std = float(prior_sq_std)

    @classmethod
    def from_env(cls, env: "AgeEditEnv") -> "ObservationConfig":
        return cls(env.identity_bound, env.max_step, env.age_scale, env.prior.mu, env.prior.sq_mean, env.prior.sq_std)

    def to_dict(self) -> dict:
        return {"identity_bound": self.identity_bound, "max_step": self.max_step, "age_scale": self.age_scale,
                "prior_mu": self.prior_mu.cpu(), "prior_sq_mean": self.prior_sq_mean,
                "prior_sq_std": self.prior_sq_std}


def _cfg(env_or_cfg) -> ObservationConfig:
    return env_or_cfg if isinstance(env_or_cfg, ObservationConfig) else ObservationConfig.from_env(env_or_cfg)


def observation(state: EditState, env_or_cfg, include_latent: bool = False) -> Tensor:
    """``[N, obs_dim]`` features of a state (module docstring); needs ``extra['value_grad']``."""
    c = _cfg(env_or_cfg)
    x = state.latent.flatten(1).float()
    x0 = state.start_latent.flatten(1).float().to(x)
    start_value = state.get("start_value")
    g = state.get("value_grad").flatten(1).float()
    mu = c.prior_mu.flatten().to(x)
    chi = ((x - mu).pow(2).sum(1) - c.prior_sq_mean) / c.prior_sq_std
    steep = torch.log((g.norm(dim=1) * c.max_step / c.age_scale).clamp_min(1e-6)) / 3.0
    feats = [
        (state.target - state.value) / c.age_scale,
        (state.value - start_value) / c.age_scale,
        (state.similarity - c.identity_bound) / (1.0 - c.identity_bound),
        torch.full_like(state.value, state.step / max(1, state.max_steps)),
        chi / 10.0,
        (x - x0).norm(dim=1) / (c.max_step * max(1, state.max_steps)),
        steep,
        torch.sign(state.target - start_value),
    ]
    out = torch.stack([f.float() for f in feats], dim=1)
    if include_latent:
        out = torch.cat([out, x], dim=1)
    return out


def _unit(v: Tensor) -> Tensor:
    n = v.norm(dim=1, keepdim=True)
    return torch.where(n > 1e-8, v / n.clamp_min(1e-12), torch.zeros_like(v))


def step_directions(state: EditState, prior_mu: Tensor | None = None) -> Tensor:
    """``[N, 3, d]`` the orthonormal directions ``u, v1, v2`` of the action (module docstring)."""
    x = state.latent.flatten(1).float()
    g = state.get("value_grad").flatten(1).float().to(x)
    sign = torch.sign(state.target - state.value).to(x)[:, None]
    u = _unit(g) * sign
    back = state.start_latent.flatten(1).float().to(x) - x
    back = back - (back * u).sum(1, keepdim=True) * u
    v1 = _unit(back)
    mu = torch.zeros_like(x[0]) if prior_mu is None else prior_mu.flatten().to(x)
    home = mu - x
    home = home - (home * u).sum(1, keepdim=True) * u - (home * v1).sum(1, keepdim=True) * v1
    v2 = _unit(home)
    return torch.stack([u, v1, v2], dim=1)


def apply_action(state: EditState, action: Tensor, max_step: float, prior_mu: Tensor | None = None) -> Tensor:
    """The proposed next latents ``[N, *shape]`` for actions ``[N, 3]`` in [-1, 1]."""
    a = action.float().clamp(-1.0, 1.0).to(state.latent.device)
    dirs = step_directions(state, prior_mu)
    delta = max_step * (a[:, :, None] * dirs).sum(1)
    return state.latent + delta.view_as(state.latent).to(state.latent)
