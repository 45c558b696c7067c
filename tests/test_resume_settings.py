"""A run resumed from its checkpoint (``--ckpt_path last``) with other settings is refused.

Before: another ``lr`` or loss weight resumed silently (the checkpoint's hyperparameters took the
new values while the optimizer kept the old rates and the weights were trained with the old
ones); another architecture died with a raw ``load_state_dict`` size-mismatch list. Now each
trained module's ``on_load_checkpoint`` calls :func:`exface.resume_check.check_resume`: one
screen naming every differing key (checkpoint vs this run), the checkpoint, the fix; exit 1.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import yaml

from exface.cli import main
from exface.errors import ExfaceStateError

REPO = Path(__file__).resolve().parents[1]


def _refused(capsys, args: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 1, err
    assert "Traceback" not in err and "size mismatch" not in err and "Error(s) in loading state_dict" not in err, err
    assert "fix: resume with the checkpoint's settings" in err and "--ckpt_path" in err, err
    return err


def _last(recipe: Path) -> Path:
    """The run's last.ckpt, as the first run left it."""
    last = recipe.parent / "ckpt" / "last.ckpt"
    shutil.copy(recipe.parent / "first.ckpt", last)
    return last


def _unchanged(path: Path, before: dict) -> None:
    after = torch.load(path, map_location="cpu", weights_only=True)
    assert after["global_step"] == before["global_step"]
    assert after["hyper_parameters"] == before["hyper_parameters"]


# ------------------------------------------------------------------ FaceRecognitionModule, CLI

@pytest.fixture(scope="module")
def fr_recipe(tmp_path_factory) -> Path:
    from exface.testing.identity_folder import make_identity_folder

    tmp = tmp_path_factory.mktemp("fr_resume_settings")
    root = make_identity_folder(tmp / "ds", num_identities=4, images_per_identity=4, size=32)
    cfg = yaml.safe_load((REPO / "recipes" / "fr_mobilefacenet_dcgan.yaml").read_text())
    cfg["model"]["init_args"]["backbone"]["init_args"] = {"embedding_dim": 16, "input_size": 32, "net_size": 32,
                                                          "width": 0.25}
    cfg["data"]["init_args"].update(root=str(root), batch_size=4, image_size=[32, 32])
    save = {"class_path": "ModelCheckpoint",
            "init_args": {"dirpath": str(tmp / "ckpt"), "save_last": True, "every_n_train_steps": 1, "save_top_k": 0}}
    cfg["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=0, num_sanity_val_steps=0,
                          logger=False, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=str(tmp), callbacks=[save])
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(recipe)])
    shutil.copy(tmp / "ckpt" / "last.ckpt", tmp / "first.ckpt")  # each test starts from the first run's checkpoint
    return recipe


def test_fr_checkpoint_records_the_recipe_settings(fr_recipe):
    state = torch.load(fr_recipe.parent / "first.ckpt", map_location="cpu", weights_only=True)
    hp = state["hyper_parameters"]
    assert hp["lr"] == 0.1 and hp["clip_grad_norm"] == 5.0
    assert hp["backbone"]["class_path"].endswith("MobileFaceNetEmbedder") and hp["backbone"]["init_args"]["width"] == 0.25
    assert hp["loss"]["class_path"].endswith("CosFace") and hp["loss"]["init_args"]["m"] == 0.35


def test_fr_resume_with_another_lr_is_refused_naming_it(fr_recipe, capsys):
    last = _last(fr_recipe)
    before = torch.load(last, map_location="cpu", weights_only=True)
    err = _refused(capsys, ["fit", "--config", str(fr_recipe), "--ckpt_path", "last", "--model.init_args.lr", "0.5",
                            "--trainer.max_epochs", "2"])
    assert "lr: checkpoint 0.1, this run 0.5" in err and f"in: {last}" in err, err
    assert "clip_grad_norm" not in err  # only what differs
    _unchanged(last, before)
    # the loss's arguments are settings too
    err = _refused(capsys, ["fit", "--config", str(fr_recipe), "--ckpt_path", "last",
                            "--model.init_args.loss.init_args.m", "0.5"])
    assert "loss.init_args.m: checkpoint 0.35, this run 0.5" in err, err
    # a checkpoint named by its path: LightningCLI would take the checkpoint's lr and drop the command line's
    err = _refused(capsys, ["fit", "--config", str(fr_recipe), "--ckpt_path", str(last), "--model.init_args.lr", "0.5",
                            "--trainer.max_epochs", "2"])
    assert "lr: checkpoint 0.1, this run 0.5" in err, err
    _unchanged(last, before)


