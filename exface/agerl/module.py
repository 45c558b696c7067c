"""``AgePolicyModule``: PPO (TorchRL's loss modules) on the age-editing MDP, as a Lightning run.

Algorithm choice: **PPO with TorchRL's** :class:`~torchrl.objectives.ClipPPOLoss` and
:class:`~torchrl.objectives.value.GAE`. TorchRL ships losses and advantage estimators as
modules and leaves the loop to the caller, so the loop is a LightningModule's
``training_step`` and logging, checkpoints, resume and devices are Lightning's;
stable-baselines3 owns its loop (``model.learn()``), logger and checkpoint format, which
would sit beside Lightning rather than inside it. Among TorchRL's losses PPO is the one
whose state is entirely the networks and the optimizer: an on-policy learner has no replay
buffer to checkpoint (SAC/TD3 would need their buffer saved too, and their sample
efficiency matters less here than their tuning: the action has three bounded components,
PPO's home ground).

A killed run resumes exactly from Lightning's last checkpoint because nothing else carries
state from one rollout to the next: every random draw of rollout ``k`` (its start latents and
targets, the policy's action noise, the minibatch order, the entropy estimate's samples) is
a function of ``(seed, k)`` alone. The start latents come from ``seed * 1000003 + k``; the
rest runs under :func:`torch.random.fork_rng` seeded from ``(seed, k)`` (:func:`rollout_seed`),
so the global RNG, which ``seed_everything`` re-seeds on every (re)start and Lightning's
checkpoints do not hold, is neither read nor advanced. A resumed run therefore makes exactly
the remaining rollouts, with the draws the uninterrupted run would have made.

One ``training_step`` = one rollout + ``ppo_epochs`` passes of minibatch updates (manual
optimization, every update a Lightning ``optimizer.step()``):

1. ``num_envs`` start latents drawn from a seed fixed by the rollout index (so a resumed
   run draws what the killed one would have), each with a target offset from
   ``target_offsets`` plus uniform jitter of ``+-target_jitter`` years;
2. up to ``max_steps`` steps of the stochastic policy in :class:`AgeEditVectorEnv` (actions
   sampled from the squashed Gaussian under ``ExplorationType.RANDOM``: outside it TorchRL's
   actor returns its deterministic action, and PPO would not explore); transitions after an
   episode ended are masked out;
3. GAE advantages (``gamma``, ``gae_lambda``; the time limit is in the observation, so a
   truncated episode is treated as terminal);
4. the clipped PPO objective + value loss + entropy bonus on shuffled minibatches.

The generator, aligner, predictor and embedder are frozen and kept out of the module's
``state_dict``: checkpoints hold only the policy, the value network and the optimizer (the
parts are re-created from the recipe on resume). At the end of every epoch the policy is
also written to ``save_path`` (atomically), the file :class:`~exface.agerl.editors.AgePolicyEditor` loads.
The file records the run's settings (:meth:`AgePolicyModule.policy_record`); a ``save_path`` that
holds a policy trained with other settings (or a file that is no policy, or a policy of an
exface that did not record its settings) is refused before the training
(:meth:`AgePolicyModule.refuse_other_policy` in ``on_fit_start``) and again before each write,
so a report made with that policy never silently refers to another one; the same settings (a
resume, a re-run) replace it.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from exface.agerl.env import AgeEditEnv, AgeEditVectorEnv, env_parts
from exface.agerl.mdp import ACTION_DIM, ObservationConfig, observation_dim
from exface.models.age_policy import GaussianPolicyNet, ValueNet
from exface.resume_check import RecordsRunSettings

__all__ = ["AgePolicyModule", "RolloutDataModule", "POLICY_FORMAT", "make_actor", "rollout_seed"]

POLICY_FORMAT = "exface-age-policy"


def rollout_seed(seed: int, rollout_index: int, stream: int) -> int:
    """The torch seed of one random stream of one rollout (0: acting, 1: the PPO updates)."""
    import numpy as np

    a, b = np.random.SeedSequence([int(seed), int(rollout_index), int(stream)]).generate_state(2, dtype=np.uint32)
    return (int(a) << 31) ^ int(b)


def make_actor(net: GaussianPolicyNet) -> ProbabilisticActor:
    """The TorchRL actor over a policy net: tanh-squashed Gaussian actions in [-1, 1]."""
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(module, in_keys=["loc", "scale"], distribution_class=TanhNormal,
                              distribution_kwargs={"low": -1.0, "high": 1.0}, return_log_prob=True)


class _Rollouts(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class RolloutDataModule(pl.LightningDataModule):
    """Rollout indices for :class:`AgePolicyModule`: ``rollouts_per_epoch`` batches per epoch.

    An on-policy learner makes its own data; what the loop needs from a datamodule is how
    many rollouts make an epoch (checkpoints are per epoch, so this sets how much a kill
    can lose). Each batch is the rollout's index within the epoch.
    """

    def __init__(self, rollouts_per_epoch: int = 1) -> None:
        super().__init__()
        if rollouts_per_epoch < 1:
            raise ValueError(f"rollouts_per_epoch must be >= 1, got {rollouts_per_epoch}")
        self.rollouts_per_epoch = int(rollouts_per_epoch)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Rollouts(self.rollouts_per_epoch), batch_size=None, shuffle=False)


class AgePolicyModule(RecordsRunSettings, pl.LightningModule):
    """PPO (TorchRL ClipPPOLoss + GAE) training an age-editing policy under an identity bound.

    Args:
        env: the :class:`AgeEditEnv` (its parts, identity bound, step bound, budget and
            reward weights). Kept out of checkpoints (frozen, re-created from the recipe).
        num_envs: episodes per rollout.
        target_offsets, target_jitter: target = start age + an offset drawn uniformly
            from ``target_offsets`` + uniform noise in ``[-jitter, jitter]`` years.
        include_latent: append the raw latent to the observation (see :mod:`exface.agerl.mdp`).
        hidden, layers: MLP width/depth of policy and value nets.
        init_log_std: initial log standard deviation of the pre-tanh Gaussian.
        init_step: initial mean of the age-direction action (pre-tanh; 0.55 ~ half a max step).
        ppo_epochs, minibatch_size: passes over each rollout and their minibatch size.
        lr, max_grad_norm: Adam learning rate and gradient clipping.
        gamma, gae_lambda, clip_epsilon, entropy_coeff, critic_coeff: PPO/GAE settings.
        seed: seeds the rollouts' start latents and targets.
        save_path: where the trained policy file is written (None: not written).
    """

    def __init__(
        self,
        env: AgeEditEnv,
        num_envs: int = 64,
        target_offsets: list[float] = [-15.0, 15.0, 30.0],  # noqa: B006 (jsonargparse needs a literal default)
        target_jitter: float = 5.0,
        include_latent: bool = False,
        hidden: int = 64,
        layers: int = 2,
        init_log_std: float = -0.7,
        init_step: float = 0.55,
        ppo_epochs: int = 8,
        minibatch_size: int = 128,
        lr: float = 3e-4,
        max_grad_norm: float = 1.0,
        gamma: float = 0.97,
        gae_lambda: float = 0.95,
        clip_epsilon: float = 0.2,
        entropy_coeff: float = 1e-3,
        critic_coeff: float = 0.5,
        seed: int = 0,
        save_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["env"])
        self.automatic_optimization = False
        object.__setattr__(self, "env", env)  # not a submodule: frozen parts stay out of checkpoints
        self._parts_fp: dict[str, Any] | None = None  # their fingerprints, for the policy file (computed once)
        obs_dim = observation_dim(env.latent_shape(), include_latent)
        self.policy = GaussianPolicyNet(obs_dim, ACTION_DIM, hidden, layers, init_log_std,
                                        init_loc=(float(init_step), 0.0, 0.0))
        self.value = ValueNet(obs_dim, hidden, layers)
        self.actor = make_actor(self.policy)
        self.critic = ValueOperator(self.value, in_keys=["observation"])
        self.loss_module = ClipPPOLoss(self.actor, self.critic, clip_epsilon=clip_epsilon,
                                       entropy_coeff=entropy_coeff, critic_coeff=critic_coeff,
                                       normalize_advantage=True, loss_critic_type="l2")
        self.advantage = GAE(gamma=gamma, lmbda=gae_lambda, value_network=self.critic, average_gae=False)
        self.venv = AgeEditVectorEnv(env, num_envs, include_latent)
        if not target_offsets:
            raise ValueError("target_offsets must list at least one offset (years), e.g. [-15, 15, 30]")

    # ------------------------------------------------------------------ plumbing
    def _rollouts_per_epoch(self) -> int:
        return int(self.trainer.num_training_batches) if self._trainer is not None else 1

    def configure_optimizers(self):
        params = list(self.policy.parameters()) + list(self.value.parameters())
        return torch.optim.Adam(params, lr=self.hparams.lr)

    def on_fit_start(self) -> None:
        """Move the parts to the device; refuse a ``save_path`` holding a policy of other settings
        before any rollout (:meth:`refuse_other_policy`)."""
        self.env.to(self.device)
        if self.hparams.save_path:
            self.refuse_other_policy(self.hparams.save_path)

    @contextlib.contextmanager
    def _forked_rng(self, seed: int):
        """The global RNGs (CPU, and this module's GPU) started from ``seed``, restored afterwards."""
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            for i in cuda:
                with torch.cuda.device(i):
                    torch.cuda.manual_seed(seed)
            yield

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume with other settings than the checkpoint's, the environment's included
        (under LightningCLI its config is recorded too; ``save_path`` and the env's scoring
        ``batch_size`` may change)."""
        from exface.resume_check import check_resume

        check_resume(self, checkpoint, may_differ=("save_path", "env.init_args.batch_size"))

    def state_dict(self, *args, **kwargs):  # the loss module aliases the nets: keep one copy
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if not k.startswith(("loss_module.", "advantage.", "actor.", "critic."))}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    # ------------------------------------------------------------------ rollout
    def _targets(self, n: int, gen: torch.Generator) -> Tensor:
        offs = torch.as_tensor(self.hparams.target_offsets, dtype=torch.float32)
        pick = offs[torch.randint(len(offs), (n,), generator=gen)]
        jitter = (torch.rand(n, generator=gen) * 2 - 1) * self.hparams.target_jitter
        return (pick + jitter).to(self.device)

    @torch.no_grad()
    def collect(self, rollout_index: int) -> tuple[TensorDict, dict[str, float]]:
        """One rollout ``[num_envs, T]`` (TorchRL keys) and its summary statistics.

        A function of the policy's weights and ``(seed, rollout_index)``: the start latents and
        targets come from their own seeded generators, the action noise from the global RNG
        forked and seeded by :func:`rollout_seed` (and restored afterwards).
        """
        with self._forked_rng(rollout_seed(self.hparams.seed, rollout_index, 0)):
            return self._collect(rollout_index)

    def _collect(self, rollout_index: int) -> tuple[TensorDict, dict[str, float]]:
        hp = self.hparams
        seed = int(hp.seed) * 1_000_003 + int(rollout_index)
        gen = torch.Generator().manual_seed(seed)
        n = self.venv.num_envs
        obs, _ = self.venv.reset(seed=seed, options={"target_offset": self._targets(n, gen)})
        steps: list[TensorDict] = []
        success = torch.zeros(n, dtype=torch.bool, device=self.device)
        broken = torch.zeros_like(success)
        for _ in range(self.env.max_steps):
            alive = ~self.env.state.extra["done"]
            td = TensorDict({"observation": obs}, batch_size=[n], device=self.device)
            with set_exploration_type(ExplorationType.RANDOM):  # sample: TorchRL's default acts deterministically
                self.actor(td)
            next_obs, reward, terminated, truncated, info = self.venv.step(td["action"])
            success |= info["success"]
            broken |= info["broken"]
            end = (terminated | truncated | ~alive)[:, None]
            td["valid"] = alive
            td["next"] = TensorDict({"observation": next_obs, "reward": reward[:, None].float(), "done": end,
                                     "terminated": end}, batch_size=[n], device=self.device)
            steps.append(td)
            obs = next_obs
            if bool(self.env.state.extra["done"].all()):
                break
        roll = torch.stack(steps, dim=1)
        s = self.env.state
        stats = {
            "return": float(roll["next", "reward"].sum(1).mean()),
            "success": float(success.float().mean()),
            "broken": float(broken.float().mean()),
            "final_age_error": float((s.value - s.target).abs().mean()),
            "final_similarity": float(s.similarity.mean()),
            "steps": float(roll["valid"].float().sum(1).mean()),
        }
        return roll, stats

    def training_step(self, batch: Any, batch_idx: int) -> None:
        hp = self.hparams
        rollout_index = self.current_epoch * self._rollouts_per_epoch() + int(batch)
        roll, stats = self.collect(rollout_index)
        with torch.no_grad():
            self.advantage(roll)
        data = roll.reshape(-1)
        data = data[data["valid"]]
        # the minibatch order from its own generator; the entropy estimate's samples from the forked global RNG
        gen = torch.Generator().manual_seed(int(hp.seed) + 7919 * rollout_index)
        with self._forked_rng(rollout_seed(hp.seed, rollout_index, 1)):
            losses = self._update(data, gen)
        log = {f"train/{k}": v for k, v in stats.items()}
        log.update({f"train/{k}": sum(v) / len(v) for k, v in losses.items()})
        log["train/transitions"] = float(data.shape[0])
        self.log_dict(log, prog_bar=False, on_step=True, on_epoch=False, batch_size=self.venv.num_envs)
        self.log("success", stats["success"], prog_bar=True, on_step=True, on_epoch=False, batch_size=self.venv.num_envs)

    def _update(self, data: TensorDict, gen: torch.Generator) -> dict[str, list[float]]:
        """``ppo_epochs`` passes of shuffled minibatch PPO updates over one rollout's transitions."""
        hp = self.hparams
        opt = self.optimizers()
        losses: dict[str, list[float]] = {}
        for _ in range(hp.ppo_epochs):
            perm = torch.randperm(data.shape[0], generator=gen).to(self.device)
            for b0 in range(0, data.shape[0], hp.minibatch_size):
                mb = data[perm[b0 : b0 + hp.minibatch_size]]
                out = self.loss_module(mb)
                loss = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
                opt.zero_grad()
                self.manual_backward(loss)
                torch.nn.utils.clip_grad_norm_(list(self.policy.parameters()) + list(self.value.parameters()),
                                               hp.max_grad_norm)
                opt.step()
                for k in ("loss_objective", "loss_critic", "loss_entropy"):
                    losses.setdefault(k, []).append(float(out[k].detach()))
        return losses

    def on_train_epoch_end(self) -> None:
        if self.hparams.save_path and self.trainer.is_global_zero:
            self.save_policy(self.hparams.save_path)

    # ------------------------------------------------------------------ output
    def policy_record(self) -> dict[str, Any]:
        """What :class:`~exface.agerl.editors.AgePolicyEditor` needs to run this policy, and the
        settings it was trained with (``settings``: :meth:`_training_settings`; ``env``: the
        environment's bounds, reward weights and parts), which :meth:`refuse_other_policy` compares."""
        env = self.env
        return {
            "format": POLICY_FORMAT,
            "version": 1,
            "policy_state": {k: v.detach().cpu() for k, v in self.policy.state_dict().items()},
            "policy_args": {"obs_dim": self.policy.obs_dim, "action_dim": self.policy.action_dim,
                            "hidden": self.policy.hidden, "layers": self.policy.layers},
            "observation": ObservationConfig.from_env(env).to_dict(),
            "include_latent": bool(self.hparams.include_latent),
            "attribute": env.attribute,
            "space": env.space,
            "latent_shape": list(env.latent_shape()),
            "env": {"identity_bound": env.identity_bound, "max_step": env.max_step, "max_steps": env.max_steps,
                    "tolerance": env.tolerance, "weights": dict(env.weights),
                    "parts": self._parts_record()},
            "settings": self._training_settings(),
            "trained": {"epochs": int(self.current_epoch) + 1, "global_step": int(self.global_step),
                        "rollouts": (int(self.current_epoch) + 1) * self._rollouts_per_epoch(),
                        "num_envs": int(self.venv.num_envs)},
        }

    def _parts_record(self) -> dict[str, Any]:
        """Fingerprints (class, arguments, weights digest) of the frozen parts, computed once."""
        if self._parts_fp is None:
            self._parts_fp = env_parts(self.env)
        return self._parts_fp

    def _training_settings(self) -> dict[str, Any]:
        """The run's settings as the policy file records them: the hyperparameters (under
        LightningCLI the recipe's model config, the environment's included; built in Python the
        plain-valued arguments) without ``save_path`` and bookkeeping keys."""
        from exface.resume_check import is_plain_data

        return {k: v for k, v in dict(self.hparams).items()
                if k != "save_path" and not str(k).startswith("_") and is_plain_data(v)}

    def policy_differences(self, rec: dict[str, Any]) -> list[str]:
        """``key: the file has X, this run Y`` for every setting in which the policy file record
        ``rec`` differs from this run: the training settings (a key the file lacks against its
        default; the environment's ``batch_size`` may differ, as on a resume), the environment's
        bound, step, budget, tolerance, reward weights and age scale, its parts (class, weights
        digest, non-path arguments), the network's shape and the observation's layout."""
        from exface.exfacegan.provenance import part_differences
        from exface.resume_check import recorded_form, settings_differences

        def show(v: Any) -> str:
            text = repr(v)
            return text if len(text) <= 70 else text[:67] + "..."

        defaults = {n: prm.default for n, prm in inspect.signature(type(self).__init__).parameters.items()
                    if prm.default is not inspect.Parameter.empty}
        out = [f"{k}: the file has {show(a)}, this run {show(b)}" for k, a, b in
               settings_differences(rec.get("settings") or {}, self._training_settings(), defaults=defaults,
                                    may_differ=("env.init_args.batch_size",))]
        env, trained = self.env, rec.get("env") or {}
        here = {"identity_bound": env.identity_bound, "max_step": env.max_step, "max_steps": env.max_steps,
                "tolerance": env.tolerance, "weights": dict(env.weights)}
        out += [f"env.{k}: the file has {show(trained.get(k))}, this run {show(v)}"
                for k, v in here.items() if recorded_form(trained.get(k)) != recorded_form(v)]
        age_scale = (rec.get("observation") or {}).get("age_scale")
        if age_scale is not None and float(age_scale) != float(env.age_scale):
            out.append(f"env.age_scale: the file has {age_scale!r}, this run {env.age_scale!r}")
        parts, given = trained.get("parts") or {}, self._parts_record()
        for role in sorted(set(parts) | set(given)):
            out += part_differences(f"env.parts.{role}", parts.get(role), given.get(role))
        mine = {"policy_args": {"obs_dim": self.policy.obs_dim, "action_dim": self.policy.action_dim,
                                "hidden": self.policy.hidden, "layers": self.policy.layers},
                "include_latent": bool(self.hparams.include_latent), "attribute": env.attribute, "space": env.space,
                "latent_shape": list(env.latent_shape())}
        out += [f"{k}: the file has {show(rec.get(k))}, this run {show(v)}"
                for k, v in mine.items() if recorded_form(rec.get(k)) != recorded_form(v)]
        return out

    def refuse_other_policy(self, path: str | Path, setting: str = "model.init_args.save_path") -> None:
        """Raise :class:`~exface.errors.ExfaceStateError` when ``path`` holds what this run must not
        replace: a policy trained with other settings (:meth:`policy_differences`, all named), a
        policy file that records no training settings (an older exface: a run of other settings
        could not be told apart; accepted only when this run resumes a checkpoint, whose settings
        :func:`~exface.resume_check.check_resume` compared), a file that is not a readable policy file, or a folder. Nothing
        to do when ``path`` does not exist; the same settings (a resume, a re-run) pass.
        ``setting`` names the option that chose ``path`` (for the fix)."""
        from exface.agerl.editors import load_policy_file
        from exface.errors import ExfaceFileError, ExfaceStateError

        path = Path(path)
        if not path.exists():
            return
        if path.is_dir():
            raise ExfaceStateError(f"{path.name} is a folder, not a policy file", where=path,
                                   fix=f"pass a file path as {setting} (e.g. {path / 'policy.pt'})")
        fix = (f"pass another {setting} for this training, or delete {path} if the policy there (and any age "
               f"report made with it) is no longer needed")
        try:
            rec = load_policy_file(path)
        except ExfaceFileError as err:
            raise ExfaceStateError(f"{path.name} already exists and is not a readable age-policy file "
                                   f"({err.problem}); it is not overwritten", where=path, fix=fix) from err
        trainer = getattr(self, "_trainer", None)
        if not isinstance(rec.get("settings"), dict) and getattr(trainer, "ckpt_path", None):
            return  # an older exface's file, and this run resumes a checkpoint whose settings check_resume compared
        if not isinstance(rec.get("settings"), dict):
            raise ExfaceStateError(f"{path.name} already holds a policy that does not record the settings it was "
                                   f"trained with (an older exface wrote it), so this training cannot tell whether "
                                   f"it is the same run; it is not overwritten", where=path, fix=fix)
        diffs = self.policy_differences(rec)
        if diffs:
            shown = diffs[:10] + ([f"... and {len(diffs) - 10} more"] if len(diffs) > 10 else [])
            raise ExfaceStateError(
                f"{path.name} already holds a policy trained with other settings; it is not overwritten (an age "
                f"report made with it would refer to another policy). Differences:\n    " + "\n    ".join(shown),
                where=path, fix=fix)

    def save_policy(self, path: str | Path) -> None:
        """Write :meth:`policy_record` to ``path`` atomically (a temporary file renamed into place).

        A file already at ``path`` is replaced only when it is a policy of this run's settings
        (:meth:`refuse_other_policy`; otherwise it stays as it was and ExfaceStateError names the
        differences)."""
        from exface.exfacegan.run_files import atomic_torch_save

        path = Path(path)
        self.refuse_other_policy(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.policy_record(), path)
