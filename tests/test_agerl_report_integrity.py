"""The age report's folder and its merges hold one report of one set of editors, and a policy
file is not replaced by a training of other settings (tiny parts, a few seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exface.agerl.editors import AgePolicyEditor, GradientWalkEditor
from exface.agerl.module import AgePolicyModule
from exface.errors import ExfaceError, ExfaceStateError
from exface.report_dir import RECORD
from test_agerl import Stay, make_env

KW = dict(num_starts=3, grid_starts=1)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def _no_work(monkeypatch):
    """Make any editor run fail: a refusal must come before the work."""
    import exface.agerl.report as report

    def boom(*a, **k):
        raise AssertionError("the report's work started")

    monkeypatch.setattr(report, "_run_report", boom, raising=False)


# ---------------------------------------------------------------- 1. --merge: one name, one editor


def test_merge_refuses_one_editor_name_with_other_settings(tmp_path, monkeypatch):
    from exface.agerl.report import age_report

    env = make_env(max_steps=2)
    a, b = tmp_path / "a", tmp_path / "b"
    age_report(env, [GradientWalkEditor(0.05)], output_dir=str(a), targets=[-15.0], **KW)
    age_report(env, [GradientWalkEditor(5.0, shorten=True)], output_dir=str(b), targets=[15.0], **KW)
    merge = [str(a / "report.json"), str(b / "report.json")]
    _no_work(monkeypatch)
    # two merged runs: the name GradientWalkEditor stands for two editors
    with pytest.raises(ExfaceError, match=(r"(?s)editor 'GradientWalkEditor' ran with other settings in .*/a than in "
                                           r".*/b \(shorten: False vs True; step_size: 0.05 vs 5.0\).*in: .*b/report"
                                           r"\.json.*fix: run the editors of different settings in one age-report"
                                           r".*merge only runs whose GradientWalkEditor has the same settings")) as err:
        age_report(env, [Stay()], output_dir=str(tmp_path / "m"), targets=[-15.0, 15.0], merge=merge, **KW)
    assert len(str(err.value).splitlines()) == 3
    assert not (tmp_path / "m").exists()  # refused before the folder was touched
    # this run's editor and a merged run's of the same name
    with pytest.raises(ExfaceError, match=r"GradientWalkEditor' ran with other settings in this run than in .*/b"):
        age_report(env, [GradientWalkEditor(0.05)], output_dir=str(tmp_path / "m"), targets=[-15.0],
                   merge=merge[1:], **KW)


def test_merge_refuses_a_policy_file_replaced_between_the_runs(tmp_path):
    from exface.agerl.report import age_report

    env = make_env(max_steps=2)
    path = tmp_path / "policy.pt"
    torch.manual_seed(0)
    AgePolicyModule(env, num_envs=2).save_policy(path)
    age_report(env, [AgePolicyEditor(str(path))], output_dir=str(tmp_path / "a"), targets=[-15.0], **KW)
    torch.manual_seed(1)  # the same settings (allowed to replace it), other weights
    AgePolicyModule(env, num_envs=2).save_policy(path)
    age_report(env, [AgePolicyEditor(str(path))], output_dir=str(tmp_path / "b"), targets=[15.0], **KW)
    merge = [str(tmp_path / "a" / "report.json"), str(tmp_path / "b" / "report.json")]
    with pytest.raises(ExfaceError, match=r"editor 'AgePolicyEditor' ran with other settings .*path: another file"):
        age_report(env, [], output_dir=str(tmp_path / "m"), targets=[-15.0, 15.0], merge=merge, **KW)


def test_merge_refuses_another_attribute_and_merging_into_a_merged_folder(tmp_path):
    from exface.agerl.report import age_report

    env = make_env(max_steps=2)
    a = tmp_path / "a"
    age_report(env, [GradientWalkEditor(0.5)], output_dir=str(a), targets=[-15.0], **KW)
    assert json.loads((a / "report.json").read_text())["settings"]["attribute"] == "age"
    with pytest.raises(ExfaceError, match="(?s)lies in this report's output_dir.*fix: write the merged report into another"):
        age_report(env, [Stay()], output_dir=str(a), targets=[-15.0], merge=[str(a / "report.json")], **KW)
    data = json.loads((a / "report.json").read_text())
    data["settings"]["attribute"] = "gender"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ExfaceError, match="attribute: 'gender' there, 'age' here"):
        age_report(env, [Stay()], output_dir=str(tmp_path / "m"), targets=[-15.0], merge=[str(other)], **KW)


# ---------------------------------------------------------------- 2. the report folder


def test_age_report_folder_records_what_made_it_and_refuses_another_report(tmp_path, monkeypatch):
    from exface.agerl.report import age_report

    env = make_env(max_steps=2)
    out = tmp_path / "rep"
    rep = age_report(env, [GradientWalkEditor(0.5)], output_dir=str(out), targets=[-15.0, 30.0], **KW)
    rec = json.loads((out / RECORD).read_text())
    assert rec["status"] == "complete" and rec["report"] == "age report"
    assert set(rec["files"]) == {"report.json", "report.md", "curves.png", "grid_GradientWalkEditor_-15.png",
                                 "grid_GradientWalkEditor_+30.png"}
    made_by = rec["made_by"]
    assert made_by == rep["made_by"] == json.loads((out / "report.json").read_text())["made_by"]
    assert made_by["editors"]["GradientWalkEditor"]["args"]["step_size"] == 0.5
    assert made_by["starts"] == {"num_starts": 3, "start_seed": 2026} and made_by["targets"] == [-15.0, 30.0]
    assert "weights_sha256" in made_by["env"]["parts"]["age_predictor"] and made_by["env"]["identity_bound"] == 0.8
    # the same report again: regenerated in place
    age_report(env, [GradientWalkEditor(0.5)], output_dir=str(out), targets=[-15.0, 30.0], **KW)
    assert set(_snapshot(out)) == set(rec["files"]) | {RECORD}
    # another report (the review's repro): refused before any editor runs, the folder as it was
    before = _snapshot(out)
    monkeypatch.setattr(type(env), "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("an editor ran")))
    with pytest.raises(ExfaceStateError, match=r"(?s)holds another age report.*editors\.Stay.*starts\.num_starts: "
                                               r"the folder's report has 3, this run 8.*fix: write this age report "
                                               r"into another output_dir") as err:
        age_report(env, [Stay()], output_dir=str(out), targets=[15.0], num_starts=8, grid_starts=1)
    assert err.value.where == str(out)
    assert _snapshot(out) == before
    # a folder of files without a record (an older exface's report): refused too
    old = tmp_path / "old"
    old.mkdir()
    (old / "grid_GradientWalkEditor_-15.png").write_bytes(b"png")
    with pytest.raises(ExfaceStateError, match="holds no made_by.json"):
        age_report(env, [Stay()], output_dir=str(old), targets=[15.0], **KW)


def test_age_report_identity_holds_the_policy_file_digest_and_the_merged_reports(tmp_path):
    from exface.agerl.report import age_report

    env = make_env(max_steps=2)
    path = tmp_path / "policy.pt"
    torch.manual_seed(0)
    AgePolicyModule(env, num_envs=2).save_policy(path)
    out = tmp_path / "rep"
    age_report(env, [AgePolicyEditor(str(path))], output_dir=str(out), targets=[15.0], **KW)
    made_by = json.loads((out / RECORD).read_text())["made_by"]
    assert set(made_by["editors"]["AgePolicyEditor"]["files_sha256"]) == {"path"}
    assert "path" not in made_by["editors"]["AgePolicyEditor"]["args"]  # by content, not by path
    torch.manual_seed(1)
    AgePolicyModule(env, num_envs=2).save_policy(path)  # retrained with the same settings: other weights
    with pytest.raises(ExfaceStateError, match=r"editors\.AgePolicyEditor\.files_sha256\.path"):
        age_report(env, [AgePolicyEditor(str(path))], output_dir=str(out), targets=[15.0], **KW)
    # merged folders are inputs, recorded; the merged grid is written through the record
    merged = tmp_path / "merged"
    age_report(env, [Stay()], output_dir=str(merged), targets=[15.0], merge=[str(out / "report.json")], **KW)
    rec = json.loads((merged / RECORD).read_text())
    assert rec["made_by"]["merged"][0]["path"] == str((out / "report.json").resolve())
    assert rec["made_by"]["merged"][0]["made_by"] == made_by
    assert "grid_AgePolicyEditor_+15.png" in rec["files"] and (merged / "grid_AgePolicyEditor_+15.png").is_file()


# ---------------------------------------------------------------- 3. the policy file


def test_save_policy_refuses_a_policy_of_other_settings(tmp_path):
    env = make_env(max_steps=2)
    path = tmp_path / "policy.pt"
    AgePolicyModule(env, num_envs=2, lr=1e-3).save_policy(path)
    assert torch.load(path, weights_only=True)["settings"]["lr"] == 1e-3
    before = path.read_bytes()
    with pytest.raises(ExfaceStateError, match=r"(?s)policy.pt already holds a policy trained with other settings.*"
                                               r"lr: the file has 0.001, this run 0.0005.*in: .*policy.pt.*fix: pass "
                                               r"another model.init_args.save_path"):
        AgePolicyModule(env, num_envs=2, lr=5e-4).save_policy(path)
    with pytest.raises(ExfaceStateError, match=r"env.identity_bound: the file has 0.8, this run 0.9"):
        AgePolicyModule(make_env(max_steps=2, identity_bound=0.9), num_envs=2, lr=1e-3).save_policy(path)
    assert path.read_bytes() == before
    AgePolicyModule(env, num_envs=2, lr=1e-3).save_policy(path)  # the same settings: replaced
    assert not list(tmp_path.glob(".partial-*"))
    # a file that is no policy, and a policy that does not record its settings: not replaced
    (tmp_path / "other.pt").write_bytes(b"not a policy")
    with pytest.raises(ExfaceStateError, match="not a readable age-policy file"):
        AgePolicyModule(env, num_envs=2).save_policy(tmp_path / "other.pt")
    rec = torch.load(path, weights_only=True)
    del rec["settings"]
    torch.save(rec, tmp_path / "old.pt")
    with pytest.raises(ExfaceStateError, match="does not record the settings it was trained with"):
        AgePolicyModule(env, num_envs=2, lr=1e-3).save_policy(tmp_path / "old.pt")
    # ... unless this run resumes a checkpoint (whose settings check_resume compared): the older run's own file
    from types import SimpleNamespace

    resumed = AgePolicyModule(env, num_envs=2, lr=1e-3)
    resumed._trainer = SimpleNamespace(ckpt_path="ckpt/last.ckpt")
    resumed.refuse_other_policy(tmp_path / "old.pt")


def test_training_into_a_save_path_of_other_settings_is_refused_before_its_rollouts(tmp_path, monkeypatch):
    import lightning.pytorch as pl

    from exface.agerl.module import RolloutDataModule

    env = make_env(max_steps=2)
    path = tmp_path / "policy.pt"
    AgePolicyModule(env, num_envs=2, seed=0).save_policy(path)
    before = path.read_bytes()
    rollouts = []
    monkeypatch.setattr(AgePolicyModule, "collect", lambda self, i: rollouts.append(i) or (_ for _ in ()).throw(
        AssertionError("a rollout ran")))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ExfaceStateError, match="seed: the file has 0, this run 1"):
        trainer.fit(AgePolicyModule(env, num_envs=2, seed=1, save_path=str(path)), datamodule=RolloutDataModule(1))
    assert rollouts == [] and path.read_bytes() == before