def test_fr_resume_with_another_architecture_is_refused_with_the_message(fr_recipe, capsys):
    last = _last(fr_recipe)
    before = torch.load(last, map_location="cpu", weights_only=True)
    err = _refused(capsys, ["fit", "--config", str(fr_recipe), "--ckpt_path", "last",
                            "--model.init_args.backbone.init_args.width", "0.5"])
    assert "backbone.init_args.width: checkpoint 0.25, this run 0.5" in err, err
    err = _refused(capsys, ["fit", "--config", str(fr_recipe), "--ckpt_path", "last",
                            "--model.init_args.backbone.init_args.embedding_dim", "32"])
    assert "backbone.init_args.embedding_dim: checkpoint 16, this run 32" in err, err
    _unchanged(last, before)


def test_fr_resume_with_the_same_settings_goes_on(fr_recipe):
    last = _last(fr_recipe)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    main(["fit", "--config", str(fr_recipe), "--ckpt_path", "last", "--trainer.max_epochs", "2"])
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4 and state["hyper_parameters"]["lr"] == 0.1


def test_fr_resume_on_other_data_is_refused_naming_it(fr_recipe, capsys):
    """Another training set (same layout and class count), other augmentation or another global batch
    would mix two trainings in one model; the folder may move and the workers may change."""
    from exface.testing.identity_folder import make_identity_folder

    last = _last(fr_recipe)
    before = torch.load(last, map_location="cpu", weights_only=True)
    other = make_identity_folder(fr_recipe.parent / "other_ds", num_identities=4, images_per_identity=4, size=32,
                                 seed=7)
    err = _refused(capsys, ["fit", "--config", str(fr_recipe), "--ckpt_path", "last", "--trainer.max_epochs", "2",
                            "--data.init_args.root", str(other)])
    assert "other data" in err and "the training images: checkpoint 16 images of 4 identities" in err, err
    err = _refused(capsys, ["fit", "--config", str(fr_recipe), "--ckpt_path", "last", "--trainer.max_epochs", "2",
                            "--data.init_args.randaugment", "[2, 9]"])
    assert "data.init_args.randaugment: checkpoint None, this run [2, 9]" in err, err
    err = _refused(capsys, ["fit", "--config", str(fr_recipe), "--ckpt_path", "last", "--trainer.max_epochs", "2",
                            "--data.init_args.batch_size", "2"])
    assert "global batch (data batch_size x devices x accumulate_grad_batches): checkpoint 4, this run 2" in err, err
    _unchanged(last, before)
    moved = fr_recipe.parent / "moved_ds"
    shutil.copytree(fr_recipe.parent / "ds", moved, dirs_exist_ok=True)
    main(["fit", "--config", str(fr_recipe), "--ckpt_path", "last", "--trainer.max_epochs", "2",
          "--data.init_args.root", str(moved), "--data.init_args.num_workers", "0"])
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4


# ------------------------------------------------------------------ FaceRecognitionModule, in Python

def _fr_fit(tmp_path: Path, root: Path, ckpt_path: str | None = None, width: float = 0.25, lr: float = 0.05,
            steps: int = 2):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from exface.embedders.mobilefacenet import MobileFaceNetEmbedder
    from exface.fr.datamodule import IdentityFolderDataModule
    from exface.fr.module import FaceRecognitionModule
    from exface.losses.margin import CosFace

    pl.seed_everything(0, verbose=False)
    dm = IdentityFolderDataModule(str(root), (32, 32), batch_size=4, num_workers=0, flip=False, in_memory=True)
    model = FaceRecognitionModule(MobileFaceNetEmbedder(16, 32, width=width), lambda d, c: CosFace(d, c, s=16, m=0.2),
                                  lr=lr)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[ckpt],
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def test_fr_built_in_python_is_checked_too(tmp_path):
    from exface.testing.identity_folder import make_identity_folder

    root = make_identity_folder(tmp_path / "ds", num_identities=4, images_per_identity=4, size=32)
    _fr_fit(tmp_path, root)
    last = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)  # no loss factory (a lambda) pickled
    assert state["hyper_parameters"]["lr"] == 0.05 and "loss" not in state["hyper_parameters"]
    with pytest.raises(ExfaceStateError) as err:
        _fr_fit(tmp_path, root, ckpt_path=str(last), lr=0.2, steps=4)
    assert "lr: checkpoint 0.05, this run 0.2" in str(err.value) and err.value.where == str(last)
    with pytest.raises(ExfaceStateError) as err:  # the backbone object is compared by its recorded spec
        _fr_fit(tmp_path, root, ckpt_path=str(last), width=0.5, steps=4)
    assert "backbone.init_args.width: checkpoint 0.25, this run 0.5" in str(err.value)
    assert _fr_fit(tmp_path, root, ckpt_path=str(last), steps=4).global_step == 4


