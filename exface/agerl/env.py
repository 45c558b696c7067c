"""The age-editing environment: a batched MDP over a generator's latent space, and the driver of every editor.

Shubham et al. (arXiv 2011.00954) cast attribute editing as a Markov decision process over a
pretrained GAN's latent space: a policy moves a latent step by step toward a target age while
the face keeps its identity. They publish no code; this is exface's design from the paper's
description, every choice an option of :class:`AgeEditEnv`.

One episode per latent, N at once (on the parts' device):

- **State** (:class:`~exface.editing.base.EditState`): the current latent, the start latent,
  the current and the target age, the identity cosine of the current face to the start face,
  the start face's embedding, the step counter; ``extra`` holds the start age, the done mask
  and, for editors that ask for it (``uses_gradient``), the gradient of the predicted age with
  respect to the latent (through generator, aligner and age predictor: the *locally linear*
  age direction). The policy's observation is a featurization of this state
  (:func:`exface.agerl.mdp.observation`).
- **Step**: an editor proposes the next latent; the driver clips the move to
  ``||x' - x|| <= max_step`` (the same bound for every editor: one step budget for all),
  leaves ended episodes where they are, renders and scores.
- **Reward** (:meth:`AgeEditEnv.reward_terms`, each term weighted by an option), with
  ``e = |age - target|`` and ``s`` the identity similarity to the start::

      progress   = (e_t - e_{t+1}) / age_scale              # toward the target age
      identity   = -max(0, bound - s_{t+1}) / (1 - bound)     # under the identity bound
      broken     = -[s_{t+1} < bound]                       # once, when the bound breaks
      prior      = -max(0, chi_{t+1})                       # leaving the latent prior
      step       = -1                                       # per step taken (step cost)
      success    = +[e_{t+1} <= tolerance and s_{t+1} >= bound]

  ``chi`` is the z-score of ``||x - mu||^2`` under the prior's own distribution, estimated
  from ``prior_samples`` latents of the space at construction (for z ~ N(0, I) it is the
  chi-square z-score ``(||z||^2 - d) / sqrt(2d)``; for w it measures the distance from the
  mapping network's distribution around its mean). Typical latents have ``chi`` near 0 and
  pay nothing; the penalty grows as a latent leaves the prior's shell.
- **Termination**: ``terminated`` when the target is reached with the bound held (success)
  or when the bound breaks; ``truncated`` after ``max_steps`` steps. The step counter is
  part of the policy's observation, so the time limit is part of the state and the learner
  may treat truncation as terminal.

:class:`AgeEditVectorEnv` exposes the same MDP through gymnasium's vector API (torch tensors
in and out, autoreset disabled) with the policy's action parametrization
(:func:`exface.agerl.mdp.apply_action`); :meth:`AgeEditEnv.run` drives any
:class:`~exface.editing.base.LatentEditor` (boundary walks, gradient walks, the trained
policy) through the same steps and records the trajectory for the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode, VectorEnv
from torch import Tensor, nn

from exface.alignment.base import Aligner
from exface.attributes.base import AttributePredictor
from exface.editing.base import EditState, LatentEditor
from exface.embedders.base import IdentityEmbedder
from exface.generators.base import Generator

__all__ = ["AgeEditEnv", "AgeEditVectorEnv", "Trajectory", "PriorStats", "env_parts"]


@dataclass
class PriorStats:
    """Mean ``mu`` of the latent prior and the mean/std of ``||x - mu||^2`` under it."""

    mu: Tensor
    sq_mean: float
    sq_std: float

    def chi(self, x: Tensor) -> Tensor:
        """``[N]`` z-score of ``||x - mu||^2`` (0 for a typical latent)."""
        d2 = (x.flatten(1) - self.mu.flatten().to(x)).pow(2).sum(1)
        return (d2 - self.sq_mean) / self.sq_std


@dataclass
class Trajectory:
    """One run of an editor over N episodes: per-step records ``[S+1, N]`` (step 0 = start)."""

    value: Tensor
    similarity: Tensor
    done: Tensor
    latents: Tensor | None
    target: Tensor
    steps_used: Tensor
    success: Tensor
    bound_held: Tensor
    meta: dict[str, Any] = field(default_factory=dict)


class AgeEditEnv(nn.Module):
    """Batched age-editing MDP on registered parts; the driver that runs any LatentEditor.

    Args:
        generator, aligner, age_predictor, embedder: the parts. The identity embedding of a
            latent is ``embedder(aligner(generator.synthesize(x)))``; the age is
            ``age_predictor(attribute_aligner(image))[attribute]``, where the attribute
            aligner defaults to ``aligner`` and its crop is resized to the predictor's
            ``input_size`` (as the latent bank scores attributes).
        attribute_aligner: a different crop for the age predictor (default: ``aligner``).
        attribute: the predictor's output key steered (years for ``FaceApiAgeGender``'s
            ``age``).
        space: the latent space edited (one of the generator's ``latent_spaces``).
        identity_bound: the identity cosine to the start face below which the bound is
            broken (episode ends, penalties). Choose it from the embedder's score
            distribution: the recipe's value sits above the 99th percentile of random
            pairs, so a held bound means "still the same person" to the embedder.
        max_step: the largest move ``||x' - x||`` per step (Euclidean, in raw latent units).
        max_steps: T, the step budget per episode.
        tolerance: success when ``|age - target| <= tolerance`` (years) with the bound held.
        age_scale: years that count as one unit of progress reward (and of the observation).
        progress_weight, identity_weight, break_penalty, prior_weight, step_cost,
        success_bonus: weights of the reward terms (module docstring).
        prior_samples, prior_seed: latents drawn once to estimate the prior's statistics.
        batch_size: latents per forward pass when rendering and scoring.
    """

    def __init__(
        self,
        generator: Generator,
        aligner: Aligner,
        age_predictor: AttributePredictor,
        embedder: IdentityEmbedder,
        attribute_aligner: Aligner | None = None,
        attribute: str = "age",
        space: str = "z",
        identity_bound: float = 0.95,
        max_step: float = 0.5,
        max_steps: int = 8,
        tolerance: float = 3.0,
        age_scale: float = 15.0,
        progress_weight: float = 1.0,
        identity_weight: float = 1.0,
        break_penalty: float = 1.0,
        prior_weight: float = 0.1,
        step_cost: float = 0.02,
        success_bonus: float = 1.0,
        prior_samples: int = 2000,
        prior_seed: int = 12345,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        generator.check_space(space)
        if attribute not in age_predictor.attribute_names:
            raise ValueError(
                f"{type(age_predictor).__name__} has no attribute {attribute!r}; it predicts "
                f"{list(age_predictor.attribute_names)}"
            )
        if not 0.0 < identity_bound < 1.0:
            raise ValueError(f"identity_bound must be a cosine in (0, 1), got {identity_bound}")
        if max_step <= 0 or max_steps < 1 or tolerance <= 0 or age_scale <= 0:
            raise ValueError("max_step, max_steps, tolerance and age_scale must be positive")
        self.generator = generator.requires_grad_(False)
        self.aligner = aligner
        self.age_predictor = age_predictor.requires_grad_(False)
        self.embedder = embedder.requires_grad_(False)
        self.attribute_aligner = attribute_aligner
        self.attribute = attribute
        self.space = space
        self.identity_bound = float(identity_bound)
        self.max_step = float(max_step)
        self.max_steps = int(max_steps)
        self.tolerance = float(tolerance)
        self.age_scale = float(age_scale)
        self.weights = dict(progress=float(progress_weight), identity=float(identity_weight),
                            broken=float(break_penalty), prior=float(prior_weight), step=float(step_cost),
                            success=float(success_bonus))
        self.batch_size = int(batch_size)
        self.prior = self._prior_stats(int(prior_samples), int(prior_seed))
        self.state: EditState | None = None

    # ------------------------------------------------------------------ parts
    @property
    def device(self) -> torch.device:
        return self.generator.device

    def latent_shape(self) -> tuple[int, ...]:
        g = self.generator
        return {"z": (g.z_dim,), "w": (g.w_dim,), "w+": (g.num_ws, g.w_dim)}[self.space]

    @torch.no_grad()
    def sample_latents(self, n: int, seed: int) -> Tensor:
        """``n`` start latents of the env's space from a seed (z drawn by the generator, then mapped)."""
        z = self.generator.sample_z(n, seed=seed, device=self.device)
        if self.space == "z":
            return z
        w = self.generator.to_w(z)
        if self.space == "w+":
            w = w[:, None].repeat(1, self.generator.num_ws, 1) if w.ndim == 2 else w
        return w

    def _prior_stats(self, n: int, seed: int) -> PriorStats:
        x = self.sample_latents(n, seed).float().flatten(1)
        mu = x.mean(0) if self.space != "z" else torch.zeros_like(x[0])
        d2 = (x - mu).pow(2).sum(1)
        if self.space == "z":  # exact for N(0, I)
            d = x.shape[1]
            return PriorStats(mu.cpu(), float(d), math.sqrt(2.0 * d))
        return PriorStats(mu.cpu(), float(d2.mean()), float(d2.std().clamp_min(1e-6)))

    def _age_input(self, images: Tensor, crops: Tensor) -> Tensor:
        x = self.attribute_aligner(images) if self.attribute_aligner is not None else crops
        size = tuple(self.age_predictor.input_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=x.shape[-1] > size[-1])
        return x

    def measure(self, latent: Tensor, with_gradient: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Age ``[N]``, identity embedding ``[N, D]`` and (optionally) d age / d latent of latents."""
        ages, embs, grads = [], [], []
        for b0 in range(0, latent.shape[0], self.batch_size):
            x = latent[b0 : b0 + self.batch_size].detach().to(self.device, torch.float32)
            with torch.enable_grad() if with_gradient else torch.no_grad():
                if with_gradient:
                    x.requires_grad_(True)
                images = self.generator.synthesize(x, space=self.space)
                crops = self.aligner(images)
                age = self.age_predictor(self._age_input(images, crops))[self.attribute].float()
                if with_gradient:
                    (g,) = torch.autograd.grad(age.sum(), x)
                    grads.append(g.detach())
            with torch.no_grad():
                embs.append(self.embedder(crops.detach().to(self.embedder.device)).float().to(self.device))
            ages.append(age.detach())
        grad = torch.cat(grads) if with_gradient else None
        return torch.cat(ages), torch.cat(embs), grad

    # --------------------------------------------------------------- episodes
    def reset(self, start_latent: Tensor, target: Tensor | float, with_gradient: bool = False,
              relative: bool = False) -> EditState:
        """Start N episodes at ``start_latent`` with target ages ``target`` ``[N]`` (years).

        ``relative=True``: ``target`` is an offset from each start latent's own age.
        """
        x0 = start_latent.detach().to(self.device, torch.float32)
        if tuple(x0.shape[1:]) != self.latent_shape():
            raise ValueError(f"start latents must be [N, {', '.join(map(str, self.latent_shape()))}] "
                             f"in space {self.space!r}, got {tuple(x0.shape)}")
        age, emb, grad = self.measure(x0, with_gradient)
        n = x0.shape[0]
        target = torch.as_tensor(target, dtype=torch.float32, device=self.device).expand(n).clone()
        if relative:
            target = target + age
        extra = {"start_value": age.clone(), "done": torch.zeros(n, dtype=torch.bool, device=self.device)}
        if grad is not None:
            extra["value_grad"] = grad
        self.state = EditState(latent=x0, start_latent=x0.clone(), value=age, target=target,
                               similarity=torch.ones(n, device=self.device), start_embedding=emb,
                               step=0, max_steps=self.max_steps, extra=extra)
        return self.state

    def clip_step(self, latent: Tensor, proposed: Tensor) -> Tensor:
        """``latent + delta`` with ``||delta|| <= max_step`` (per latent, over all its dims)."""
        delta = (proposed.to(latent) - latent).flatten(1)
        norm = delta.norm(dim=1, keepdim=True)
        delta = delta * (self.max_step / norm.clamp_min(1e-12)).clamp(max=1.0)
        return latent + delta.view_as(latent)

    def reward_terms(self, err_before: Tensor, err_after: Tensor, similarity: Tensor, chi: Tensor) -> dict[str, Tensor]:
        """The unweighted reward terms ``[N]`` of one step (module docstring)."""
        b = self.identity_bound
        broken = similarity < b
        return {
            "progress": (err_before - err_after) / self.age_scale,
            "identity": -(b - similarity).clamp_min(0.0) / (1.0 - b),
            "broken": -broken.float(),
            "prior": -chi.clamp_min(0.0),
            "step": -torch.ones_like(similarity),
            "success": ((err_after <= self.tolerance) & ~broken).float(),
        }

    def reward(self, terms: dict[str, Tensor]) -> Tensor:
        return sum(self.weights[k] * v for k, v in terms.items())

    def step_to(self, proposed: Tensor, with_gradient: bool = False) -> tuple[EditState, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Move every live episode to (the clipped) ``proposed``; gymnasium's step tuple.

        Returns ``(state, reward, terminated, truncated, info)``; ``reward`` is 0 and
        ``terminated``/``truncated`` False for episodes that had already ended (they stay
        where they were). ``info["terms"]`` holds the unweighted reward terms.
        """
        s = self.state
        if s is None:
            raise RuntimeError("call reset() before step_to()")
        done = s.extra["done"]
        live = ~done
        new = self.clip_step(s.latent, proposed.detach())
        new = torch.where(live.view(-1, *[1] * (new.ndim - 1)), new, s.latent)
        age, emb, grad = s.value.clone(), None, s.extra.get("value_grad")
        sim = s.similarity.clone()
        idx = live.nonzero().flatten()
        if len(idx):
            a, e, g = self.measure(new[idx], with_gradient)
            age[idx] = a
            sim[idx] = (e * s.start_embedding[idx]).sum(1)
            if g is not None:
                grad = grad.clone() if grad is not None else torch.zeros_like(new)
                grad[idx] = g
        err_before = (s.value - s.target).abs()
        err_after = (age - s.target).abs()
        terms = self.reward_terms(err_before, err_after, sim, self.prior.chi(new))
        reward = torch.where(live, self.reward(terms), torch.zeros_like(sim))
        success = terms["success"].bool() & live
        broken = (sim < self.identity_bound) & live
        terminated = success | broken
        step = s.step + 1
        truncated = live & ~terminated & (step >= self.max_steps)
        extra = dict(s.extra)
        extra["done"] = done | terminated | truncated
        if grad is not None:
            extra["value_grad"] = grad
        self.state = EditState(latent=new, start_latent=s.start_latent, value=age, target=s.target,
                               similarity=sim, start_embedding=s.start_embedding, step=step,
                               max_steps=self.max_steps, extra=extra)
        info = {"terms": terms, "success": success, "broken": broken}
        return self.state, reward, terminated, truncated, info

    # --------------------------------------------------------------- drivers
    def check_editor(self, editor: LatentEditor) -> None:
        if editor.space != self.space or editor.attribute != self.attribute:
            raise ValueError(
                f"{type(editor).__name__} edits {editor.attribute!r} in space {editor.space!r}; this "
                f"environment edits {self.attribute!r} in {self.space!r}"
            )

    @torch.no_grad()
    def run(self, editor: LatentEditor, start_latent: Tensor, target: Tensor | float, relative: bool = False,
            keep_latents: bool = False) -> Trajectory:
        """Run ``editor`` for up to ``max_steps`` steps on every start latent; the full record.

        ``relative``: ``target`` is an offset from each start age (as in :meth:`reset`).
        """
        self.check_editor(editor)
        grad = bool(editor.uses_gradient)
        state = self.reset(start_latent, target, with_gradient=grad, relative=relative)
        values, sims, dones = [state.value.clone()], [state.similarity.clone()], [state.extra["done"].clone()]
        lat = [state.latent.cpu()] if keep_latents else None
        success = torch.zeros_like(state.extra["done"])
        while not bool(state.extra["done"].all()) and state.step < self.max_steps:
            state, _, _, _, info = self.step_to(editor.propose(state), with_gradient=grad)
            success |= info["success"]
            values.append(state.value.clone())
            sims.append(state.similarity.clone())
            dones.append(state.extra["done"].clone())
            if lat is not None:
                lat.append(state.latent.cpu())
        while len(values) < self.max_steps + 1:  # episodes all ended early: pad with the final state
            values.append(values[-1])
            sims.append(sims[-1])
            dones.append(dones[-1])
            if lat is not None:
                lat.append(lat[-1])
        done = torch.stack(dones)
        steps_used = (~done[:-1]).sum(0)
        final_sim = torch.stack(sims)[-1]
        final_err = (torch.stack(values)[-1] - state.target).abs()
        bound_held = final_sim >= self.identity_bound
        return Trajectory(
            value=torch.stack(values).cpu(), similarity=torch.stack(sims).cpu(), done=done.cpu(),
            latents=torch.stack(lat) if lat is not None else None, target=state.target.cpu(),
            steps_used=steps_used.cpu(), success=((final_err <= self.tolerance) & bound_held).cpu(),
            bound_held=bound_held.cpu(), meta={"editor": type(editor).__name__},
        )


def env_parts(env: AgeEditEnv) -> dict[str, Any]:
    """Fingerprints (class, arguments, weights digest) of the environment's parts: what a policy
    file and an age report record, and what a policy or a merged report is compared by."""
    from exface.exfacegan.provenance import part_fingerprint

    return {"generator": part_fingerprint(env.generator), "aligner": part_fingerprint(env.aligner),
            "attribute_aligner": None if env.attribute_aligner is None else part_fingerprint(env.attribute_aligner),
            "age_predictor": part_fingerprint(env.age_predictor), "embedder": part_fingerprint(env.embedder)}


class AgeEditVectorEnv(VectorEnv):
    """gymnasium vector API over :class:`AgeEditEnv` with the policy's action parametrization.

    ``num_envs`` episodes at once; observations ``[num_envs, obs_dim]`` and actions
    ``[num_envs, 3]`` in [-1, 1] are torch tensors on the parts' device (gymnasium's vector
    API does not require numpy). Autoreset is disabled: ended episodes stay ended (reward 0)
    until :meth:`reset`. ``reset(seed=s, options={"target_offset": Tensor | float})`` draws
    start latents from the seed; ``options={"start_latent": x, "target": t}`` sets them.
    """

    metadata = {"autoreset_mode": AutoresetMode.DISABLED}

    def __init__(self, env: AgeEditEnv, num_envs: int, include_latent: bool = False) -> None:
        from exface.agerl.mdp import ACTION_DIM, observation_dim

        self.env = env
        self.num_envs = int(num_envs)
        self.include_latent = bool(include_latent)
        obs_dim = observation_dim(env.latent_shape(), include_latent)
        self.single_observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.single_action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (self.num_envs, obs_dim), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (self.num_envs, ACTION_DIM), np.float32)

    def observe(self) -> Tensor:
        from exface.agerl.mdp import observation

        return observation(self.env.state, self.env, self.include_latent)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        if "start_latent" in options:
            x0 = options["start_latent"]
        else:
            x0 = self.env.sample_latents(self.num_envs, seed=0 if seed is None else int(seed))
        if "target" in options:
            self.env.reset(x0, options["target"], with_gradient=True)
        else:
            self.env.reset(x0, options.get("target_offset", 15.0), with_gradient=True, relative=True)
        return self.observe(), {}

    def step(self, actions: Tensor):
        from exface.agerl.mdp import apply_action

        proposed = apply_action(self.env.state, actions, self.env.max_step, self.env.prior.mu)
        _, reward, terminated, truncated, info = self.env.step_to(proposed, with_gradient=True)
        return self.observe(), reward, terminated, truncated, info
