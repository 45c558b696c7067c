"""Age editors on the :class:`~exface.editing.base.LatentEditor` contract: the gradient walk and the trained policy.

- :class:`GradientWalkEditor`: the locally linear walk, a step of ``step_size`` along the
  gradient of the predicted age with respect to the latent (through generator, aligner and
  predictor), toward the target. The baseline the policy's action builds on.
- :class:`AgePolicyEditor`: the policy trained by :class:`~exface.agerl.module.AgePolicyModule`,
  loaded from its policy file, acting deterministically (the squashed mean action).

The InterFaceGAN baseline (a walk along the age boundary's normal) is
:class:`exface.interfacegan.manipulation.BoundaryEditor`; the driver and the report run all
three the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from exface.agerl.mdp import ObservationConfig, apply_action, observation
from exface.editing.base import EditState, LatentEditor
from exface.errors import ExfaceFileError
from exface.models.age_policy import GaussianPolicyNet

__all__ = ["GradientWalkEditor", "AgePolicyEditor", "load_policy_file"]


class GradientWalkEditor(LatentEditor):
    """Locally linear age walk: ``x + step_size * sign(target - age) * g / |g|`` with ``g = d age / d x``.

    Args:
        step_size: length of each step in latent units (the driver also clips every
            editor's step to its ``max_step``).
        attribute, space: what is steered and where.
        shorten: shorten a step to ``|target - age| / |g|`` (the step the linear model says
            lands on the target) when that is shorter; off = fixed-length steps.
    """

    uses_gradient = True

    def __init__(self, step_size: float = 0.5, attribute: str = "age", space: str = "z", shorten: bool = False) -> None:
        if step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        self.step_size = float(step_size)
        self.attribute = attribute
        self.space = space
        self.shorten = bool(shorten)

    def propose(self, state: EditState) -> Tensor:
        g = state.get("value_grad").flatten(1).float()
        norm = g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        gap = (state.target - state.value).to(g)[:, None]
        step = torch.full_like(gap, self.step_size)
        if self.shorten:
            step = torch.minimum(step, gap.abs() / norm)
        delta = torch.sign(gap) * step * g / norm
        return state.latent + delta.view_as(state.latent).to(state.latent)


def load_policy_file(path: str | Path) -> dict:
    """A policy file written by ``AgePolicyModule.save_policy`` (refuses other files with the fix)."""
    from exface.agerl.module import POLICY_FORMAT
    from exface.torch_files import read_torch_file

    path = Path(path)
    train = "`exface fit --config recipes/dcgan_faceapi_age_rl.yaml` (it writes model.init_args.save_path)"
    if not path.is_file():
        raise ExfaceFileError(
            "the policy file does not exist", where=path,
            fix=f"train one with {train}, or pass the path of an existing policy file",
        )
    rec = read_torch_file(path, "the policy file", "age-policy", f"re-create it with {train}, or copy it again")
    if not isinstance(rec, dict) or rec.get("format") != POLICY_FORMAT:
        found = rec.get("format") if isinstance(rec, dict) else None
        raise ExfaceFileError(f"the file is not an exface age-policy file (format {found!r}, expected {POLICY_FORMAT!r})",
                              where=path, fix=f"pass the policy file written by {train}")
    return rec


class AgePolicyEditor(LatentEditor):
    """The trained RL age policy (``exface fit --config recipes/dcgan_faceapi_age_rl.yaml``) as an editor.

    Acts deterministically with the tanh of the Gaussian's mean; the observation and the
    action parametrization are :mod:`exface.agerl.mdp`'s, with the identity bound, step bound
    and prior statistics the policy was trained with (saved in the file). Run it in a driver
    with the same bound and step size for a fair comparison (the report checks).

    Args:
        path: the policy file (``model.init_args.save_path`` of the recipe).
    """

    uses_gradient = True

    def __init__(self, path: str) -> None:
        self.path = str(path)
        rec = load_policy_file(path)
        self.record = rec
        self.net = GaussianPolicyNet(**rec["policy_args"])
        self.net.load_state_dict(rec["policy_state"])
        self.net.eval().requires_grad_(False)
        self.obs_cfg = ObservationConfig(**rec["observation"])
        self.include_latent = bool(rec["include_latent"])
        self.attribute = rec["attribute"]
        self.space = rec["space"]

    @torch.no_grad()
    def propose(self, state: EditState) -> Tensor:
        obs = observation(state, self.obs_cfg, self.include_latent)
        net = self.net.to(obs.device)
        loc, _ = net(obs)
        return apply_action(state, torch.tanh(loc), self.obs_cfg.max_step, self.obs_cfg.prior_mu)