# ------------------------------------------------------------------ DisentangleModule, CLI

@pytest.fixture(scope="module")
def dis_recipe(tmp_path_factory) -> Path:
    import exface.testing.tiny  # noqa: F401  registers the tiny parts

    tmp = tmp_path_factory.mktemp("dis_resume_settings")
    cfg = {
        "seed_everything": 0,
        "model": {"class_path": "DisentangleModule", "init_args": {
            "generator": {"class_path": "TinyGenerator", "init_args": {"z_dim": 8, "resolution": 16}},
            "identity_embedder": {"class_path": "TinyEmbedder"},
            "identity_aligner": {"class_path": "ResizeAligner", "init_args": {"output_size": [16, 16]}},
            "attribute_encoder": {"class_path": "TimmAttributeEncoder",
                                  "init_args": {"model_name": "test_resnet", "input_size": 16}},
            "landmarks": {"class_path": "TinyLandmarks"},
            "space": "w", "mapper_hidden": [16, 16], "discriminator_hidden": [8], "ms_ssim_betas": [1.0],
            "ms_ssim_kernel": 3, "id_weight": 1.0, "lr": 5.0e-4, "report_pairs": 2, "grid_size": 2,
            "eval_batch_size": 2}},
        "data": {"class_path": "GeneratorPairDataModule", "init_args": {"batch_size": 2, "val_pairs": 0}},
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "accelerator": "cpu", "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "limit_val_batches": 0, "default_root_dir": str(tmp),
                    "callbacks": [{"class_path": "ModelCheckpoint", "init_args": {
                        "dirpath": str(tmp / "ckpt"), "save_last": True, "save_top_k": 0,
                        "every_n_train_steps": 1}}]},
    }
    recipe = tmp / "tiny_disentangle.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(recipe)])
    shutil.copy(tmp / "ckpt" / "last.ckpt", tmp / "first.ckpt")
    return recipe


def test_disentangle_resume_with_another_lr_is_refused_naming_it(dis_recipe, capsys):
    last = _last(dis_recipe)
    before = torch.load(last, map_location="cpu", weights_only=True)
    err = _refused(capsys, ["fit", "--config", str(dis_recipe), "--ckpt_path", "last",
                            "--model.init_args.lr", "1e-2", "--model.init_args.id_weight", "5.0",
                            "--trainer.max_epochs", "2"])
    assert "(2 differ)" in err and "lr: checkpoint 0.0005, this run 0.01" in err, err
    assert "id_weight: checkpoint 1.0, this run 5.0" in err and f"in: {last}" in err, err
    _unchanged(last, before)
    # a part's argument
    err = _refused(capsys, ["fit", "--config", str(dis_recipe), "--ckpt_path", "last",
                            "--model.init_args.identity_aligner.init_args.output_size", "[12, 12]"])
    assert "identity_aligner.init_args.output_size: checkpoint [16, 16], this run [12, 12]" in err, err


def test_disentangle_resume_with_another_architecture_is_refused_with_the_message(dis_recipe, capsys):
    last = _last(dis_recipe)
    before = torch.load(last, map_location="cpu", weights_only=True)
    err = _refused(capsys, ["fit", "--config", str(dis_recipe), "--ckpt_path", "last",
                            "--model.init_args.mapper_hidden", "[32, 16]"])
    assert "mapper_hidden: checkpoint [16, 16], this run [32, 16]" in err, err
    _unchanged(last, before)


