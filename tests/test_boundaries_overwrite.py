"""Boundary files are never silently replaced by other settings, and damaged torch files are named.

1. ``Boundaries.save`` writes atomically and refuses to overwrite a file made with other
   settings or inputs (naming each difference); an identical re-fit may overwrite. The
   learners (``BoundaryFitModule``, ``BoundaryLearnerModule``, ``exface fit`` through the CLI)
   refuse before fitting.
2. A truncated or garbage boundaries, age-policy or FR-checkpoint file raises an
   ``ExfaceFileError`` naming the file and the fix, with torch's error chained.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from exface.boundaries import BoundaryFitModule, BoundaryLearnerModule, LinearSVCBoundary
from exface.boundaries.base import Boundaries
from exface.boundaries.torch_svm import _InMemoryBoundaryData
from exface.errors import ExfaceError, ExfaceFileError, ExfaceStateError


def _bnd(seed: int = 0, meta: dict | None = None, r: int = 3, d: int = 4, space: str = "w") -> Boundaries:
    g = torch.Generator().manual_seed(seed)
    normals = torch.nn.functional.normalize(torch.randn(r, d, generator=g), dim=1)
    return Boundaries(normals, torch.randn(r, generator=g), space, torch.ones(r), torch.ones(r),
                      dict(meta if meta is not None else {"learner": "X", "C": 1.0, "bank_references_sha256": "ab"}))


def _separable(n: int = 120, d: int = 4, r: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(r, d, generator=g)
    y = (x @ w.T > 0).T.to(torch.int8).contiguous()
    return x, y


# ------------------------------------------------------------------ 1. Boundaries.save


def test_save_refuses_other_settings_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "boundaries.pt"
    _bnd(0).save(path)
    before = path.read_bytes()
    other = _bnd(1, {"learner": "X", "C": 0.5, "bank_references_sha256": "cd", "label_rule": "top_k"})
    with pytest.raises(ExfaceStateError) as err:
        other.save(path)
    e = err.value
    assert e.where == str(path)
    for diff in ("C: recorded 1.0, given 0.5", "bank_references_sha256: recorded 'ab', given 'cd'",
                 "label_rule: recorded (absent), given 'top_k'"):
        assert diff in e.problem
    assert "another save_path" in e.fix and "delete" in e.fix
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["boundaries.pt"]  # no partial file left
    with pytest.raises(ExfaceStateError, match="space: recorded 'w', given 'z'"):
        _bnd(0, space="z").save(path)
    with pytest.raises(ExfaceStateError, match=r"shape \(boundaries x dim\): recorded \[3, 4\], given \[2, 4\]"):
        _bnd(0, r=2).save(path)


def test_save_of_an_identical_refit_overwrites(tmp_path):
    path = tmp_path / "boundaries.pt"
    _bnd(0, {"learner": "X", "C": 1.0, "invalid_value": float("nan"), "val_accuracy": [0.9]}).save(path)
    refit = _bnd(1, {"learner": "X", "C": 1.0, "invalid_value": float("nan"), "val_accuracy": [0.8]})
    refit.save(path)  # the measured results may differ, the settings are the same
    torch.testing.assert_close(Boundaries.load(path).normals, refit.normals)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "boundaries.pt"
    first = _bnd(0)
    first.save(path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash while renaming")

    monkeypatch.setattr("exface.exfacegan.run_files.os.replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        _bnd(1).save(path)  # same settings: allowed, but the write fails half-way
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["boundaries.pt"]


def test_save_refuses_to_replace_a_file_that_is_not_a_boundary_file(tmp_path):
    path = tmp_path / "boundaries.pt"
    path.write_bytes(b"my notes, not boundaries")
    with pytest.raises(ExfaceStateError, match="not a readable boundary file") as err:
        _bnd(0).save(path)
    assert err.value.where == str(path)
    assert path.read_bytes() == b"my notes, not boundaries"


# ------------------------------------------------------------ 1. the learners refuse early


class _Provenance(_InMemoryBoundaryData):
    def __init__(self, x, y, digest: str = "ab"):
        n = x.shape[0]
        super().__init__(x, y, torch.arange(0, n, 2), torch.arange(1, n, 2), batch_size=None, space="w")
        self.latents, self.labels = x, y
        self.provenance = {"bank": "bank", "bank_references_sha256": digest, "label_rule": "median"}


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0, **kw)


def test_boundary_fit_module_refuses_before_training(tmp_path):
    x, y = _separable()
    path = tmp_path / "boundaries.pt"
    _trainer().fit(BoundaryFitModule(C=1.0, save_path=str(path)), datamodule=_Provenance(x, y))
    before = path.read_bytes()
    module = BoundaryFitModule(C=0.5, save_path=str(path))
    with pytest.raises(ExfaceStateError, match="C: recorded 1.0, given 0.5") as err:
        _trainer().fit(module, datamodule=_Provenance(x, y))
    assert "model.init_args.save_path" in err.value.fix
    assert int(module.num_train) == 0  # refused before the statistics pass and the training
    with pytest.raises(ExfaceStateError, match="bank_references_sha256: recorded 'ab', given 'cd'"):
        _trainer().fit(BoundaryFitModule(C=1.0, save_path=str(path)), datamodule=_Provenance(x, y, "cd"))
    assert path.read_bytes() == before
    _trainer().fit(BoundaryFitModule(C=1.0, save_path=str(path)), datamodule=_Provenance(x, y))  # the same: fine


def test_boundary_learner_module_refuses_before_the_learner_runs(tmp_path, monkeypatch):
    x, y = _separable()
    path = tmp_path / "boundaries.pt"
    _trainer().fit(BoundaryLearnerModule(LinearSVCBoundary(C=1.0), save_path=str(path)), datamodule=_Provenance(x, y))
    assert Boundaries.load(path).meta["C"] == 1.0
    before = path.read_bytes()
    calls = []
    real_fit = LinearSVCBoundary.fit
    monkeypatch.setattr(LinearSVCBoundary, "fit", lambda self, *a, **k: calls.append(1) or real_fit(self, *a, **k))
    with pytest.raises(ExfaceStateError, match="C: recorded 1.0, given 0.5"):
        _trainer().fit(BoundaryLearnerModule(LinearSVCBoundary(C=0.5), save_path=str(path)),
                       datamodule=_Provenance(x, y))
    with pytest.raises(ExfaceStateError, match="bank_references_sha256"):
        _trainer().fit(BoundaryLearnerModule(LinearSVCBoundary(C=1.0), save_path=str(path)),
                       datamodule=_Provenance(x, y, "cd"))
    assert calls == [] and path.read_bytes() == before
    _trainer().fit(BoundaryLearnerModule(LinearSVCBoundary(C=1.0), save_path=str(path)), datamodule=_Provenance(x, y))
    assert calls == [1]


def _fit_recipe(tmp_path: Path) -> Path:
    import exface.testing.tiny  # noqa: F401  (registers the tiny parts)

    cfg = {
        "seed_everything": 0,
        "model": {"class_path": "BoundaryFitModule",
                  "init_args": {"C": 1.0, "save_path": str(tmp_path / "boundaries.pt")}},
        "data": {"class_path": "IdentityBankDataModule", "init_args": {
            "generator": {"class_path": "exface.testing.tiny.TinyGenerator", "init_args": {"z_dim": 8, "resolution": 16}},
            "embedder": {"class_path": "exface.testing.tiny.TinyEmbedder"},
            "aligner": {"class_path": "ResizeAligner", "init_args": {"output_size": [16, 16]}},
            "bank_dir": str(tmp_path / "bank"), "num_latents": 40, "chunk_size": 20, "num_references": 3,
            "space": "z", "accelerator": "cpu", "bank_batch_size": 20}},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0,
                    "enable_checkpointing": False, "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path)},
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_exface_fit_with_other_settings_into_the_same_save_path_is_refused(tmp_path, capsys, monkeypatch):
    from exface.cli import main

    monkeypatch.delenv("EXFACE_DEBUG", raising=False)
    recipe = _fit_recipe(tmp_path)
    main(["fit", "--config", str(recipe)])
    out = tmp_path / "boundaries.pt"
    before = out.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(recipe), "--model.init_args.C", "0.5"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "C: recorded 1.0, given 0.5" in err and f"in: {out}" in err and "fix: pass another" in err
    assert "Traceback" not in err
    assert out.read_bytes() == before
    main(["fit", "--config", str(recipe)])  # the same settings again: allowed


def test_exface_fit_refuses_before_building_the_bank(tmp_path, capsys, monkeypatch):
    """The refusal needs only the recipe: it comes before a bank build of minutes to hours."""
    from exface.cli import main

    monkeypatch.delenv("EXFACE_DEBUG", raising=False)
    recipe = _fit_recipe(tmp_path)
    main(["fit", "--config", str(recipe)])
    out = tmp_path / "boundaries.pt"
    before = out.read_bytes()
    for extra, diff in ((["--model.init_args.C", "0.5"], "C: recorded 1.0, given 0.5"),
                        (["--data.init_args.label_rule", "topk", "--data.init_args.top_k", "5"],
                         "label_rule: recorded 'median', given 'topk'"),
                        (["--data.init_args.space", "w"], "space: recorded 'z', given 'w'"),
                        (["--data.init_args.val_fraction", "0.5"], "val_fraction: recorded 0.3, given 0.5")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--config", str(recipe), "--data.init_args.bank_dir", str(tmp_path / "bank2"), *extra])
        err = capsys.readouterr().err
        assert exit_.value.code == 1 and diff in err and "Traceback" not in err, err
        assert not (tmp_path / "bank2").exists(), "the bank was built before the refusal"
    assert out.read_bytes() == before


def test_interfacegan_fit_refuses_another_output_before_fitting(tmp_path, monkeypatch):
    import exface.interfacegan.fit as fit
    from exface.alignment.crops import ResizeAligner
    from exface.testing.tiny import TinyEmbedder, TinyGenerator
    from exface.testing.tiny_attributes import TinyAttributes

    out = tmp_path / "attr.pt"

    def run(**kw):
        fit.interfacegan_fit(str(tmp_path / "bank"), TinyGenerator(z_dim=6, resolution=16), ResizeAligner((16, 16)),
                             TinyEmbedder(), [TinyAttributes()], str(out), num_latents=40, chunk_size=20,
                             chosen_num_or_ratio=0.25, batch_size=40, accelerator="cpu", progress=False, **kw)

    run()
    before = {f: f.read_bytes() for f in (out, out.with_suffix(".json"), out.with_suffix(".md"))}
    calls = []
    real = fit.fit_attribute_boundaries
    monkeypatch.setattr(fit, "fit_attribute_boundaries", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(ExfaceStateError, match="C: recorded 1.0, given 0.5") as err:
        run(C=0.5)
    assert "another output" in err.value.fix
    assert calls == [] and {f: f.read_bytes() for f in before} == before
    run()  # the same settings: refitted and replaced
    assert calls == [1]


# ------------------------------------------------------------------ 2. damaged files


def _damaged(tmp_path: Path, good: Path) -> dict[str, Path]:
    garbage = tmp_path / f"garbage{good.suffix}"
    garbage.write_bytes(bytes(range(186, 256)) * 40)
    cut = tmp_path / f"cut{good.suffix}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / f"empty{good.suffix}"
    empty.write_bytes(b"")
    return {"garbage": garbage, "truncated": cut, "empty": empty}


def _check_damaged(err: pytest.ExceptionInfo, path: Path, what: str, kind: str) -> None:
    e = err.value
    assert isinstance(e, ExfaceFileError)
    assert e.where == str(path)
    assert e.problem.startswith(f"{what} is not a readable {kind} file (damaged or truncated?): ")
    assert "file an issue" not in str(e) and "weights_only" not in str(e)
    assert "re-create it" in e.fix and "copy it again" in e.fix
    assert e.__cause__ is not None  # torch's own error stays chained


def test_boundaries_load_names_a_damaged_file(tmp_path):
    good = tmp_path / "good.pt"
    _bnd(0).save(good)
    for path in _damaged(tmp_path, good).values():
        with pytest.raises(ExfaceFileError) as err:
            Boundaries.load(path)
        _check_damaged(err, path, "the boundary file", "boundaries")
    with pytest.raises(ExfaceFileError, match="does not exist"):
        Boundaries.load(tmp_path / "nope.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ExfaceFileError, match="not an exface boundary file"):
        Boundaries.load(other)


class _Exec:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_asking_for_code_is_refused_not_run(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"normals": _Exec()}, evil)
    with pytest.raises(ExfaceFileError, match="not loaded, since unpickling it could run code") as err:
        Boundaries.load(evil)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)


def test_policy_file_load_names_a_damaged_file(tmp_path):
    from exface.agerl.editors import load_policy_file
    from exface.agerl.module import POLICY_FORMAT

    good = tmp_path / "policy.pt"
    torch.save({"format": POLICY_FORMAT, "policy_state": {"w": torch.zeros(64, 64)}}, good)
    assert load_policy_file(good)["format"] == POLICY_FORMAT
    for path in _damaged(tmp_path, good).values():
        with pytest.raises(ExfaceFileError) as err:
            load_policy_file(path)
        _check_damaged(err, path, "the policy file", "age-policy")
    with pytest.raises(ExfaceFileError, match="does not exist"):
        load_policy_file(tmp_path / "nope.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "other"}, wrong)
    with pytest.raises(ExfaceError, match="not an exface age-policy file"):
        load_policy_file(wrong)


def test_fr_checkpoint_load_names_a_damaged_file(tmp_path):
    from exface.fr.checkpoint_embedder import FRCheckpointEmbedder, read_fr_checkpoint

    good = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"backbone.w": torch.zeros(64, 64)},
                "exface_backbone": {"class_path": "x.Y", "init_args": {}}}, good)
    assert read_fr_checkpoint(good)[1]["w"].shape == (64, 64)
    for path in _damaged(tmp_path, good).values():
        with pytest.raises(ExfaceFileError) as err:
            FRCheckpointEmbedder(path)
        _check_damaged(err, path, "the FR checkpoint", "Lightning checkpoint")
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": {}}, wrong)
    with pytest.raises(ExfaceFileError, match="not a FaceRecognitionModule checkpoint"):
        FRCheckpointEmbedder(wrong)
