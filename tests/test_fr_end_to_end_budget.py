"""benchmarks/fr_end_to_end.py's step budget across reruns (every stage stubbed: no data, no training)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("fr_end_to_end", REPO / "benchmarks" / "fr_end_to_end.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    work, lfw = tmp_path / "work", tmp_path / "lfw"
    lfw.mkdir()
    (lfw / "pairs.txt").write_text("")
    trained = []

    def train(args, data_dir, out_dir, steps, log_every=10, seed=None):
        trained.append((data_dir.name, steps))
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        last = out_dir / "checkpoints" / "last.ckpt"
        torch.save({"global_step": steps}, last)
        return last, 1.0

    ds = {"pixel_diversity": 0.1, "images": 100, "identities": 5}
    monkeypatch.setattr(mod, "fit_boundaries", lambda *a, **k: None)
    monkeypatch.setattr(mod, "synthesize_boundary_set", lambda work, *a, **k: work / "datasets" / "boundary")
    names = ("boundary", "noise_same_distance", "noise_equal_diversity")
    monkeypatch.setattr(mod, "make_baselines", lambda *a: {n: dict(ds) for n in names})
    monkeypatch.setattr(mod, "lfw_crops", lambda *a: None)
    monkeypatch.setattr(mod, "probe_step_seconds", lambda *a: 1.0)
    monkeypatch.setattr(mod, "make_backbone", lambda args, seed=None: None)
    monkeypatch.setattr(mod, "train", train)
    monkeypatch.setattr(mod, "score", lambda vs, emb: {"accuracy": 0.5, "accuracy_std": 0.0, "auc": 0.5})
    monkeypatch.setattr("exface.fr.checkpoint_embedder.FRCheckpointEmbedder", lambda path: None)
    return mod, work, lfw, trained


def _results(work: Path) -> dict:
    return json.loads((work / "results.json").read_text())


def test_budget_comes_from_data_stages_and_is_kept_on_reruns(bench):
    mod, work, lfw, trained = bench
    work.mkdir()
    # an interrupted earlier run: data stages timed, a long training stage recorded, no budget yet
    stages = {"fit": {"seconds": 100.0}, "synthesize_boundary": {"seconds": 50.0}, "lfw_align": {"seconds": 10.0},
              "train_boundary": {"seconds": 5000.0}}
    (work / "results.json").write_text(json.dumps({"stages": stages}))
    for f in ("boundaries.pt", "lfw_fold1_arcface112.npy"):  # their stages count as done: times kept
        (work / f).write_text("")
    (work / "datasets" / "boundary").mkdir(parents=True)
    (work / "datasets" / "boundary" / "manifest.jsonl").write_text("")
    argv = ["--work", str(work), "--lfw", str(lfw), "--total_minutes", "10", "--threads", "1"]
    assert mod.main(argv) == 0
    steps = int((600 - 160 - 60) / 1.1 / 3 / 1.0)  # baselines (stubbed) take ~0 s
    res = _results(work)
    assert res["budget"]["steps"] == steps and [s for _, s in trained] == [steps] * 3
    assert all(res["lfw"][n]["global_step"] == steps for n in ("boundary", "noise_same_distance",
                                                                 "noise_equal_diversity"))
    # a rerun (all stages now in results.json, a slower probe) keeps the budget
    bench[0].probe_step_seconds = lambda *a: 100.0
    assert mod.main(argv) == 0 and _results(work)["budget"]["steps"] == steps
    assert [s for _, s in trained] == [steps] * 6
    assert mod.main([*argv, "--steps", str(steps)]) == 0


def test_rerun_with_other_steps_stops_naming_the_work_dir(bench, capsys):
    mod, work, lfw, trained = bench
    argv = ["--work", str(work), "--lfw", str(lfw), "--threads", "1"]
    assert mod.main([*argv, "--steps", "20"]) == 0 and _results(work)["budget"]["steps"] == 20
    n = len(trained)
    assert mod.main([*argv, "--steps", "30"]) == 2
    err = capsys.readouterr().err
    assert str(work) in err and "--steps 20" in err and len(trained) == n
    assert mod.main([*argv, "--steps", "20", "--batch", "32"]) == 2


def test_train_seeds_split_the_budget_and_report_spreads(bench, monkeypatch):
    mod, work, lfw, trained = bench
    accs = iter([0.60, 0.62, 0.64])  # untrained inits 0, 1, 2

    def score(vs, emb):
        return {"accuracy": next(accs, 0.7), "accuracy_std": 0.0, "auc": 0.5}

    monkeypatch.setattr(mod, "score", score)
    argv = ["--work", str(work), "--lfw", str(lfw), "--threads", "1", "--total_minutes", "10",
            "--train_seeds", "0", "1", "--datasets", "boundary", "noise_equal_diversity", "--untrained_seeds", "3"]
    assert mod.main(argv) == 0
    res = _results(work)
    steps = res["budget"]["steps"]
    assert steps == int((600 - 60) / 1.1 / 4 / 1.0)  # four trainings share the budget
    assert trained == [("boundary", steps), ("noise_equal_diversity", steps)] * 2
    assert res["untrained_inits"]["accuracies"] == [60.0, 62.0, 64.0] and res["untrained_inits"]["sd"] == 2.0
    assert set(res["lfw"]) == {"untrained", "boundary", "noise_equal_diversity", "boundary_seed1",
                               "noise_equal_diversity_seed1"}
    assert res["over_train_seeds"]["boundary"]["n"] == 2 and res["lfw"]["boundary_seed1"]["seed"] == 1
    assert (work / "fr" / "boundary_seed1" / "checkpoints" / "last.ckpt").is_file()