def test_disentangle_resume_with_the_same_settings_goes_on(dis_recipe, tmp_path):
    last = _last(dis_recipe)
    first = torch.load(last, map_location="cpu", weights_only=True)
    assert first["GeneratorPairDataModule"]["consumed"] == 2
    # the report's folder and extent may change: the report is written once, at the end, by this run
    main(["fit", "--config", str(dis_recipe), "--ckpt_path", "last", "--trainer.max_epochs", "2",
          f"--model.init_args.report_dir={tmp_path / 'report'}", "--model.init_args.report_pairs=3"])
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] > first["global_step"] and state["GeneratorPairDataModule"]["consumed"] == 4
    assert (tmp_path / "report" / "report.json").is_file()


def test_disentangle_resume_on_another_pair_stream_is_refused(dis_recipe, capsys):
    last = _last(dis_recipe)
    before = torch.load(last, map_location="cpu", weights_only=True)
    err = _refused(capsys, ["fit", "--config", str(dis_recipe), "--ckpt_path", "last", "--trainer.max_epochs", "2",
                            "--data.init_args.seed", "1"])
    assert "other data" in err and "data.init_args.seed: checkpoint 0, this run 1" in err, err
    _unchanged(last, before)


# ------------------------------------------------------------------ AgePolicyModule, CLI

def test_age_policy_resume_with_another_lr_or_environment_is_refused(tmp_path, capsys):
    from exface.testing.tiny_age import age_rl_recipe_overrides

    recipe = REPO / "recipes" / "dcgan_faceapi_age_rl.yaml"
    args = ["fit", "--config", str(recipe), "--trainer.max_epochs=1", *age_rl_recipe_overrides(tmp_path),
            "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}"]
    main(args)
    last = tmp_path / "ckpt" / "last.ckpt"
    hp = torch.load(last, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["env"]["init_args"]["max_steps"] == 3  # the environment's settings are recorded
    more = [*args, "--trainer.max_epochs=2"]
    err = _refused(capsys, [*more, "--model.init_args.lr=0.01"])
    assert "lr: checkpoint 0.001, this run 0.01" in err, err
    err = _refused(capsys, [*more, "--model.init_args.env.init_args.max_steps=4"])
    assert "env.init_args.max_steps: checkpoint 3, this run 4" in err, err


# ------------------------------------------------------------------ the comparison itself

def _fitting(module, ckpt_path="runs/x/last.ckpt"):
    from lightning.pytorch.trainer.states import TrainerFn

    trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), ckpt_path=ckpt_path)
    if isinstance(module, pl.LightningDataModule):
        module.trainer = trainer
    else:
        module._trainer = trainer
    return module


def _boundary_module(references: int = 3, **kw):
    from exface.boundaries.torch_svm import BoundaryFitModule

    m = BoundaryFitModule(**kw)
    m.configure_svm(references, 4)
    return m


def test_boundary_fit_resume_is_checked_and_old_checkpoints_resume():
    saved = _boundary_module(C=1.0)
    ckpt = {"hyper_parameters": dict(saved.hparams), "state_dict": saved.state_dict()}
    _fitting(_boundary_module(C=1.0, save_path="elsewhere.pt")).on_load_checkpoint(ckpt)  # an output path may change
    with pytest.raises(ExfaceStateError) as err:
        _fitting(_boundary_module(C=2.0)).on_load_checkpoint(ckpt)
    assert "C: checkpoint 1.0, this run 2.0" in str(err.value) and err.value.where == "runs/x/last.ckpt"
    # a key an older checkpoint lacks: fine at its default, refused when this run sets it otherwise
    old = {**ckpt, "hyper_parameters": {k: v for k, v in ckpt["hyper_parameters"].items() if k != "init"}}
    _fitting(_boundary_module(C=1.0)).on_load_checkpoint(old)
    with pytest.raises(ExfaceStateError, match=r"init: checkpoint not recorded \(default 'ridge'\), this run 'zeros'"):
        _fitting(_boundary_module(C=1.0, init="zeros")).on_load_checkpoint(old)
    # a checkpoint without hyperparameters at all (an older FR checkpoint) is not refused for them
    _fitting(_boundary_module(C=2.0)).on_load_checkpoint({"state_dict": saved.state_dict()})
    # another architecture: the tensors named, not a state_dict dump
    with pytest.raises(ExfaceStateError, match=r"svm.weight: checkpoint \[3, 4\], this run \[5, 4\]"):
        _fitting(_boundary_module(5, C=1.0)).on_load_checkpoint(ckpt)
    # not a resume (load_from_checkpoint, no trainer): not checked
    _boundary_module(C=2.0).on_load_checkpoint(ckpt)


