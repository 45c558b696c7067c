"""A report folder holds one report: what made it is recorded (made_by.json), another report is
refused before its work, the same report again replaces it (stale files of it removed), and every
file is written atomically. The quality report, the benchmark and the disentangle report alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exface.errors import ExfaceFileError, ExfaceStateError, format_error
from exface.report_dir import RECORD, ReportDir, identity_differences
from exface.testing.tiny import TinyEmbedder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


# ---------------------------------------------------------------- the shared rule


def test_report_dir_rule(tmp_path):
    out = tmp_path / "rep"
    with ReportDir(out, {"input": {"sha256": "a" * 64}, "seed": 0}, "test report") as rd:
        rd.write_text("a.txt", "1")
        rd.write_text("old.png", "x")
    rec = json.loads((out / RECORD).read_text())
    assert rec["status"] == "complete" and rec["files"] == ["a.txt", "old.png"] and rec["made_by"]["seed"] == 0
    (out / "notes.txt").write_text("mine")  # not the report's: never touched
    # another identity: refused, naming the keys, nothing changed
    before = _snapshot(out)
    with pytest.raises(ExfaceStateError, match="seed: the folder's report has 0, this run 1") as err:
        with ReportDir(out, {"input": {"sha256": "b" * 64}, "seed": 1}, "test report"):
            raise AssertionError("the work must not start")
    assert "input.sha256: the folder's report has 'aaaaaaaaaaaa...'" in str(err.value)
    assert err.value.where == str(out) and "another folder" in err.value.fix
    assert _snapshot(out) == before
    # the same identity: replaced; its file the new run does not write is removed, others' kept
    with ReportDir(out, {"seed": 0, "input": {"sha256": "a" * 64}}, "test report") as rd:
        rd.write_text("a.txt", "2")
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["a.txt", RECORD, "notes.txt"]
    assert (out / "a.txt").read_text() == "2" and (out / "notes.txt").read_text() == "mine"
    # a failed run keeps what it wrote listed and its record says so
    with pytest.raises(RuntimeError):
        with ReportDir(out, {"seed": 0, "input": {"sha256": "a" * 64}}, "test report") as rd:
            rd.write_text("b.txt", "partial")
            raise RuntimeError("crash")
    rec = json.loads((out / RECORD).read_text())
    assert rec["status"] == "incomplete" and rec["files"] == ["a.txt", "b.txt"]
    # files but no record (another program's, or a report of an older exface): refused
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "report.json").write_text("{}")
    with pytest.raises(ExfaceStateError, match="holds no made_by.json"):
        with ReportDir(legacy, {"seed": 0}, "test report"):
            pass
    assert sorted(p.name for p in legacy.iterdir()) == ["report.json"]  # not even a .lock left there
    # a damaged record is named
    (out / RECORD).write_text("{not json")
    with pytest.raises(ExfaceFileError, match="made_by.json is damaged") as err:
        with ReportDir(out, {"seed": 0}, "test report"):
            pass
    assert err.value.where.endswith(RECORD)
    # a claim that wrote nothing (a run that failed before its first file) does not hold the folder
    empty = tmp_path / "empty"
    with pytest.raises(RuntimeError):
        with ReportDir(empty, {"seed": 0}, "test report"):
            raise RuntimeError("bad input found late")
    with ReportDir(empty, {"seed": 1}, "test report") as rd:
        rd.write_text("a.txt", "ok")
    assert json.loads((empty / RECORD).read_text())["made_by"] == {"seed": 1}


def test_identity_differences_name_nested_and_missing_keys():
    assert identity_differences({"a": {"b": 1}, "l": [{"x": 1}]}, {"a": {"b": 1}, "l": [{"x": 1}]}) == []
    diffs = identity_differences({"a": {"b": 1}, "l": [{"x": 1}]}, {"a": {"b": 2}, "l": [{"x": 1}, {"x": 2}]})
    assert diffs == ["a.b: the folder's report has 1, this run 2", "l[1].x: the folder's report has nothing, this run 2"]
    assert identity_differences({"t": (1, 2)}, {"t": [1, 2]}) == []  # compared as JSON records them


# ---------------------------------------------------------------- the quality report


def test_quality_report_refuses_another_datasets_report_before_its_work(tmp_path, monkeypatch):
    """Probe p37: another seed and output_dir, the same report_dir: the first report stays."""
    import importlib

    rep_mod = importlib.import_module("exface.exfacegan.report")
    from tests.test_report_like_for_like import _synth

    _, (gan, aligner, emb, *_) = _synth(tmp_path / "a")
    _synth(tmp_path / "b", seed=1)
    out = tmp_path / "report"
    kw = dict(batch_size=6, seed=0, baselines=False, independent_evaluator=False)
    first = rep_mod.quality_report(tmp_path / "a" / "ds", out, gan, aligner, emb, **kw)
    assert first["made_by"]["dataset"]["path"] == str((tmp_path / "a" / "ds").resolve())
    assert json.loads((out / RECORD).read_text())["made_by"] == first["made_by"]
    assert json.loads((out / "report.json").read_text())["made_by"] == first["made_by"]
    before = _snapshot(out)

    def no_work(*a, **k):
        raise AssertionError("the refusal must come before the report's work")

    with monkeypatch.context() as mp:
        mp.setattr(rep_mod, "_quality_report_into", no_work)
        with pytest.raises(ExfaceStateError, match="holds another quality report") as err:
            rep_mod.quality_report(tmp_path / "b" / "ds", out, gan, aligner, emb, **kw)
        text = str(err.value)
        assert "dataset.path" in text and "dataset.latents_sha256" in text and err.value.where == str(out)
        assert "exface report --dataset_dir" in err.value.fix
        # the same dataset with another setting is another report too
        with pytest.raises(ExfaceStateError, match="settings.seed: the folder's report has 0, this run 1"):
            rep_mod.quality_report(tmp_path / "a" / "ds", out, gan, aligner, emb, **dict(kw, seed=1))
        with pytest.raises(ExfaceStateError, match="parts.evaluator"):
            rep_mod.quality_report(tmp_path / "a" / "ds", out, gan, aligner, emb,
                                   **dict(kw, independent_evaluator=True, evaluator=TinyEmbedder(seed=9)))
    assert _snapshot(out) == before
    assert json.loads((out / "report.json").read_text())["dataset"] == str(tmp_path / "a" / "ds")
    # the same report again regenerates it (batch_size does not change it)
    again = rep_mod.quality_report(tmp_path / "a" / "ds", out, gan, aligner, emb, **dict(kw, batch_size=12))
    assert again["sets"] == first["sets"] and again["made_by"] == first["made_by"]
    # the other dataset's report in a folder of its own
    other = rep_mod.quality_report(tmp_path / "b" / "ds", tmp_path / "report_b", gan, aligner, emb, **kw)
    assert other["made_by"]["dataset"]["latents_sha256"] != first["made_by"]["dataset"]["latents_sha256"]


def test_synthesize_refuses_another_datasets_report_folder_before_synthesis(tmp_path):
    """refuse_other_report: what synthesize checks before any image, on the dataset path alone."""
    from exface.exfacegan.report import quality_report
    from exface.report_dir import refuse_other_report
    from tests.test_report_like_for_like import _synth

    _, (gan, aligner, emb, *_) = _synth(tmp_path / "a")
    out = tmp_path / "report"
    quality_report(tmp_path / "a" / "ds", out, gan, aligner, emb, batch_size=6, seed=0, baselines=False,
                   independent_evaluator=False)
    before = _snapshot(out)
    same = {"dataset": {"path": str((tmp_path / "a" / "ds").resolve())}}
    refuse_other_report(out, same, "quality report")  # the same dataset: its report may be regenerated
    refuse_other_report(tmp_path / "nothing_yet", same, "quality report")
    with pytest.raises(ExfaceStateError, match="dataset.path: the folder's report has") as err:
        refuse_other_report(out, {"dataset": {"path": str(tmp_path / "b" / "ds")}}, "quality report", fix="elsewhere")
    assert err.value.where == str(out) and err.value.fix == "elsewhere"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(ExfaceStateError, match="holds no made_by.json"):
        refuse_other_report(tmp_path / "foreign", same, "quality report")
    assert _snapshot(out) == before


def test_quality_report_of_a_re_synthesized_dataset_replaces_its_report(tmp_path):
    """The same dataset synthesized again (a resume with nothing to redo) and reported again: replaced."""
    from exface.exfacegan.report import quality_report
    from exface.exfacegan.samplers import ExFaceGANSampler
    from exface.exfacegan.synthesis import synthesize_dataset
    from tests.test_report_like_for_like import _synth

    _, (gan, aligner, emb, bnd, refs) = _synth(tmp_path)
    kw = dict(batch_size=6, seed=0, independent_evaluator=False)
    first = quality_report(tmp_path / "ds", tmp_path / "report", gan, aligner, emb, **kw)
    files = sorted(json.loads((tmp_path / "report" / RECORD).read_text())["files"])
    assert files == ["grid.png", "grid_noise.png", "grid_noise_equal_diversity.png", "grid_random.png", "report.json",
                     "report.md", "similarity_hist.png"]
    stats = synthesize_dataset(gan, aligner, emb, bnd, refs, tmp_path / "ds", images_per_identity=6, num_identities=2,
                               sampler=ExFaceGANSampler(0.0, 2.0), batch_size=6, accelerator="cpu", progress=False,
                               extra_settings={"bank": str(tmp_path / "bank"),
                                               "boundaries": str(tmp_path / "boundaries.pt")})
    assert stats["redone_items"] == 0
    again = quality_report(tmp_path / "ds", tmp_path / "report", gan, aligner, emb, **kw)
    assert again["sets"] == first["sets"] and again["made_by"] == first["made_by"]


@pytest.mark.parametrize("case", ["missing", "file", "not_a_dataset", "bad_json", "running"])
def test_report_on_a_folder_that_is_no_dataset_names_the_file(tmp_path, case):
    from exface.exfacegan.report import quality_report
    from exface.testing.tiny import TinyGenerator
    from exface.alignment import ResizeAligner

    root = tmp_path / "ds"
    where = root
    if case == "file":
        root.write_text("x")
    elif case == "not_a_dataset":
        root.mkdir()
        (root / "chunk_00000.pt").write_bytes(b"")
        where = root / "synthesis.json"
    elif case in ("bad_json", "running"):
        root.mkdir()
        (root / "synthesis.json").write_text('{"format": "exface-synthetic-dataset",\n' if case == "bad_json" else
                                             json.dumps({"format": "exface-synthetic-dataset", "identities": [],
                                                         "images_per_identity": 1, "space": "w", "sampler": {},
                                                         "status": "running"}))
        where = root / "synthesis.json"
    err_type = ExfaceStateError if case == "running" else ExfaceFileError
    with pytest.raises(err_type) as err:
        quality_report(root, tmp_path / "report", TinyGenerator(z_dim=8, resolution=16), ResizeAligner((16, 16)),
                       TinyEmbedder())
    assert err.value.where == str(where) and err.value.fix
    assert "Traceback" not in format_error(err.value) and "JSONDecodeError" not in str(err.value)
    assert not (tmp_path / "report").exists()  # nothing written for a bad input


def test_report_command_prints_one_screen_for_a_missing_dataset(tmp_path, capsys):
    from exface.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["report", "--dataset_dir", str(tmp_path / "nope"), "--generator", "TinyGenerator",
              "--aligner", "ResizeAligner", "--aligner.output_size", "[16, 16]", "--embedder", "TinyEmbedder"])
    assert ex.value.code == 1
    err = capsys.readouterr().err
    assert "the dataset folder does not exist" in err and str(tmp_path / "nope") in err and "fix:" in err
    assert "FileNotFoundError" not in err


# ---------------------------------------------------------------- the benchmark


def _bin(tmp_path: Path, name: str, seed: int) -> Path:
    from exface.evaluation.datasets import write_insightface_bin
    from tests.test_verification import _tiny_bin_set

    vs = _tiny_bin_set(12, seed=seed)
    path = tmp_path / f"{name}.bin"
    write_insightface_bin(path, list(vs.images), vs.issame.tolist())
    return path


def test_benchmark_refuses_another_run_and_replaces_its_own(tmp_path, monkeypatch):
    """Probe p48: another embedder (or other sets) into the same output_dir keeps the first results."""
    from exface.alignment import ResizeAligner
    from exface.evaluation import benchmark as bm

    a, b = _bin(tmp_path, "a", 1), _bin(tmp_path, "b", 2)
    out = tmp_path / "bench"
    kw = dict(folds=3, output_dir=out)
    (first,) = bm.run_benchmark([a], TinyEmbedder(), ResizeAligner((16, 16)), **kw)
    assert (out / "roc_a.png").is_file() and first["roc_png"] == str(out / "roc_a.png")
    payload = json.loads((out / "results.json").read_text())
    assert payload["made_by"]["datasets"][0]["sha256"] == first["sha256"]
    before = _snapshot(out)

    def no_work(*a, **k):
        raise AssertionError("the refusal must come before any embedding")

    with monkeypatch.context() as mp:
        mp.setattr(bm, "score_set", no_work)
        with pytest.raises(ExfaceStateError, match="parts.embedder.weights_sha256") as err:
            bm.run_benchmark([a], TinyEmbedder(seed=3), ResizeAligner((16, 16)), **kw)
        assert err.value.where == str(out) and "another --output_dir" in err.value.fix
        with pytest.raises(ExfaceStateError, match=r"datasets\[0\].name"):
            bm.run_benchmark([b], TinyEmbedder(), ResizeAligner((16, 16)), **kw)
        with pytest.raises(ExfaceStateError, match=r"datasets\[1\]"):
            bm.run_benchmark([a, b], TinyEmbedder(), ResizeAligner((16, 16)), **kw)
        with pytest.raises(ExfaceStateError, match="parts.aligner"):
            bm.run_benchmark([a], TinyEmbedder(), ResizeAligner((12, 12)), **kw)
    assert _snapshot(out) == before
    # the same embedder, aligner and set with other protocol options: re-scored, replaced; without
    # ROC curves the old run's roc_a.png goes (it would sit beside results it is not of)
    (again,) = bm.run_benchmark([a], TinyEmbedder(), ResizeAligner((16, 16)), folds=4, output_dir=out, roc=False)
    assert again["num_folds"] == 4 and "roc_png" not in again and not (out / "roc_a.png").exists()
    assert json.loads((out / "results.json").read_text())["results"][0]["num_folds"] == 4
    assert "roc_a.png" not in (out / "report.md").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".partial-") or p.name.endswith(".tmp")]


def test_benchmark_keeps_saved_embeddings_of_its_own_sets(tmp_path):
    from exface.alignment import ResizeAligner
    from exface.evaluation import benchmark as bm

    a = _bin(tmp_path, "a", 1)
    out = tmp_path / "bench"
    (first,) = bm.run_benchmark([a], TinyEmbedder(), ResizeAligner((16, 16)), folds=3, output_dir=out,
                                save_embeddings=True)
    # a run without save_embeddings does not delete them: they are of the same sets, embedder and aligner
    bm.run_benchmark([a], TinyEmbedder(), ResizeAligner((16, 16)), folds=3, output_dir=out)
    assert (out / "a.embeddings.npy").is_file() and (out / "a.embeddings.json").is_file()
    (again,) = bm.run_benchmark([a], TinyEmbedder(), ResizeAligner((16, 16)), folds=2, output_dir=out,
                                save_embeddings=True)
    assert not again["embedded"]
    files = json.loads((out / RECORD).read_text())["files"]
    assert "a.embeddings.npy" in files and "results.json" in files


def test_benchmark_refuses_a_folder_of_an_older_run(tmp_path):
    from exface.alignment import ResizeAligner
    from exface.evaluation import benchmark as bm

    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.json").write_text('{"results": []}')
    (out / "roc_old.png").write_bytes(b"png")
    with pytest.raises(ExfaceStateError, match="holds no made_by.json"):
        bm.run_benchmark([_bin(tmp_path, "a", 1)], TinyEmbedder(), ResizeAligner((16, 16)), folds=3, output_dir=out)
    assert (out / "roc_old.png").read_bytes() == b"png"


# ---------------------------------------------------------------- the disentangle report


def _per_pair(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"mapper/J/id_margin": torch.randn(n, generator=g), "mapper/L/lmk_margin": torch.randn(n, generator=g),
            "recon/pixel/mse": torch.rand(n, generator=g)}


def test_disentangle_report_refuses_another_checkpoint_or_pair_count(tmp_path):
    """Probe p65: another --pairs or another checkpoint into a folder holding a report."""
    from exface.disentangle.evaluation import IdentityJudge, LandmarkJudge, write_report

    judges = ([IdentityJudge("J", None, True)], [LandmarkJudge("L", None, True)])
    grid = np.zeros((8, 8, 3), np.uint8)
    ck = tmp_path / "last.ckpt"
    ck.write_bytes(b"weights 1")
    settings = {"checkpoint": str(ck), "global_step": 10, "hparams": {"lr": 0.1, "report_dir": "x"},
                "identity_mean_first_seed": 7}
    out = tmp_path / "report"
    res = write_report(out, _per_pair(4), grid, *judges, settings=settings)
    assert res["made_by"]["checkpoint"]["path"] == str(ck.resolve()) and res["made_by"]["pairs"] == 4
    assert sorted(json.loads((out / RECORD).read_text())["files"]) == ["per_pair.npz", "report.json", "report.md",
                                                                         "swap_grid.png"]
    before = _snapshot(out)
    with pytest.raises(ExfaceStateError, match="pairs: the folder's report has 4, this run 2"):
        write_report(out, _per_pair(2), grid, *judges, settings=settings)
    ck.write_bytes(b"weights 2")  # training went on: last.ckpt is another model now
    with pytest.raises(ExfaceStateError, match="checkpoint.sha256") as err:
        write_report(out, _per_pair(4), grid, *judges, settings=settings)
    assert err.value.where == str(out) and "another output_dir" in err.value.fix
    assert _snapshot(out) == before
    ck.write_bytes(b"weights 1")
    # the same checkpoint and pairs again: replaced (report_dir / eval_batch_size are not the identity)
    same = dict(settings, hparams={"lr": 0.1, "report_dir": "elsewhere", "eval_batch_size": 2})
    write_report(out, _per_pair(4, seed=1), grid, *judges, settings=same)
    assert json.loads((out / "report.json").read_text())["settings"]["hparams"]["report_dir"] == "elsewhere"


def test_module_report_into_a_folder_of_another_report_is_refused(tmp_path):
    from tests.test_disentangle import _tiny_module

    m = _tiny_module()
    m.report(tmp_path / "rep", pairs=4)
    before = _snapshot(tmp_path / "rep")
    with pytest.raises(ExfaceStateError, match="pairs: the folder's report has 4, this run 2"):
        m.report(tmp_path / "rep", pairs=2)
    assert _snapshot(tmp_path / "rep") == before
    m.report(tmp_path / "rep", pairs=4)  # the same report again


def test_disentangle_report_is_refused_before_its_evaluation_and_training(tmp_path, monkeypatch):
    """The refusal comes before the held-out pairs are evaluated (minutes) and, for the report a
    training writes at its end, before the training."""
    import lightning.pytorch as pl

    from exface.disentangle.datamodule import GeneratorPairDataModule
    from tests.test_disentangle import _tiny_module

    m = _tiny_module()
    m.report(tmp_path / "rep", pairs=4)
    evaluated = []
    real = m.evaluate_seeds
    monkeypatch.setattr(m, "evaluate_seeds", lambda *a, **k: evaluated.append(1) or real(*a, **k))
    with pytest.raises(ExfaceStateError, match="pairs: the folder's report has 4, this run 2"):
        m.report(tmp_path / "rep", pairs=2)
    assert evaluated == []
    # a training whose final report would go into that folder with other settings stops before its first step
    other = _tiny_module(lr=5e-3, report_dir=str(tmp_path / "rep"))
    steps = []
    monkeypatch.setattr(other, "training_step", lambda *a, **k: steps.append(1))
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(ExfaceStateError, match=r"hparams.lr: the folder's report has 0.001, this run 0.005"):
        trainer.fit(other, datamodule=GeneratorPairDataModule(batch_size=2, val_pairs=0))
    assert steps == []
