"""Every LightningCLI recipe in recipes/ runs end to end (fast_dev_run) on small stand-ins.

``*_synthesize.yaml`` recipes are exface subcommands, checked by the synthesis tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from exface.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
LIGHTNING_RECIPES = sorted(
    p for p in RECIPES.glob("*.yaml")
    if not p.name.endswith("_synthesize.yaml") and {"model", "data"} <= set(yaml.safe_load(p.read_text()) or {})
)


def _fit(recipe: Path, tmp_path: Path, *overrides: str) -> None:
    main(["fit", "--config", str(recipe), "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu",
          f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", *overrides])


def _tiny_stylegan2_iresnet(tmp_path: Path, generator: str, embedder: str) -> list[str]:
    """Overrides pointing a StyleGAN2 + IResNet recipe's ``generator`` and ``embedder`` keys at tiny files."""
    from exface.testing import make_stylegan2_pickle
    from exface.testing.iresnet_checkpoints import make_iresnet_checkpoint

    pkl = make_stylegan2_pickle(tmp_path / "g.pkl", resolution=32, z_dim=16, w_dim=16)
    ckpt = make_iresnet_checkpoint(tmp_path / "r18.pth", arch="r18")
    return [f"--{generator}.init_args.pkl={pkl}", f"--{embedder}.init_args.arch=r18", f"--{embedder}.init_args.weights={ckpt}"]


def _stylegan2_arcface(tmp_path: Path) -> list[str]:
    return [
        *_tiny_stylegan2_iresnet(tmp_path, "data.init_args.generator", "data.init_args.embedder"),
        f"--data.init_args.bank_dir={tmp_path / 'bank'}",
        "--data.init_args.num_latents=24", "--data.init_args.chunk_size=10", "--data.init_args.num_references=3",
        "--data.init_args.devices=1", "--data.init_args.accelerator=cpu", "--data.init_args.bank_batch_size=8",
        f"--model.init_args.save_path={tmp_path / 'boundaries.pt'}",
    ]


def _dcgan_faceapi(tmp_path: Path) -> list[str]:
    from exface.zoo import is_cached

    missing = [n for n in ("dcgan-digiface", "faceapi-face-recognition") if not is_cached(n)]
    if missing:
        pytest.skip(f"zoo weights {missing} are not cached; run `exface zoo fetch` (needs network) to test this recipe")
    return [
        f"--data.init_args.bank_dir={tmp_path / 'bank'}",
        "--data.init_args.num_latents=40", "--data.init_args.chunk_size=20", "--data.init_args.num_references=4",
        "--data.init_args.accelerator=cpu",
        f"--model.init_args.save_path={tmp_path / 'boundaries.pt'}",
    ]


def _fr_arcface_synthetic(tmp_path: Path) -> list[str]:
    from exface.testing.identity_folder import make_identity_folder

    root = make_identity_folder(tmp_path / "dataset")
    return [
        "--model.init_args.backbone.init_args.arch=r18",
        f"--data.init_args.root={root}", "--data.init_args.batch_size=6", "--data.init_args.num_workers=0",
        "--data.init_args.val_fraction=0.3",
    ]


