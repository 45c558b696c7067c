"""VerificationCallback on the shared small .bin: logged accuracies, CSV, best-mean checkpoint, benchmark parity."""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from exface.alignment import ResizeAligner
from exface.embedders.mobilefacenet import MobileFaceNetEmbedder
from exface.evaluation.benchmark import benchmark_set, headline_accuracy
from exface.evaluation.datasets import load_verification_set
from exface.fr.checkpoint_embedder import FRCheckpointEmbedder
from exface.fr.datamodule import IdentityFolderDataModule
from exface.fr.module import FaceRecognitionModule
from exface.fr.verification_callback import VerificationCallback, set_name
from exface.losses.margin import CosFace
from exface.testing.identity_folder import make_identity_folder


def test_set_names():
    assert set_name("/d/lfw.bin") == "lfw" and set_name("/d/lfw-fold1/pairs.txt") == "lfw-fold1"
    with pytest.raises(ValueError, match="distinct"):
        VerificationCallback(["a/lfw.bin", "b/lfw.bin"])


def test_callback_on_small_bin(tmp_path, shared_data):
    small = shared_data / "insightface-bin" / "small_lfw.bin"
    root = make_identity_folder(tmp_path / "ds", num_identities=3, images_per_identity=4, size=32)
    dm = IdentityFolderDataModule(str(root), (32, 32), batch_size=6, num_workers=0, in_memory=True)
    torch.manual_seed(0)
    model = FaceRecognitionModule(MobileFaceNetEmbedder(16, 112, net_size=32, width=0.25),
                                  lambda d, c: CosFace(d, c, s=16, m=0.2))
    cb = VerificationCallback([str(small)], every_n_epochs=1, folds=2, batch_size=10)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(tmp_path, name="logs"), callbacks=[cb],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=str(tmp_path), log_every_n_steps=1)
    trainer.fit(model, datamodule=dm)
    assert len(cb.history) == 2 and all(0.0 <= h["small_lfw"] <= 1.0 for h in cb.history)
    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    logged = [float(r["verification/mean"]) for r in rows if r.get("verification/mean")]
    assert logged == pytest.approx([h["mean"] for h in cb.history])
    assert any(r.get("verification/small_lfw") for r in rows)
    best = tmp_path / "checkpoints" / "best_verification.ckpt"
    assert best.is_file() and cb.best == max(h["mean"] for h in cb.history)
    # the same numbers as `exface benchmark`'s per-set function on the saved model
    emb = FRCheckpointEmbedder(best)
    direct = benchmark_set(load_verification_set(small), emb, ResizeAligner((112, 112)), folds=2, batch_size=10)
    assert direct["accuracy"] == pytest.approx(cb.evaluate(emb)["small_lfw"]["accuracy"])
    # the checkpoint holds the best epoch's weights, judged by the figure the benchmark's papers table
    # prints for a .bin set: insightface's protocol
    assert direct["insightface_protocol"] and headline_accuracy(direct)[0] == direct["insightface_protocol"]["accuracy"]
    assert headline_accuracy(direct)[0] == pytest.approx(cb.best)
    model.backbone.train()
    cb.evaluate(model.backbone)
    assert model.backbone.training  # evaluation restores the training mode


def test_best_checkpoint_follows_the_best_mean_not_the_last(tmp_path, monkeypatch):
    """Scripted verification figures (epochs 0..3: 0.6, 0.8, 0.7, 0.8): the best checkpoint is
    written at epochs 0 and 1 only (a tie is no improvement) and holds epoch 1."""
    root = make_identity_folder(tmp_path / "ds", num_identities=3, images_per_identity=4, size=32)
    dm = IdentityFolderDataModule(str(root), (32, 32), batch_size=6, num_workers=0, in_memory=True)
    torch.manual_seed(0)
    model = FaceRecognitionModule(MobileFaceNetEmbedder(16, 112, net_size=32, width=0.25),
                                  lambda d, c: CosFace(d, c, s=16, m=0.2))
    cb = VerificationCallback(["a/x.bin", "b/y.bin"], every_n_epochs=1)
    monkeypatch.setattr(cb, "_load", lambda emb: [None, None])  # no files: the figures are scripted
    figures = iter([(0.5, 0.7), (0.9, 0.7), (0.7, 0.7), (0.8, 0.8)])
    monkeypatch.setattr(cb, "evaluate", lambda emb: {n: {"accuracy": a, "accuracy_std": 0.0}
                                                     for n, a in zip(("x", "y"), next(figures))})
    saved = []
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    real_save = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda path, *a, **k: (saved.append(trainer.current_epoch),
                                                                           real_save(path, *a, **k)))
    trainer.fit(model, datamodule=dm)
    assert [h["mean"] for h in cb.history] == pytest.approx([0.6, 0.8, 0.7, 0.8]) and cb.best == pytest.approx(0.8)
    assert saved == [0, 1]
    ckpt = torch.load(tmp_path / "checkpoints" / "best_verification.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["callbacks"]


def test_a_missing_set_stops_the_run_before_the_first_step(tmp_path):
    """The sets are read when fitting starts: a wrong path costs no epoch of training."""
    from exface.errors import ExfaceError

    root = make_identity_folder(tmp_path / "ds", num_identities=3, images_per_identity=4, size=32)
    dm = IdentityFolderDataModule(str(root), (32, 32), batch_size=6, num_workers=0, in_memory=True)
    model = FaceRecognitionModule(MobileFaceNetEmbedder(16, 112, net_size=32, width=0.25),
                                  lambda d, c: CosFace(d, c, s=16, m=0.2))
    steps = []
    real_step = model.training_step
    model.training_step = lambda *a, **k: steps.append(1) or real_step(*a, **k)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                         callbacks=[VerificationCallback([str(tmp_path / "missing" / "lfw.bin")])])
    with pytest.raises((ExfaceError, FileNotFoundError), match="lfw.bin"):
        trainer.fit(model, datamodule=dm)
    assert steps == []
