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
    # ExFaceGAN: x0.1 at epochs 22, 30, 35 (here 1 step per epoch), no warm-up
    f = [lr_factor(s, 40, 0, "step", milestones=(22, 30, 35)) for s in (0, 21, 22, 29, 30, 35, 39)]
    assert f == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])


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
