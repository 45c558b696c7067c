"""FR stage: MobileFaceNet, IResNet dropout/fp16, schedules, lr scaling, per-group clipping,
augmentation options, checkpoint -> embedder."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from exface.embedders.iresnet import IResNetEmbedder
from exface.embedders.mobilefacenet import MobileFaceNetEmbedder
from exface.fr.checkpoint_embedder import FRCheckpointEmbedder, backbone_spec
from exface.fr.datamodule import Augmentation, IdentityFolderDataModule
from exface.fr.module import FaceRecognitionModule, lr_factor
from exface.losses.margin import CosFace
from exface.models.iresnet import IResNet
from exface.models.mobilefacenet import MobileFaceNet
from exface.testing.identity_folder import make_identity_folder


def test_mobilefacenet_matches_paper_size_and_any_input_multiple_of_16():
    net = MobileFaceNet(128, 112).eval()
    # the paper: 0.99 M parameters (128-d); the GDC head sees a 7x7 map at 112 px
    assert 0.95e6 < sum(p.numel() for p in net.parameters()) < 1.05e6
    assert net(torch.randn(2, 3, 112, 112)).shape == (2, 128)
    small = MobileFaceNet(64, 64, width=0.5).eval()
    assert small.gdc[0].kernel_size == (4, 4) and small(torch.randn(2, 3, 64, 64)).shape == (2, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        MobileFaceNet(input_size=100)


def test_mobilefacenet_embedder_resizes_crops_to_its_net_size():
    emb = MobileFaceNetEmbedder(32, input_size=112, net_size=32, width=0.25).eval()
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    small = torch.nn.functional.interpolate(emb.preprocess(x), size=(32, 32), mode="bilinear", antialias=True)
    assert torch.allclose(emb.embed_raw(emb.preprocess(x)), emb.net(small), atol=1e-5)
    assert emb(x).shape == (2, 32)


def test_iresnet_dropout_and_fp16_options():
    torch.manual_seed(0)
    emb = IResNetEmbedder("r18", dropout=0.4, fp16=True)
    assert emb.backbone.dropout.p == 0.4 and emb.backbone.fp16
    net = IResNet((1, 1, 1, 1), num_features=16, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = net(x)
    net.fp16 = True
    out = net(x)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=0.1, atol=0.1)  # bfloat16 trunk on CPU
    with pytest.raises(ValueError, match="dropout"):
        IResNetEmbedder("r18", dropout=1.0)


def test_lr_factor_warmup_poly_and_step():
    assert lr_factor(0, 100, 10, "poly") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "poly") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "poly") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "poly") == pytest.approx(0.25)  # (1 - 45/90)^2
    # a milestone m drops the rate from step m on (here 1 step per epoch), no warm-up
    f = [lr_factor(s, 40, 0, "step", milestones=(22, 30, 35)) for s in (0, 21, 22, 29, 30, 35, 39)]
    assert f == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])


def test_exfacegan_recipe_drops_at_the_epochs_of_exfacegan_config():
    """ExFaceGAN's config.py: lr_func(epoch) = 0.1 ** len([m for m in [22, 30, 35] if m - 1 <= epoch]),
    epoch 0-based (its LambdaLR steps once per epoch); the recipe's milestones reproduce it."""
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "fr_exfacegan_iresnet50.yaml").read_text())
    args = cfg["model"]["init_args"]
    epochs, per_epoch = cfg["trainer"]["max_epochs"], 3
    ms = tuple(int(round(m * per_epoch)) for m in args["milestones"])  # as configure_optimizers converts them
    for epoch in range(epochs):
        ref = 0.1 ** len([m for m in [22, 30, 35] if m - 1 <= epoch])
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            assert lr_factor(step, epochs * per_epoch, 0, "step", milestones=ms, gamma=args["gamma"]) \
                == pytest.approx(ref), (epoch, step)


def _fit(tmp_path, max_steps=4, **module_kw):
    root = make_identity_folder(tmp_path / "ds", num_identities=4, images_per_identity=4, size=32)
    dm = IdentityFolderDataModule(str(root), (32, 32), batch_size=4, num_workers=0, in_memory=True)
    torch.manual_seed(0)
    model = FaceRecognitionModule(MobileFaceNetEmbedder(16, 32, width=0.25), lambda d, c: CosFace(d, c, s=16, m=0.2),
                                  **module_kw)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    return model, trainer


def test_lr_scaled_by_global_batch_and_step_schedule(tmp_path):
    model, trainer = _fit(tmp_path, max_steps=8, lr=0.2, lr_reference_batch=8, schedule="step", milestones=[1.0],
                          gamma=0.5)
    assert model.scaled_lr() == pytest.approx(0.2 * 4 / 8)
    # 4 steps per epoch (16 images / 4): after epoch 1 the rate is halved
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5)
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["backbone", "head"]


def test_clipping_is_per_group(tmp_path):
    model, trainer = _fit(tmp_path, max_steps=1, clip_grad_norm=1e-3)
    opt = trainer.optimizers[0]
    for p in model.parameters():
        p.grad = torch.ones_like(p) * 10
    model.configure_gradient_clipping(opt)
    for g in opt.param_groups:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in g["params"]]))
        assert norm == pytest.approx(1e-3, rel=1e-3)  # each group on its own reaches the limit


def test_checkpoint_loads_as_embedder_by_path(tmp_path):
    model, trainer = _fit(tmp_path, max_steps=2)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    emb = FRCheckpointEmbedder(path)
    model.eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert emb.input_size == (32, 32) and emb.embedding_dim == 16
    assert torch.allclose(emb(x), torch.nn.functional.normalize(model(x), dim=1), atol=1e-5)
    spec = backbone_spec(IResNetEmbedder("r18", dropout=0.4))
    assert spec["init_args"] == {"arch": "r18", "weights": None, "checkpoint_format": "arcface_torch",
                                 "dropout": 0.4, "fp16": False}
    with pytest.raises(FileNotFoundError, match="FR checkpoint"):
        FRCheckpointEmbedder(tmp_path / "nope.ckpt")


