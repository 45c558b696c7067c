"""A FR training run killed mid-epoch resumes from its last checkpoint with ``--ckpt_path last``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


class KillAtStep(pl.Callback):
    """Kill the process (SIGKILL: no cleanup, like a lost machine) once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _run(tmp_path: Path, root: Path, callbacks: list[dict], *extra: str) -> subprocess.CompletedProcess:
    """``exface fit`` of the CPU FR recipe (tiny sizes, the given callbacks) in a fresh process."""
    cfg = yaml.safe_load((REPO / "recipes" / "fr_mobilefacenet_dcgan.yaml").read_text())
    cfg["model"]["init_args"]["backbone"]["init_args"].update(width=0.25, net_size=32)
    cfg["data"]["init_args"].update(root=str(root), batch_size=4)
    cfg["trainer"].update(max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                          callbacks=callbacks)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    args = [sys.executable, "-m", "exface.cli", "fit", "--config", str(recipe), *extra]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_killed_mid_epoch_resumes_with_ckpt_path_last(tmp_path):
    from exface.testing.identity_folder import make_identity_folder

    root = make_identity_folder(tmp_path / "ds", num_identities=4, images_per_identity=4, size=112)  # 4 steps/epoch
    ckpt_dir = tmp_path / "ckpt"
    save = {"class_path": "ModelCheckpoint",
            "init_args": {"dirpath": str(ckpt_dir), "save_last": True, "every_n_train_steps": 2, "save_top_k": 0}}
    killed = _run(tmp_path, root, [save, {"class_path": "tests.test_fr_resume.KillAtStep", "init_args": {"step": 3}}])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = ckpt_dir / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 and state["epoch"] == 0  # saved mid-epoch 0, killed after step 3
    resumed = _run(tmp_path, root, [save], "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restored all states from the checkpoint" in resumed.stderr + resumed.stdout
    assert "not resumable" not in resumed.stderr + resumed.stdout  # the train loader carries its position
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == 8 and final["exface_backbone"]["class_path"].endswith("MobileFaceNetEmbedder")


# ---------------------------------------------------------------- in process: the exact batches after a resume

class _Interrupt(RuntimeError):
    pass


class _StopAt(pl.Callback):
    """Raise (an interrupted run) once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise _Interrupt(f"stopped at step {trainer.global_step}")


class _RecordLabels(pl.Callback):
    """The labels of the batch of every optimizer step: {global_step: [labels]}."""

    def __init__(self) -> None:
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen[trainer.global_step] = batch[1].tolist()


def _fit_tiny(tmp_path: Path, root: Path, callbacks: list, max_steps: int = 12, ckpt_path: str | None = None,
              num_workers: int = 0):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from exface.embedders.mobilefacenet import MobileFaceNetEmbedder
    from exface.fr.datamodule import IdentityFolderDataModule
    from exface.fr.module import FaceRecognitionModule
    from exface.losses.margin import CosFace

    pl.seed_everything(0)
    # no flip: every draw of the run comes from the data order, so the weights can be compared exactly
    dm = IdentityFolderDataModule(str(root), (32, 32), batch_size=4, num_workers=num_workers, flip=False,
                                  in_memory=True)
    model = FaceRecognitionModule(MobileFaceNetEmbedder(16, 32, width=0.25), lambda d, c: CosFace(d, c, s=16, m=0.2),
                                  lr=0.05, warmup_epochs=0.5)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=3)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[*callbacks, ckpt],
                         num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, trainer


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from exface.testing.identity_folder import make_identity_folder

    # 20 images, batch 4: 5 steps per epoch; 12 steps span epochs 0, 1 and the start of 2
    return make_identity_folder(tmp_path_factory.mktemp("resume") / "ds", num_identities=4, images_per_identity=5,
                                size=32)


@pytest.fixture(scope="module")
def uninterrupted(tiny_folder, tmp_path_factory):
    rec = _RecordLabels()
    model, _ = _fit_tiny(tmp_path_factory.mktemp("whole"), tiny_folder, [rec])
    return rec.seen, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stop", [5, 8])  # resumed from last.ckpt at step 3 (epoch 0) or 6 (epoch 1)
def test_resumed_run_sees_the_batches_of_an_uninterrupted_one(tmp_path, tiny_folder, uninterrupted, stop):
    seen, weights = uninterrupted
    assert sorted(seen) == list(range(12))
    first = _RecordLabels()
    with pytest.raises(_Interrupt):
        _fit_tiny(tmp_path, tiny_folder, [first, _StopAt(stop)])
    last = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    saved = stop // 3 * 3
    assert state["global_step"] == saved
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == saved % 5
    second = _RecordLabels()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dataloader is not resumable.*")
        model, trainer = _fit_tiny(tmp_path, tiny_folder, [second], ckpt_path=str(last))
    assert trainer.global_step == 12 and sorted(second.seen) == list(range(saved, 12))
    resumed = [first.seen[s] for s in range(saved)] + [second.seen[s] for s in range(saved, 12)]
    assert resumed == [seen[s] for s in range(12)]
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_loader_state_resumes_the_epoch_with_workers(tiny_folder):
    """With workers (which take indices ahead), a loaded state gives the rest of that epoch, then whole epochs."""
    from exface.fr.datamodule import IdentityFolderDataModule

    def loader():
        dm = IdentityFolderDataModule(str(tiny_folder), (32, 32), batch_size=4, num_workers=2, flip=False,
                                      in_memory=True)
        dm.setup("fit")
        return dm.train_dataloader()

    ref = loader()
    epochs = []
    for e in range(3):
        ref.sampler.set_epoch(e)
        epochs.append([b[1].tolist() for b in ref])
    assert epochs[0] != epochs[1] and sorted(sum(epochs[0], [])) == sorted(sum(epochs[1], []))
    it = iter(ref)
    ref.sampler.set_epoch(1)
    next(it), next(it)
    state = ref.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 2)
    del it
    dl = loader()
    dl.load_state_dict(state)
    it = iter(dl)  # Lightning makes the iterator before it calls set_epoch
    dl.sampler.set_epoch(1)
    assert [b[1].tolist() for b in it] == epochs[1][2:]
    assert dl.state_dict()["batches"] == 5
    dl.sampler.set_epoch(2)
    assert dl.state_dict()["batches"] == 0
    assert [b[1].tolist() for b in dl] == epochs[2]