def test_boundary_fit_data_is_checked_on_resume(tmp_path):
    """A boundary fit resumed on another labeling of the bank (or another bank) is refused; the same
    data, from a moved bank folder, resumes."""
    from exface.alignment.crops import ResizeAligner
    from exface.exfacegan.datamodule import IdentityBankDataModule
    from exface.testing.tiny import TinyEmbedder, TinyGenerator

    def data(bank: str, **kw):
        dm = IdentityBankDataModule(TinyGenerator(), TinyEmbedder(), ResizeAligner((16, 16)), str(tmp_path / bank),
                                    num_latents=40, chunk_size=20, num_references=3, space="w", accelerator="cpu",
                                    **kw)
        dm.setup("fit")
        return dm

    saved = data("bank").state_dict()
    assert set(saved["fit_data"]) >= {"labels_sha256", "bank_references_sha256", "label_rule", "val_fraction"}
    _fitting(data("bank")).load_state_dict(saved)
    shutil.copytree(tmp_path / "bank", tmp_path / "moved")
    _fitting(data("moved")).load_state_dict(saved)
    with pytest.raises(ExfaceStateError) as err:
        _fitting(data("bank", label_rule="topk", top_k=5)).load_state_dict(saved)
    text = str(err.value)
    assert "other data" in text and "label_rule: checkpoint 'median', this run 'topk'" in text, text
    assert "labels_sha256: checkpoint" in text and err.value.where == "runs/x/last.ckpt", text
    with pytest.raises(ExfaceStateError, match=r"data.init_args.val_fraction: checkpoint 0.3, this run 0.5"):
        _fitting(data("bank", val_fraction=0.5)).load_state_dict(saved)
    data("bank", val_fraction=0.5).load_state_dict(saved)  # no trainer: not a resume


def test_settings_differences_compares_recorded_forms():
    import functools
    import inspect

    from exface.embedders.mobilefacenet import MobileFaceNetEmbedder
    from exface.losses.margin import CosFace
    from exface.resume_check import settings_differences

    part = {"class_path": "exface.embedders.MobileFaceNetEmbedder", "init_args": {"width": 0.5, "weights": None}}
    same_class = {"class_path": "exface.embedders.mobilefacenet.MobileFaceNetEmbedder", "init_args": {"width": 0.5}}
    assert settings_differences({"backbone": part, "_instantiator": "a"}, {"backbone": same_class}) == []
    assert settings_differences({"b": part}, {"b": {**part, "init_args": {"width": 1.0}}}) == [
        ("b.init_args.width", 0.5, 1.0)]
    # init args absent from the checkpoint's part record: the class's defaults
    default = inspect.signature(MobileFaceNetEmbedder.__init__).parameters["dropout"].default
    assert settings_differences({"b": part}, {"b": {**part, "init_args": {"width": 0.5, "dropout": default}}}) == []
    assert settings_differences({"b": part}, {"b": {**part, "init_args": {"width": 0.5, "dropout": 0.3}}}) == [
        ("b.init_args.dropout", "not recorded (default 0.0)", 0.3)]
    # tuples and lists, ints and floats; objects by their recorded form; network objects not compared
    assert settings_differences({"h": [1, 2], "lr": 1}, {"h": (1, 2), "lr": 1.0}) == []
    assert settings_differences({"f": "torch.nn.functional.relu"}, {"f": torch.nn.functional.relu}) == []
    assert settings_differences({"loss": {"class_path": "exface.losses.margin.CosFace", "init_args": {"s": 16}}},
                                {"loss": functools.partial(CosFace, s=32)}) == [("loss.init_args.s", 16, 32)]
    assert settings_differences({"net": part}, {"net": torch.nn.Linear(2, 2)}) == []
    assert settings_differences({"b": part}, {"b": {**part, "class_path": "exface.embedders.IResNetEmbedder"}})
    assert settings_differences({"x": 1}, {"x": 2}, may_differ=["x"]) == []
    assert settings_differences({"p": part}, {"p": {**part, "init_args": {"width": 0.5, "weights": "w.pt"}}},
                                may_differ=["p.init_args.weights"]) == []
