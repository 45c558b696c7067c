"""A FR training run killed mid-epoch resumes from its last checkpoint with ``--ckpt_path last``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
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
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == 8 and final["exface_backbone"]["class_path"].endswith("MobileFaceNetEmbedder")
