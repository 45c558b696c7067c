"""The age-editing MDP (reward terms, termination, bounds), the PPO recipe and the age report, on tiny parts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from exface.agerl.editors import AgePolicyEditor, GradientWalkEditor
from exface.agerl.env import AgeEditEnv, AgeEditVectorEnv
from exface.agerl.mdp import ACTION_DIM, BASE_FEATURES, apply_action, observation, step_directions
from exface.alignment.crops import ResizeAligner
from exface.editing.base import EditState, LatentEditor
from exface.testing.tiny import TinyEmbedder, TinyGenerator
from exface.testing.tiny_age import TinyAgePredictor

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "dcgan_faceapi_age_rl.yaml"


def make_env(**kw) -> AgeEditEnv:
    args = dict(identity_bound=0.8, max_step=0.5, max_steps=4, prior_samples=500)
    args.update(kw)
    return AgeEditEnv(TinyGenerator(z_dim=8, resolution=16), ResizeAligner((16, 16)), TinyAgePredictor(),
                      TinyEmbedder(), **args)


class Stay(LatentEditor):
    attribute, space = "age", "z"

    def propose(self, state: EditState) -> torch.Tensor:
        return state.latent.clone()


class Jump(LatentEditor):
    """Proposes a far-away latent every step (the driver must clip it)."""

    attribute, space = "age", "z"

    def propose(self, state: EditState) -> torch.Tensor:
        return state.latent + 100.0


def test_reward_terms_and_weights():
    env = make_env(identity_bound=0.9, age_scale=10.0, progress_weight=2.0, identity_weight=3.0, break_penalty=5.0,
                   prior_weight=0.5, step_cost=0.1, success_bonus=7.0, tolerance=3.0)
    err_before = torch.tensor([10.0, 10.0, 2.0])
    err_after = torch.tensor([5.0, 12.0, 1.0])
    sim = torch.tensor([0.95, 0.85, 0.92])
    chi = torch.tensor([-1.0, 2.0, 0.5])
    t = env.reward_terms(err_before, err_after, sim, chi)
    torch.testing.assert_close(t["progress"], torch.tensor([0.5, -0.2, 0.1]))
    torch.testing.assert_close(t["identity"], torch.tensor([0.0, -0.5, 0.0]))
    torch.testing.assert_close(t["broken"], torch.tensor([0.0, -1.0, 0.0]))
    torch.testing.assert_close(t["prior"], torch.tensor([0.0, -2.0, -0.5]))
    torch.testing.assert_close(t["step"], -torch.ones(3))
    torch.testing.assert_close(t["success"], torch.tensor([0.0, 0.0, 1.0]))
    r = env.reward(t)
    expected = 2 * t["progress"] + 3 * t["identity"] + 5 * t["broken"] + 0.5 * t["prior"] - 0.1 + 7 * t["success"]
    torch.testing.assert_close(r, expected)


def test_prior_z_score_is_chi_square():
    env = make_env()
    assert env.prior.sq_mean == 8.0 and math.isclose(env.prior.sq_std, 4.0)
    z = env.sample_latents(4000, seed=3)
    assert abs(float(env.prior.chi(z).mean())) < 0.1
    assert float(env.prior.chi(torch.full((1, 8), 3.0))) == pytest.approx((72 - 8) / 4)


def test_step_is_clipped_to_the_bound_for_every_editor():
    env = make_env(identity_bound=0.01)
    z = env.sample_latents(5, seed=1)
    env.reset(z, 10.0, relative=True)
    state, *_ = env.step_to(z + 100.0)
    torch.testing.assert_close((state.latent - z).norm(dim=1), torch.full((5,), 0.5))
    small = state.latent + 0.1
    state2, *_ = env.step_to(small)
    live = ~state.extra["done"]
    torch.testing.assert_close(state2.latent[live], small[live])


def test_success_terminates_and_ended_episodes_stay():
    env = make_env()
    z = env.sample_latents(3, seed=2)
    env.reset(z, 0.0, relative=True)  # target = start age: staying put succeeds at once
    state, reward, terminated, truncated, info = env.step_to(z.clone())
    assert terminated.all() and not truncated.any() and info["success"].all() and state.extra["done"].all()
    assert torch.allclose(state.similarity, torch.ones(3), atol=1e-5)
    # an ended episode does not move and earns nothing
    state2, reward2, term2, trunc2, _ = env.step_to(z + 0.3)
    torch.testing.assert_close(state2.latent, z)
    assert (reward2 == 0).all() and not term2.any() and not trunc2.any()


def test_broken_bound_terminates_with_penalty():
    env = make_env(identity_bound=0.999999, max_step=3.0)
    z = env.sample_latents(4, seed=4)
    env.reset(z, 30.0, relative=True)
    state, reward, terminated, truncated, info = env.step_to(z + 3.0)
    assert info["broken"].all() and terminated.all() and not info["success"].any()
    assert (info["terms"]["broken"] == -1).all() and (info["terms"]["identity"] < 0).all()


def test_truncation_after_the_step_budget():
    env = make_env(identity_bound=0.01, max_steps=3)
    z = env.sample_latents(4, seed=5)
    traj = env.run(Stay(), z, 1000.0, relative=True)  # unreachable target, bound never broken
    assert traj.value.shape == (4, 4) and (traj.steps_used == 3).all()
    assert not traj.success.any() and traj.bound_held.all() and traj.done[-1].all()
    env.reset(z, 1000.0, relative=True)
    truncs = [env.step_to(z)[3] for _ in range(3)]
    assert not truncs[0].any() and not truncs[1].any() and truncs[2].all()


def test_run_refuses_a_mismatched_editor():
    with pytest.raises(ValueError, match="space"):
        make_env().run(GradientWalkEditor(space="w"), torch.zeros(2, 8), 10.0)


def test_gradient_walk_moves_age_toward_the_target():
    env = make_env(identity_bound=0.01, max_step=0.3, max_steps=3)
    z = env.sample_latents(16, seed=6)
    up = env.run(GradientWalkEditor(0.3), z, 25.0, relative=True)
    down = env.run(GradientWalkEditor(0.3), z, -25.0, relative=True)
    assert float((up.value[1] - up.value[0]).mean()) > 0 > float((down.value[1] - down.value[0]).mean())


def test_action_parametrization():
    env = make_env()
    z = env.sample_latents(4, seed=7)
    state = env.reset(z, 10.0, relative=True, with_gradient=True)
    dirs = step_directions(state, env.prior.mu)
    g = state.extra["value_grad"]
    torch.testing.assert_close(dirs[:, 0], torch.sign(state.target - state.value)[:, None] * g / g.norm(dim=1, keepdim=True))
    assert (dirs[:, 1] == 0).all()  # at the start there is no way back to correct
    x = apply_action(state, torch.tensor([[1.0, 1.0, 0.0]] * 4), env.max_step, env.prior.mu)
    torch.testing.assert_close(x - z, env.max_step * dirs[:, 0])
    state, *_ = env.step_to(x, with_gradient=True)
    dirs = step_directions(state, env.prior.mu)
    gram = dirs @ dirs.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(3).expand(4, 3, 3), atol=1e-4)
    obs = observation(state, env)
    assert obs.shape == (4, BASE_FEATURES) and torch.isfinite(obs).all()


def test_vector_env_api():
    env = make_env()
    venv = AgeEditVectorEnv(env, num_envs=5, include_latent=True)
    obs, info = venv.reset(seed=3, options={"target_offset": torch.tensor([15.0] * 5)})
    assert obs.shape == (5, BASE_FEATURES + 8) == (5, venv.single_observation_space.shape[0])
    assert venv.single_action_space.shape == (ACTION_DIM,)
    obs, reward, terminated, truncated, info = venv.step(torch.zeros(5, ACTION_DIM))
    assert reward.shape == terminated.shape == truncated.shape == (5,)


def _tiny_overrides(tmp_path: Path) -> list[str]:
    from exface.testing.tiny_age import age_rl_recipe_overrides

    return [*age_rl_recipe_overrides(tmp_path), "--trainer.accelerator=cpu", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]


def test_recipe_resumes_from_last_checkpoint_and_policy_runs_as_an_editor(tmp_path, monkeypatch):
    """A killed run resumed from last.ckpt makes exactly the remaining rollouts and ends where the
    uninterrupted run ends (same weights). (The recipe's fast_dev_run is tests/test_recipes.py's.)"""
    from exface.agerl.module import AgePolicyModule
    from exface.cli import main

    rollouts: list[int] = []
    collect = AgePolicyModule.collect

    def counting(self, rollout_index):
        rollouts.append(int(rollout_index))
        return collect(self, rollout_index)

    monkeypatch.setattr(AgePolicyModule, "collect", counting)

    def fit(root: Path, epochs: int) -> list[int]:
        rollouts.clear()
        main(["fit", "--config", str(RECIPE), f"--trainer.max_epochs={epochs}", *_tiny_overrides(root)])
        return list(rollouts)

    killed, whole = tmp_path / "killed", tmp_path / "whole"
    assert fit(killed, 1) == [0]
    assert (killed / "ckpt" / "last.ckpt").is_file()
    first = torch.load(killed / "policy.pt", weights_only=True)
    assert first["trained"]["epochs"] == 1
    first_step = torch.load(killed / "ckpt" / "last.ckpt", weights_only=False)["global_step"]
    # the same command with a larger budget continues from last.ckpt (ckpt_path: last in the recipe):
    # only the remaining rollout is collected, not rollout 0 again
    assert fit(killed, 2) == [1]
    second = torch.load(killed / "policy.pt", weights_only=True)
    assert second["trained"]["epochs"] == 2 and second["trained"]["rollouts"] == 2
    ckpt = torch.load(killed / "ckpt" / "last.ckpt", weights_only=False)
    # the second run went on from the first one's state (Lightning stores the 0-based index of the
    # epoch it saved in, or the count after the last one, depending on which hook saved it)
    assert ckpt["epoch"] in (1, 2) and ckpt["global_step"] == 2 * first_step > 0
    assert not any(k.startswith("env.") for k in ckpt["state_dict"])
    # resumed == uninterrupted: every rollout's randomness is a function of (seed, rollout index), so
    # the resumed rollout 1 draws what the uninterrupted run's rollout 1 draws (not rollout 0's noise)
    assert fit(whole, 2) == [0, 1]
    ref = torch.load(whole / "policy.pt", weights_only=True)
    assert ref["policy_state"].keys() == second["policy_state"].keys()
    for k, v in ref["policy_state"].items():
        assert torch.equal(v, second["policy_state"][k]), k
    ref_ckpt = torch.load(whole / "ckpt" / "last.ckpt", weights_only=False)
    for k, v in ref_ckpt["state_dict"].items():  # the value net too
        assert torch.equal(v, ckpt["state_dict"][k]), k
    assert not all(torch.equal(v, first["policy_state"][k]) for k, v in ref["policy_state"].items())  # it trained
    assert set(second["env"]["parts"]) == {"generator", "aligner", "attribute_aligner", "age_predictor", "embedder"}
    assert "weights_sha256" in second["env"]["parts"]["age_predictor"]
    editor = AgePolicyEditor(str(killed / "policy.pt"))
    env = make_env(identity_bound=0.95, max_step=0.5, max_steps=3)
    traj = env.run(editor, env.sample_latents(4, seed=9), 15.0, relative=True)
    assert traj.value.shape == (4, 4) and torch.isfinite(traj.value).all() and traj.steps_used.min() >= 1


def test_rollouts_leave_the_global_rng_alone_and_repeat():
    from exface.agerl.module import AgePolicyModule

    module = AgePolicyModule(make_env(max_steps=2), num_envs=3, seed=4)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    roll_a, _ = module.collect(5)
    assert torch.equal(torch.random.get_rng_state(), state)  # neither read from nor advanced
    torch.manual_seed(123)  # another global state (a restart re-seeds it): the same rollout
    roll_b, _ = module.collect(5)
    assert torch.equal(roll_a["action"], roll_b["action"])
    assert not torch.equal(module.collect(6)[0]["action"], roll_a["action"])  # rollouts differ from each other
    # the rollout explores: its actions are samples, not the policy's deterministic tanh(mean)
    valid = roll_a["valid"]
    loc, _ = module.policy(roll_a["observation"][valid])
    assert (roll_a["action"][valid] - torch.tanh(loc)).abs().max() > 0.05


def test_age_report_files_and_merge(tmp_path):
    from exface.agerl.report import age_report

    env = make_env(max_steps=2)
    kw = dict(targets=[-15.0, 15.0], num_starts=4, evaluator=TinyEmbedder(seed=5), age_evaluator=TinyAgePredictor(seed=2),
              grid_starts=2)
    # one editor's targets in two separate runs, then a third run merges both
    age_report(env, [GradientWalkEditor(0.5)], output_dir=str(tmp_path / "walk"), **{**kw, "targets": [-15.0]})
    age_report(env, [GradientWalkEditor(0.5)], output_dir=str(tmp_path / "walk2"), **{**kw, "targets": [15.0]})
    parts = [str(tmp_path / "walk" / "report.json"), str(tmp_path / "walk2" / "report.json")]
    report = age_report(env, [Stay()], output_dir=str(tmp_path / "rep"), merge=parts, **kw)
    files = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"report.md", "report.json", "curves.png", "grid_GradientWalkEditor_+15.png", "grid_Stay_-15.png"} <= files
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(data["results"]) == {"GradientWalkEditor", "Stay"} and data["settings"]["targets"] == [-15.0, 15.0]
    assert set(data["results"]["GradientWalkEditor"]) == {"-15", "+15"}
    r = data["results"]["Stay"]["+15"]
    assert r["success_rate"] == 0.0 and r["mean_age_change"] == 0.0 and r["mean_similarity_evaluator"] == pytest.approx(1.0)
    assert r["mean_age_change_evaluator"] == pytest.approx(0.0, abs=1e-5) and data["age_evaluator"] == "TinyAgePredictor"
    assert data["evaluator"] == "TinyEmbedder" and report["mean_success"]["Stay"] == 0.0
    assert "| Stay | +15 |" in (tmp_path / "rep" / "report.md").read_text()
    with pytest.raises(ValueError, match="num_starts"):
        age_report(env, [Stay()], output_dir=str(tmp_path / "bad"), merge=parts, **{**kw, "num_starts": 3})
    with pytest.raises(ValueError, match="lack targets"):
        age_report(env, [Stay()], output_dir=str(tmp_path / "bad"), merge=parts[:1], **kw)


def _policy_file(tmp_path: Path, env: AgeEditEnv) -> str:
    from exface.agerl.module import AgePolicyModule

    path = tmp_path / "policy.pt"
    AgePolicyModule(env, num_envs=2).save_policy(path)  # untrained: enough to check what the file records
    return str(path)


def test_merge_refuses_other_parts_or_evaluators(tmp_path):
    from exface.agerl.report import age_report
    from exface.errors import ExfaceError

    env = make_env(max_steps=2)
    kw = dict(targets=[15.0], num_starts=3, evaluator=TinyEmbedder(seed=5), age_evaluator=TinyAgePredictor(seed=2),
              grid_starts=1)
    age_report(env, [GradientWalkEditor(0.5)], output_dir=str(tmp_path / "walk"), **kw)
    part = [str(tmp_path / "walk" / "report.json")]
    saved = json.loads((tmp_path / "walk" / "report.json").read_text())["settings"]
    assert "weights_sha256" in saved["parts"]["age_predictor"] and saved["evaluators"]["evaluator"]["args"]["seed"] == 5
    age_report(env, [Stay()], output_dir=str(tmp_path / "ok"), merge=part, **kw)  # the same parts: merged
    other_age = AgeEditEnv(TinyGenerator(z_dim=8, resolution=16), ResizeAligner((16, 16)), TinyAgePredictor(seed=3),
                           TinyEmbedder(), identity_bound=0.8, max_step=0.5, max_steps=2, prior_samples=500)
    refused = {
        "parts.age_predictor.weights": (other_age, kw),
        "evaluators.evaluator.seed": (env, {**kw, "evaluator": TinyEmbedder(seed=6)}),
        "evaluators.age_evaluator: recorded TinyAgePredictor, given None": (env, {**kw, "age_evaluator": None}),
        "evaluators.evaluator_aligner.output_size": (env, {**kw, "evaluator_aligner": ResizeAligner((8, 8))}),
        "evaluator_identity_bound: 0.8 there, 0.5 here": (env, {**kw, "evaluator_identity_bound": 0.5}),
    }
    for what, (e, args) in refused.items():
        with pytest.raises(ExfaceError, match=f"(?s){what}.*in: .*report.json.*fix: rerun") as err:
            age_report(e, [Stay()], output_dir=str(tmp_path / "bad"), merge=part, **args)
        assert len(str(err.value).splitlines()) <= 3, what


def test_policy_is_refused_in_an_environment_with_other_parts(tmp_path):
    from exface.agerl.report import _check_policy_env
    from exface.errors import ExfaceError

    env = make_env()
    editor = AgePolicyEditor(_policy_file(tmp_path, env))
    assert set(editor.record["env"]["parts"]) == {"generator", "aligner", "attribute_aligner", "age_predictor", "embedder"}
    _check_policy_env(editor, make_env())  # the same parts, re-created
    other = AgeEditEnv(TinyGenerator(z_dim=8, resolution=16), ResizeAligner((16, 16)), TinyAgePredictor(),
                       TinyEmbedder(seed=1), identity_bound=0.8, max_step=0.5, max_steps=4, prior_samples=500)
    with pytest.raises(ExfaceError, match="(?s)another environment: parts.embedder.weights.*parts.embedder.seed"
                                          ".*in: .*policy.pt.*fix: give the report the training recipe's env"):
        _check_policy_env(editor, other)
    crop = AgeEditEnv(TinyGenerator(z_dim=8, resolution=16), ResizeAligner((16, 16)), TinyAgePredictor(),
                      TinyEmbedder(), attribute_aligner=ResizeAligner((12, 12)), identity_bound=0.8, max_step=0.5,
                      max_steps=4, prior_samples=500)
    with pytest.raises(ExfaceError, match="parts.attribute_aligner: recorded None, given ResizeAligner"):
        _check_policy_env(editor, crop)


def test_report_refuses_boundaries_of_another_checkpoint(tmp_path):
    from exface.agerl.report import age_report
    from exface.boundaries.base import Boundaries
    from exface.errors import ExfaceError
    from exface.exfacegan.provenance import part_fingerprint
    from exface.interfacegan.manipulation import BoundaryEditor

    def boundaries(generator):
        meta = {"attribute_names": ["age"], "layers": [None], "generator": part_fingerprint(generator),
                "generator_dims": {"z_dim": 8, "w_dim": 8, "num_ws": 1}, "bank": {"truncation_psi": 1.0}}
        nan = torch.full((1,), float("nan"))
        return Boundaries(torch.nn.functional.normalize(torch.ones(1, 8), dim=1), torch.zeros(1), "z", nan, nan, meta)

    env = make_env(max_steps=2)
    kw = dict(targets=[15.0], num_starts=2, grid_starts=1, output_dir=str(tmp_path / "rep"))
    age_report(env, [BoundaryEditor(boundaries(TinyGenerator(z_dim=8, resolution=16)), "age")], **kw)
    with pytest.raises(ExfaceError, match="another TinyGenerator checkpoint"):
        age_report(env, [BoundaryEditor(boundaries(TinyGenerator(z_dim=8, resolution=16, seed=1)), "age")], **kw)


def test_success_by_the_evaluators_and_the_verdict_on_it(tmp_path):
    from exface.agerl.report import _shared_backbone, age_report

    env = make_env(identity_bound=0.9, max_steps=3)
    policy = AgePolicyEditor(_policy_file(tmp_path, env))
    kw = dict(targets=[-2.0, 4.0], num_starts=6, grid_starts=1)  # near targets: some succeed, some not
    # judged by the reward's own networks (same nets, same crops) the evaluators' success is the env's
    same = age_report(env, [policy, GradientWalkEditor(0.5)], output_dir=str(tmp_path / "same"),
                      evaluator=TinyEmbedder(), age_evaluator=TinyAgePredictor(), **kw)
    for rs in same["results"].values():
        for r in rs.values():
            assert r["success_rate_evaluators"] == pytest.approx(r["success_rate"])
            assert r["bound_held_rate_evaluator"] == pytest.approx(r["bound_held_rate"])
    assert same["mean_success_evaluators"] == pytest.approx(same["mean_success"])
    assert 0 < min(same["mean_success"].values()) < 1
    # other judges: their own success rate, and the verdict is stated on it first
    rep = age_report(env, [policy, GradientWalkEditor(0.5)], output_dir=str(tmp_path / "rep"),
                     evaluator=TinyEmbedder(seed=5), age_evaluator=TinyAgePredictor(seed=2),
                     evaluator_identity_bound=0.7, **kw)
    rows = [r for rs in rep["results"].values() for r in rs.values()]
    assert all(0.0 <= r["success_rate_evaluators"] <= 1.0 for r in rows)
    assert any(r["success_rate_evaluators"] != r["success_rate"] for r in rows)  # another judgement
    v = rep["verdict"]
    assert v.startswith("By the independent evaluators (TinyAgePredictor age, TinyEmbedder identity >= 0.7): The RL policy")
    assert "Judged by the networks the policy was optimized against (TinyAgePredictor age, TinyEmbedder identity)" in v
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| success (reward nets) | success (evaluators) |" in md and "Mean success over targets, by the evaluators" in md
    assert "calibrated on the reward's embedder" not in md  # the bound was given
    assert "calibrated on the reward's embedder" in (tmp_path / "same" / "report.md").read_text()
    # without evaluators the verdict says who judged
    alone = age_report(env, [policy, GradientWalkEditor(0.5)], output_dir=str(tmp_path / "alone"), **kw)
    assert "no independent evaluators judged it" in alone["verdict"] and "mean_success_evaluators" not in alone
    # HSEFaceRes and HSEAgeGender are one network (Human's faceres graph): the report says so
    hse_id = type("HSEFaceRes", (TinyEmbedder,), {"register": False})()
    hse_age = type("HSEAgeGender", (TinyAgePredictor,), {"register": False})()
    assert "share one backbone (Human's faceres graph" in _shared_backbone(hse_id, hse_age)
    assert _shared_backbone(TinyEmbedder(), TinyAgePredictor()) == ""
    shared = age_report(env, [GradientWalkEditor(0.5)], output_dir=str(tmp_path / "hse"), evaluator=hse_id,
                        age_evaluator=hse_age, **kw)
    assert "HSEFaceRes and HSEAgeGender share one backbone" in (tmp_path / "hse" / "report.md").read_text()
    assert shared["shared_backbone"]


def test_report_verdict_weighs_the_difference_against_its_noise():
    from exface.agerl.report import _age_agreement, _verdict

    def rates(*ps, ev=None):
        return {f"{t:+g}": {"success_rate": p, "mean_age_change": 10.0 * (i + 1),
                            **({"mean_age_change_evaluator": ev * 10.0 * (i + 1)} if ev is not None else {})}
                for i, (t, p) in enumerate(zip((-15, 15, 30), ps))}

    res = {"Policy": rates(0.5, 0.9, 0.22, ev=0.1), "Walk": rates(0.53, 0.82, 0.25, ev=0.5)}
    mean = {k: sum(r["success_rate"] for r in v.values()) / 3 for k, v in res.items()}
    assert "does not win beyond noise" in _verdict(mean, "Policy", res, 200)   # +0.010 at n = 200
    big = {"Policy": rates(0.9, 0.95, 0.8), "Walk": rates(0.5, 0.5, 0.2)}
    mean = {k: sum(r["success_rate"] for r in v.values()) / 3 for k, v in big.items()}
    assert " wins " in _verdict(mean, "Policy", big, 200)
    assert "does NOT win" in _verdict({"Policy": 0.2, "Walk": 0.8}, "Policy", {"Policy": rates(0.2, 0.2, 0.2), "Walk": rates(0.8, 0.8, 0.8)}, 200)
    line = _age_agreement(res, "HSEAgeGender")
    assert "Policy 0.10" in line and "Walk 0.50" in line