def _fr_verification_overrides(tmp_path: Path) -> list[str]:
    """Replace a recipe's callbacks: verification on the shared small .bin (or none) + last checkpoint."""
    import json

    from tests.conftest import SHARED_DATA

    small = SHARED_DATA / "insightface-bin" / "small_lfw.bin"
    cbs = [{"class_path": "ModelCheckpoint", "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]
    if small.is_file():
        cbs.insert(0, {"class_path": "VerificationCallback",
                       "init_args": {"sets": [str(small)], "folds": 2, "batch_size": 10}})
    return [f"--trainer.callbacks={json.dumps(cbs)}"]


def _fr_exfacegan_iresnet50(tmp_path: Path) -> list[str]:
    from exface.testing.identity_folder import make_identity_folder

    root = make_identity_folder(tmp_path / "dataset", size=112)
    return [
        "--model.init_args.backbone.init_args.arch=r18",  # the recipe's r50, made small for the test
        f"--data.init_args.root={root}", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
        "--trainer.precision=32-true", "--trainer.devices=1",
        *_fr_verification_overrides(tmp_path),
    ]


def _fr_mobilefacenet_dcgan(tmp_path: Path) -> list[str]:
    from exface.testing.identity_folder import make_identity_folder

    root = make_identity_folder(tmp_path / "dataset", size=112)
    return [f"--data.init_args.root={root}", "--data.init_args.batch_size=4",
            *_fr_verification_overrides(tmp_path)]


def _exfacegan_paper(generation: int):
    def setup(tmp_path: Path) -> list[str]:
        from exface.testing import make_stylegan2_pickle, make_stylegan3_pickle
        from exface.testing.iresnet_checkpoints import make_iresnet_checkpoint
        from exface.zoo import is_cached

        if not is_cached("faceapi-face-landmark-68"):
            pytest.skip("zoo weights faceapi-face-landmark-68 are not cached (the test's landmark source)")
        make = make_stylegan3_pickle if generation == 3 else make_stylegan2_pickle
        pkl = make(tmp_path / "g.pkl", resolution=32, z_dim=16, w_dim=16)
        ckpt = make_iresnet_checkpoint(tmp_path / "r18.pth", arch="r18")
        return [
            f"--data.init_args.generator.init_args.pkl={pkl}",
            "--data.init_args.embedder.init_args.arch=r18", f"--data.init_args.embedder.init_args.weights={ckpt}",
            "--data.init_args.aligner.init_args.source=FaceApiLandmarks",  # MTCNN's weights may not be cached
            f"--data.init_args.bank_dir={tmp_path / 'bank'}",
            "--data.init_args.num_latents=24", "--data.init_args.chunk_size=12", "--data.init_args.num_references=4",
            "--data.init_args.devices=1", "--data.init_args.accelerator=cpu", "--data.init_args.bank_batch_size=12",
            "--model.init_args.learner.init_args.n_jobs=1", f"--model.init_args.save_path={tmp_path / 'boundaries.pt'}",
        ]
    return setup


def _disentangle_common(tmp_path: Path) -> list[str]:
    return [
        "--ckpt_path=null",  # never resume a real run's checkpoint in a test
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'ckpt'}",
        f"--model.init_args.report_dir={tmp_path / 'report'}",
        "--data.init_args.batch_size=2", "--data.init_args.val_pairs=2", "--data.init_args.val_batch_size=2",
        "--model.init_args.eval_batch_size=2",
    ]


def _dcgan_faceapi_disentangle(tmp_path: Path) -> list[str]:
    from exface.zoo import is_cached

    missing = [n for n in ("dcgan-digiface", "faceapi-face-recognition", "faceapi-face-landmark-68") if not is_cached(n)]
    if missing:
        pytest.skip(f"zoo weights {missing} are not cached; run `exface zoo fetch` (needs network) to test this recipe")
    return _disentangle_common(tmp_path)


def _stylegan2_arcface_disentangle(tmp_path: Path) -> list[str]:
    return [
        *_disentangle_common(tmp_path),
        *_tiny_stylegan2_iresnet(tmp_path, "model.init_args.generator", "model.init_args.identity_embedder"),
        # an InceptionV3 with ImageNet weights needs a download: a tiny timm net stands in
        "--model.init_args.attribute_encoder.init_args.model_name=test_resnet",
        "--model.init_args.attribute_encoder.init_args.pretrained=false",
        "--model.init_args.attribute_encoder.init_args.input_size=32",
        "--model.init_args.ms_ssim_betas=[1.0]",  # 5 MS-SSIM scales need >= 160-px images
        "--model.init_args.ms_ssim_kernel=3",
        "--model.init_args.mapper_hidden=[32,16]",
    ]


def _dcgan_faceapi_age_rl(tmp_path: Path) -> list[str]:
    from exface.testing.tiny_age import age_rl_recipe_overrides

    return age_rl_recipe_overrides(tmp_path)


SETUPS = {"stylegan2_arcface": _stylegan2_arcface, "dcgan_faceapi": _dcgan_faceapi,
          "fr_arcface_synthetic": _fr_arcface_synthetic, "fr_exfacegan_iresnet50": _fr_exfacegan_iresnet50,
          "fr_mobilefacenet_dcgan": _fr_mobilefacenet_dcgan,
          "exfacegan_paper_stylegan2": _exfacegan_paper(2), "exfacegan_paper_stylegan3": _exfacegan_paper(3),
          "dcgan_faceapi_disentangle": _dcgan_faceapi_disentangle,
          "stylegan2_arcface_disentangle": _stylegan2_arcface_disentangle,
          "dcgan_faceapi_age_rl": _dcgan_faceapi_age_rl}


def test_every_recipe_has_a_check():
    assert LIGHTNING_RECIPES, f"no LightningCLI recipes found in {RECIPES}"
    unchecked = [p.name for p in LIGHTNING_RECIPES if p.stem not in SETUPS]
    assert not unchecked, f"add a setup for {unchecked} to tests/test_recipes.py::SETUPS"


@pytest.mark.parametrize("recipe", LIGHTNING_RECIPES, ids=lambda p: p.stem)
def test_recipe_fast_dev_run(recipe: Path, tmp_path: Path):
    overrides = SETUPS[recipe.stem](tmp_path)
    _fit(recipe, tmp_path, *overrides)
    if recipe.stem in ("stylegan2_arcface", "dcgan_faceapi", "exfacegan_paper_stylegan2", "exfacegan_paper_stylegan3"):
        from exface.boundaries import Boundaries
        from exface.exfacegan.latent_bank import LatentBank

        b = Boundaries.load(tmp_path / "boundaries.pt")
        bank = LatentBank(tmp_path / "bank")
        cfg = yaml.safe_load(recipe.read_text())["data"]["init_args"]
        assert b.space == cfg["space"] and bank.is_complete
        dim = bank.manifest["dims"][cfg["space"]]
        assert b.normals.shape[1] == dim and torch.allclose(b.normals.norm(dim=1), torch.ones(len(b)), atol=1e-5)
        assert bank.references()["indices"].tolist() == list(range(len(b)))


@pytest.mark.parametrize("views", [False, True], ids=["landmark_encoder", "landmark_encoder+views"])
def test_disentangle_variant_recipes_fast_dev_run(tmp_path: Path, views: bool):
    """The variant recipes layered on the default disentanglement recipe (LightningCLI: later configs win)."""
    import exface.disentangle.module as dm
    from exface.disentangle.encoders import LandmarkAttributeEncoder

    overrides = _dcgan_faceapi_disentangle(tmp_path)
    layers = ["--config", str(RECIPES / "dcgan_faceapi_disentangle_landmark_encoder.yaml")]
    if views:
        layers += ["--config", str(RECIPES / "dcgan_faceapi_disentangle_views.yaml")]
    calls, view_calls = [], []
    real_forward, real_views = LandmarkAttributeEncoder.forward, dm.random_views
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LandmarkAttributeEncoder, "forward", lambda self, x: calls.append(len(x)) or real_forward(self, x))
        mp.setattr(dm, "random_views", lambda x, g, flip=True: view_calls.append(flip) or real_views(x, g, flip=flip))
        _fit(RECIPES / "dcgan_faceapi_disentangle.yaml", tmp_path, *layers, *overrides)
    assert calls  # the variant's encoder made the attribute codes
    assert view_calls == ([False] * len(view_calls) if views else []) and bool(view_calls) == views