def test_augmentation_pipelines():
    import albumentations as A

    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    torch.manual_seed(0)
    flips = {Augmentation(flip=True)(img)[0, 0, 0] for _ in range(20)}
    assert flips == {img[0, 0, 0], img[0, -1, 0]}
    ra = Augmentation(flip=False, randaugment=(4, 16))
    assert ra(img).shape == img.shape and ra(img).dtype == np.uint8
    pipe = A.to_dict(A.Compose([A.VerticalFlip(p=1.0)]))
    out = Augmentation(flip=False, albumentations=pipe)(img)
    assert np.array_equal(out, img[::-1])
    with pytest.raises(ValueError, match="albumentations"):
        Augmentation(albumentations={"nonsense": 1})
    assert not Augmentation(flip=False).active and math.isfinite(float(ra(img).mean()))


class _SameImageAugmented(torch.utils.data.Dataset):
    """One image, augmented anew at every index (for the worker-seeding test)."""

    def __init__(self, aug: Augmentation) -> None:
        self.aug = aug
        self.img = np.full((16, 16, 3), 128, dtype=np.uint8)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.aug(self.img.copy())))


def _albumentations_draws(seed: int) -> list[torch.Tensor]:
    import albumentations as A

    pipe = A.to_dict(A.Compose([A.RandomBrightnessContrast(brightness_limit=0.5, contrast_limit=0.5, p=1.0)]))
    ds = _SameImageAugmented(Augmentation(flip=False, albumentations=pipe))
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, shuffle=False)
    return [b[0] for b in loader]  # worker 0: indices 0, 2, 4, 6; worker 1: 1, 3, 5, 7


def test_albumentations_draw_differently_in_each_worker_and_reproducibly():
    draws = _albumentations_draws(0)
    # the i-th draw of worker 0 against the i-th of worker 1 (one shared stream would make them equal)
    assert all(not torch.equal(draws[2 * k], draws[2 * k + 1]) for k in range(4))
    assert len({d.float().mean().item() for d in draws}) == len(draws)
    again = _albumentations_draws(0)
    assert all(torch.equal(a, b) for a, b in zip(draws, again))  # seeded by torch: reproducible
    other = _albumentations_draws(1)
    assert not all(torch.equal(a, b) for a, b in zip(draws, other))


def test_exfacegan_randaugment_draws_bins_from_one_to_magnitude_over_its_op_set(monkeypatch):
    from exface.fr.datamodule import ExFaceGANRandAugment

    ra = ExFaceGANRandAugment(num_ops=4, magnitude=16)
    assert set(ra.names) == {"Identity", "ShearX", "TranslateX", "Rotate", "Brightness", "Color", "Contrast",
                             "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Grayscale"}
    # bin b of 31: torchvision's ranges (rotate 0..30 degrees, posterize 8..4 bits, solarize 255..0)
    assert ra.value("Rotate", 16, 112) == pytest.approx(16.0) and ra.value("Posterize", 16, 112) == 6
    assert ra.value("Solarize", 16, 112) == pytest.approx(119.0)
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    for name in ra.names:
        out = ra.apply(img, name, ra.value(name, 16, 16))
        assert out.shape == img.shape and out.dtype == torch.uint8
    rotations = []
    monkeypatch.setattr(ra, "apply", lambda im, name, v: (rotations.append(v) if name == "Rotate" else None) or im)
    torch.manual_seed(0)
    for _ in range(600):
        ra(img)
    degrees = {round(abs(v)) for v in rotations}
    assert degrees == set(range(1, 17))  # uniform bins 1..16 (torchvision: always 16)
    assert min(rotations) < 0 < max(rotations)
    aug = Augmentation(flip=False, randaugment=(4, 16), randaugment_variant="exfacegan")
    assert isinstance(aug.randaugment, ExFaceGANRandAugment)
    with pytest.raises(ValueError, match="randaugment_variant"):
        Augmentation(randaugment=(4, 16), randaugment_variant="other")


def test_a_schedule_that_cannot_run_as_set_is_named(tmp_path):
    with pytest.warns(UserWarning, match=r"warmup_epochs=10.0 is 40 steps, not shorter than the training's 8"):
        _fit(tmp_path, max_steps=8, warmup_epochs=10)
    with pytest.warns(UserWarning, match=r"1 of the milestones \[1.0, 30.0\] \(epochs\) fall at or after"):
        _fit(tmp_path, max_steps=8, schedule="step", milestones=[1.0, 30.0])


def test_training_folders_with_empty_or_single_identities_are_refused(tmp_path):
    from exface.errors import ExfaceError
    from exface.fr.datamodule import list_identity_folder

    root = make_identity_folder(tmp_path / "ds", num_identities=3, images_per_identity=2, size=16)
    (root / "99999").mkdir()  # an identity without images would be a centre no image trains
    with pytest.raises(ExfaceError, match="1 identity folder.* hold no images: 99999") as err:
        list_identity_folder(root)
    assert "remove the empty identity folders" in err.value.fix
    one = make_identity_folder(tmp_path / "one", num_identities=1, images_per_identity=3, size=16)
    with pytest.raises(ExfaceError, match="has 1 identity; a classification loss needs at least 2"):
        IdentityFolderDataModule(str(one), (16, 16), batch_size=2, num_workers=0).setup("fit")
