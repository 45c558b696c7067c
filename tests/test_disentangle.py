"""Identity/attribute disentanglement: every loss, the networks, the datamodule, the module's
schedule, checkpoints (frozen parts not stored, resume), the report and ``exface swap``; on tiny parts."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from exface.alignment.crops import ResizeAligner
from exface.disentangle.datamodule import CENTER_SEED, HELD_OUT_SEED, GeneratorPairDataModule, SeedPairStream, held_out_seeds
from exface.disentangle.encoders import LandmarkAttributeEncoder, TimmAttributeEncoder
from exface.disentangle.losses import (
    MS_SSIM_BETAS_3,
    PixelLoss,
    discriminator_loss,
    generator_adversarial_loss,
    identity_loss,
    inverse_gaussian_mask,
    landmark_frame,
    landmark_loss,
    points_in_views,
    r1_penalty,
    random_views,
)
from exface.disentangle.module import FROZEN, VIEW_SEED, DisentangleModule
from exface.models.id_mapper import LatentDiscriminator, LatentMapper
from exface.testing.pickle_payload import CodeRunningPayload
from exface.testing.tiny import TinyEmbedder, TinyGenerator, TinyLandmarks


# ----------------------------------------------------------------------------- losses
def test_identity_loss_is_mean_absolute_difference_without_target_gradient():
    a = torch.randn(4, 8, requires_grad=True)
    b = torch.randn(4, 8, requires_grad=True)
    loss = identity_loss(a, b)
    assert torch.isclose(loss, (a - b).abs().mean())
    loss.backward()
    assert b.grad is None and a.grad is not None
    assert identity_loss(b, b) == 0


def test_landmark_loss_uses_inner_points_only():
    p = torch.rand(3, 68, 2) * 64
    q = p.clone()
    q[:, :17] += 10.0  # the jaw line does not count
    assert landmark_loss(p, q) == 0
    q[:, 17:] += 2.0
    assert torch.isclose(landmark_loss(p, q), torch.tensor(4.0))
    assert torch.isclose(landmark_loss(p, q, first=0), (p - q).pow(2).mean())
    assert torch.allclose(landmark_frame(torch.full((1, 68, 2), 32.0), 64, 160.0), torch.full((1, 68, 2), 80.0))
    with pytest.raises(ValueError, match="shapes differ"):
        landmark_loss(p, q[:, :51])


def test_inverse_gaussian_mask_sums_to_one_and_is_lowest_at_the_centre():
    m = inverse_gaussian_mask(64, 20.0)
    assert math.isclose(float(m.sum()), 1.0, rel_tol=1e-5)
    assert m[31:33, 31:33].max() < m[0, 0] and float(m.min()) > 0


def test_pixel_loss_zero_on_identical_images_and_mixes_ms_ssim_and_l1():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    loss = PixelLoss(0.84, MS_SSIM_BETAS_3, 11)
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-5)
    l1_only = PixelLoss(0.0, MS_SSIM_BETAS_3, mask="uniform")
    assert torch.isclose(l1_only(y, x), ((y - x).abs() / 2).mean(), rtol=1e-5)
    mixed = loss(y, x)
    ms = (1 - loss.ms_ssim(y, x)).mean()
    l1 = PixelLoss(0.0, MS_SSIM_BETAS_3)(y, x)
    assert torch.isclose(mixed, 0.84 * ms + 0.16 * l1, rtol=1e-5)
    yg = y.clone().requires_grad_(True)
    loss(yg, x).backward()
    assert yg.grad.abs().sum() > 0


def test_pixel_loss_refuses_images_too_small_for_its_scales():
    with pytest.raises(ValueError, match="fewer betas"):
        PixelLoss().check_size(64)  # 5 scales x 11-px window need 160 px
    PixelLoss(betas=MS_SSIM_BETAS_3).check_size(64)
    assert math.isclose(sum(MS_SSIM_BETAS_3), 1.0, abs_tol=1e-3)


def test_adversarial_losses_are_the_logistic_ones():
    fake, real = torch.tensor([0.0, 2.0]), torch.tensor([1.0, -1.0])
    assert torch.isclose(generator_adversarial_loss(fake), -F.logsigmoid(fake).mean())
    expect = -F.logsigmoid(real).mean() - torch.log1p(-torch.sigmoid(fake)).mean()
    assert torch.isclose(discriminator_loss(real, fake), expect, atol=1e-6)
    # the generator loss falls as D's logit on the fake rises (non-saturating)
    assert generator_adversarial_loss(torch.tensor([3.0])) < generator_adversarial_loss(torch.tensor([-3.0]))


def test_r1_penalty_of_a_linear_discriminator():
    a = torch.tensor([3.0, 4.0])
    disc = lambda x: x @ a  # noqa: E731  gradient a everywhere: ||a||^2 = 25
    assert torch.isclose(r1_penalty(disc, torch.randn(5, 2), gamma=10.0), torch.tensor(0.5 * 10 * 25.0))
    d = LatentDiscriminator(4, (8,))
    r1 = r1_penalty(d, torch.randn(3, 4))
    r1.backward()  # differentiable w.r.t. D's weights
    assert d.net[0].weight.grad is not None


# ----------------------------------------------------------------------------- networks
def test_random_views_move_points_where_points_in_views_says():
    """A bright dot of an image lands in each view where points_in_views puts its coordinates."""
    side = 96
    yy, xx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    pts = torch.tensor([[[30.0, 40.0], [70.0, 25.0]]]).repeat(5, 1, 1)
    img = sum(torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 6) for x, y in pts[0].tolist()).expand(5, 3, side, side)
    for flip in (False, True):
        views, theta = random_views(img.contiguous(), torch.Generator().manual_seed(3), flip=flip, noise=0.0)
        moved = points_in_views(pts, theta, side)
        for n in range(5):
            for k in range(2):
                win = torch.exp(-((xx - moved[n, k, 0]) ** 2 + (yy - moved[n, k, 1]) ** 2) / 40)
                w = views[n, 0] * win
                centre = torch.stack([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
                assert torch.allclose(centre, moved[n, k], atol=0.15), (flip, n, k)
    # exface's landmark convention (pixel centres at integers), in a frame 2.5x the image
    centres = pts - 0.5
    frame = 2.5 * side
    moved_c = points_in_views(centres * 2.5, theta, frame, pixels=side) / 2.5
    assert torch.allclose(moved_c, moved - 0.5, atol=1e-4)
    # seeded: the same views again; no transform (all ranges 0) is the image itself
    a, _ = random_views(img, torch.Generator().manual_seed(1))
    b, _ = random_views(img, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    same, theta = random_views(img, torch.Generator().manual_seed(1), flip=False, rotate_deg=0, scale=0, shift=0,
                               noise=0)
    assert torch.allclose(same, img, atol=1e-5) and torch.allclose(points_in_views(pts, theta, side), pts, atol=1e-5)


def test_loss_views_feed_the_identity_and_landmark_losses_a_seeded_view():
    """``loss_views``: the identity loss (and with ``both`` the landmark loss, target moved into
    the view) sees random_views of the output drawn from VIEW_SEED + k; ``none`` is the paper's."""
    seen = {}
    for views in ("none", "identity", "both"):
        m = _tiny_module(loss_views=views)
        m.eval()
        emb_in, lmk_in = [], []
        real_embed, real_lmk = m.embed, m.landmarks_160
        m.embed = lambda x: emb_in.append(x) or real_embed(x)
        m.landmarks_160 = lambda x: lmk_in.append(x) or real_lmk(x)
        terms, fake, _ = m.losses(_batch(0))
        with torch.no_grad():
            out = m.render(fake)
        view, theta = random_views(out, torch.Generator().manual_seed(VIEW_SEED + 0), flip=views == "identity")
        # [identity source, output]; [attribute source, output]
        assert torch.allclose(emb_in[1], out if views == "none" else view, atol=1e-6)
        assert torch.allclose(lmk_in[1], view if views == "both" else out, atol=1e-6)
        if views == "both":
            target = points_in_views(real_lmk(lmk_in[0]), theta, m.landmark_frame_size, out.shape[-1])
            expect = m.w["landmark"] * landmark_loss(real_lmk(view), target, m.landmark_first)
            assert torch.allclose(terms["landmark"], expect, atol=1e-6)
        seen[views] = float(terms["id"])
    assert seen["none"] != seen["identity"]
    with pytest.raises(ValueError, match="loss_views"):
        _tiny_module(loss_views="all")


def test_mapper_and_discriminator_shapes():
    m = LatentMapper(8, 6, 5, (32, 16, 12))
    sizes = [(lin.in_features, lin.out_features) for lin in m.net if isinstance(lin, torch.nn.Linear)]
    assert sizes == [(14, 32), (32, 16), (16, 12), (12, 5)]
    assert sum(isinstance(x, torch.nn.LeakyReLU) for x in m.net) == 3 and isinstance(m.net[-1], torch.nn.Linear)
    assert m(torch.randn(2, 8), torch.randn(2, 6)).shape == (2, 5)
    with pytest.raises(ValueError, match="identity codes of size 8"):
        m(torch.randn(2, 7), torch.randn(2, 6))
    d = LatentDiscriminator(512)
    assert [lin.out_features for lin in d.net if isinstance(lin, torch.nn.Linear)] == [256, 128, 64, 1]
    assert d(torch.randn(3, 512)).shape == (3,)


def test_timm_attribute_encoder():
    enc = TimmAttributeEncoder("test_resnet", input_size=24)
    assert enc(torch.rand(2, 3, 16, 16) * 2 - 1).shape == (2, enc.out_dim)
    with pytest.raises(ValueError, match="timm has no model"):
        TimmAttributeEncoder("resnet_does_not_exist")


def test_landmark_attribute_encoder_trains_only_its_head():
    lm = TinyLandmarks()
    enc = LandmarkAttributeEncoder(lm, hidden=16, backbone=TimmAttributeEncoder("test_resnet", input_size=16))
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    code = enc.train()(x)
    assert code.shape == (3, 16 + enc.backbone.out_dim) == (3, enc.out_dim)
    assert not lm.training and not any(p.requires_grad for p in lm.parameters())
    code.sum().backward()
    assert all(p.grad is None for p in lm.parameters())
    assert all(p.grad is not None for p in enc.mlp.parameters())
    # the code is a function of the points: the same points give the same code
    enc.backbone = None
    pts = lm(x)
    want = enc.mlp((pts / 16.0 * 2 - 1).flatten(1))
    torch.testing.assert_close(enc(x), want)
    with pytest.raises(ValueError, match="gave 68 points"):
        LandmarkAttributeEncoder(lm, points=5)(x)


# ----------------------------------------------------------------------------- data
def test_seed_stream_is_reproducible_resumable_and_disjoint_from_held_out():
    s = SeedPairStream(4, seed=1)
    it = iter(s)
    first = [next(it) for _ in range(3)]
    again = next(iter(SeedPairStream(4, seed=1, start=2)))
    assert torch.equal(first[2]["id_seed"], again["id_seed"]) and again["index"] == 2
    assert all(int(b["id_seed"].max()) < HELD_OUT_SEED for b in first)
    i, a = held_out_seeds(5)
    assert int(i.min()) >= HELD_OUT_SEED and not set(i.tolist()) & set(a.tolist())
    dm = GeneratorPairDataModule(batch_size=4)
    dm.load_state_dict({"consumed": 7})
    assert next(iter(dm.train_dataloader()))["index"] == 7


# ----------------------------------------------------------------------------- module
def _tiny_module(**kw) -> DisentangleModule:
    args = dict(space="w", mapper_hidden=[16, 16], discriminator_hidden=[8, 8], ms_ssim_betas=[1.0],
                ms_ssim_kernel=3, lr=1e-3, report_pairs=4, grid_size=2, eval_batch_size=4)
    args.update(kw)
    enc = args.pop("attribute_encoder", None) or TimmAttributeEncoder("test_resnet", input_size=16)
    return DisentangleModule(TinyGenerator(z_dim=8, w_dim=8, resolution=16), TinyEmbedder(), ResizeAligner((16, 16)),
                             enc, TinyLandmarks(), **args)


def _batch(k: int, n: int = 3) -> dict:
    return SeedPairStream(n, seed=0).batch(k)


def test_schedule_cross_and_same_image_steps():
    m = _tiny_module()
    terms, fake, cross = m.losses(_batch(0))
    assert cross and set(terms) == {"id", "landmark"} and fake.shape == (3, 8)
    terms, _, cross = m.losses(_batch(1))
    assert not cross and set(terms) == {"id", "landmark", "pixel"}
    terms, _, _ = _tiny_module(latent_weight=1.0, pixel_weight=0.0).losses(_batch(1))
    assert set(terms) == {"id", "landmark", "latent"}
    # on a same-image step the pixel loss compares the output with the identity source itself
    m.eval()
    seen = []
    real_pixel_loss = m.pixel_loss.forward
    m.pixel_loss.forward = lambda out, target: seen.append(target) or real_pixel_loss(out, target)
    m.losses(_batch(1))
    with torch.no_grad():
        id_img = m.render(m.latents(_batch(1)["id_seed"]))
    assert len(seen) == 1 and torch.equal(seen[0], id_img)


def test_training_step_updates_trained_parts_only_and_d_on_adversarial_steps(monkeypatch):
    m = _tiny_module()
    opts = m.configure_optimizers()
    assert [o.param_groups[0]["lr"] for o in opts] == pytest.approx([1e-3, 1e-4, 4e-4])
    monkeypatch.setattr(m, "optimizers", lambda: opts)
    monkeypatch.setattr(m, "manual_backward", lambda loss, **kw: loss.backward(**kw))
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    monkeypatch.setattr(m, "log_dict", lambda *a, **k: None)
    frozen = {k: v.clone() for k, v in m.state_dict().items() if k.split(".")[0] in FROZEN}
    d0 = [p.clone() for p in m.discriminator.parameters()]
    g0 = [p.clone() for p in m.mapper.parameters()]
    m.training_step(_batch(1), 0)  # odd: no adversarial step
    assert all(torch.equal(a, b) for a, b in zip(d0, m.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g0, m.mapper.parameters()))
    assert opts[1].state == {}  # the adversarial Adam has not stepped
    # even: adversarial step for mapper and discriminator. Both generator-side gradients are taken
    # at the same parameters, by hand here, and each must reach its own Adam: after its first step
    # an Adam's first moment is (1 - beta1) x the gradient it was given.
    params = m.trainable_generator_parameters()
    m1_before = [opts[0].state[p]["exp_avg"].clone() if p in opts[0].state else torch.zeros_like(p) for p in params]
    terms, fake, _ = m.losses(_batch(2))
    main = torch.autograd.grad(sum(terms.values()), params, retain_graph=True, allow_unused=True)
    adv = torch.autograd.grad(m.w["adversarial"] * generator_adversarial_loss(m.discriminator(fake)), params,
                              allow_unused=True)
    m.training_step(_batch(2), 1)
    assert any(not torch.equal(a, b) for a, b in zip(d0, m.discriminator.parameters()))
    b1 = opts[0].defaults["betas"][0]
    for p, g_main, g_adv, before in zip(params, main, adv, m1_before):
        if g_main is not None:
            torch.testing.assert_close(opts[0].state[p]["exp_avg"], b1 * before + (1 - b1) * g_main, rtol=1e-4, atol=1e-6)
        if g_adv is not None:
            torch.testing.assert_close(opts[1].state[p]["exp_avg"], (1 - b1) * g_adv, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in frozen.items())


def test_frozen_parts_stay_in_eval_mode_and_are_not_checkpointed():
    m = _tiny_module()
    m.train()
    assert not m.generator.training and not m.identity_embedder.training and m.mapper.training
    ckpt = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}
    m.on_save_checkpoint(ckpt)
    assert not any(k.split(".")[0] in FROZEN for k in ckpt["state_dict"])
    assert not any(isinstance(v, torch.nn.Module) for v in ckpt["hyper_parameters"].values())
    m2 = _tiny_module()
    m2.on_load_checkpoint(ckpt)
    m2.load_state_dict(ckpt["state_dict"])  # strict: frozen weights come from m2 itself
    assert torch.equal(m2.mapper.net[0].weight, m.mapper.net[0].weight)


def test_report_has_baselines_margins_and_a_grid(tmp_path):
    m = _tiny_module()
    result = m.report(tmp_path, pairs=4)
    s = result["summary"]
    ij, lj = "TinyEmbedder-loss", "TinyLandmarks-loss"
    assert s[f"attr_latent/{ij}/id_sim_to_attr"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert s[f"id_latent/{ij}/id_sim_to_id"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert s[f"attr_latent/{lj}/lmk_err_to_attr"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert s[f"id_latent/{ij}+{lj}/balanced"]["mean"] == pytest.approx(-1.0, abs=1e-4)
    assert s[f"mapper/{ij}/id_margin"]["n"] == 4 and "recon/pixel/psnr" in s
    assert result["identity_judges"] == [{"name": ij, "independent": False}]
    md = (tmp_path / "report.md").read_text()
    assert "not independent evidence" in md and "identity source's own latent (baseline)" in md
    assert json.loads((tmp_path / "report.json").read_text())["pairs"] == 4
    from PIL import Image

    grid = Image.open(tmp_path / "swap_grid.png")
    assert grid.size[0] == grid.size[1] and grid.size[0] % (3 * 16) == 0  # (2 + 1) x 16 px cells, upscaled


def test_report_with_independent_judges(tmp_path):
    m = _tiny_module(eval_embedder=TinyEmbedder(input_size=(12, 12), seed=3), eval_landmarks=TinyLandmarks(seed=5),
                     eval_landmark_size=32)
    result = m.report(tmp_path, pairs=2)
    assert {j["name"]: j["independent"] for j in result["identity_judges"]} == {"TinyEmbedder-loss": False, "TinyEmbedder": True}
    assert "mapper/TinyEmbedder+TinyLandmarks/balanced" in result["summary"]


# ----------------------------------------------------------------------------- resume, CLI
class _Crash(Exception):
    pass


def test_training_resumes_after_a_crash_with_new_batches(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    seen: list[int] = []

    class Record(Callback):
        def __init__(self, crash_at: int | None):
            self.crash_at = crash_at

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch["index"] == self.crash_at:
                raise _Crash()
            seen.append(int(batch["index"]))

    def trainer(crash_at):
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1)
        return pl.Trainer(max_epochs=1, limit_train_batches=5, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                          callbacks=[ckpt, Record(crash_at)], default_root_dir=tmp_path)

    with pytest.raises(_Crash):
        trainer(3).fit(_tiny_module(), GeneratorPairDataModule(batch_size=2, val_pairs=0))
    assert seen == [0, 1, 2]
    seen.clear()
    dm = GeneratorPairDataModule(batch_size=2, val_pairs=0)
    trainer(None).fit(_tiny_module(), dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert seen == [3, 4] and dm.consumed == 5
    ck = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not any(k.split(".")[0] in FROZEN for k in ck["state_dict"])


def _tiny_recipe(tmp_path):
    """A disentangle recipe on tiny parts (exface.testing.tiny), run through `exface fit`."""
    import yaml

    cfg = {
        "seed_everything": 0,
        "model": {"class_path": "DisentangleModule", "init_args": {
            "generator": {"class_path": "TinyGenerator", "init_args": {"z_dim": 8, "resolution": 16}},
            "identity_embedder": {"class_path": "TinyEmbedder"},
            "identity_aligner": {"class_path": "ResizeAligner", "init_args": {"output_size": [16, 16]}},
            "attribute_encoder": {"class_path": "TimmAttributeEncoder", "init_args": {"model_name": "test_resnet", "input_size": 16}},
            "landmarks": {"class_path": "TinyLandmarks"},
            "space": "w", "mapper_hidden": [16], "discriminator_hidden": [8], "ms_ssim_betas": [1.0], "ms_ssim_kernel": 3,
            "report_dir": str(tmp_path / "report"), "report_pairs": 4, "grid_size": 2, "eval_batch_size": 4}},
        "data": {"class_path": "GeneratorPairDataModule", "init_args": {"batch_size": 2, "val_pairs": 2, "val_batch_size": 2}},
        "trainer": {"max_epochs": 1, "limit_train_batches": 3, "accelerator": "cpu", "logger": False,
                    "enable_progress_bar": False, "num_sanity_val_steps": 0, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "ModelCheckpoint", "init_args": {
                        "dirpath": str(tmp_path / "ckpt"), "save_last": True, "save_top_k": 0, "every_n_train_steps": 1}}]},
    }
    path = tmp_path / "tiny_disentangle.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_report_swap_and_report_command_from_a_cli_checkpoint(tmp_path, capsys):
    from PIL import Image

    import exface.testing.tiny  # noqa: F401  registers the tiny parts
    from exface.cli import main

    main(["fit", "--config", str(_tiny_recipe(tmp_path))])
    assert (tmp_path / "report" / "report.md").is_file()  # written at the end of fit
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    main(["swap", "--checkpoint", str(ckpt), "--output", str(tmp_path / "grid.png"),
          "--id_seeds", "[1, 2]", "--attr_seeds", "[3, 4, 5]"])
    assert Image.open(tmp_path / "grid.png").size == (512, 384)  # (3+1) x (2+1) cells of 16 px, x8
    src = tmp_path / "face.png"
    Image.fromarray((torch.rand(20, 20, 3) * 255).byte().numpy()).save(src)
    main(["swap", "--checkpoint", str(ckpt), "--output", str(tmp_path / "grid2.png"),
          "--id_images", f"[{src}]", "--attr_seeds", "[3]"])
    assert (tmp_path / "grid2.png").is_file()
    main(["disentangle-report", "--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "rep"), "--pairs", "3"])
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["pairs"] == 3 and rep["settings"]["batches_trained"] == 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["swap", "--checkpoint", str(ckpt), "--attr_seeds", "[3]"])
    assert exit_.value.code == 1 and "either --id_seeds or --id_images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["swap", "--checkpoint", str(tmp_path / "missing.ckpt"), "--id_seeds", "[1]", "--attr_seeds", "[3]"])
    assert "no checkpoint at" in capsys.readouterr().err
    _swap_grid_records_and_refuses(ckpt, tmp_path, capsys)
    for bad in (["--pairs", "0"], ["--pairs", "-2"], ["--batch_size", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(["disentangle-report", "--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "rep0"), *bad])
        err = capsys.readouterr().err
        assert exit_.value.code == 1 and f"{bad[0]} must be at least 1" in err and "Traceback" not in err, err
    _malicious_checkpoint_is_refused(ckpt, tmp_path, capsys)


def _swap_grid_records_and_refuses(ckpt, tmp_path, capsys):
    """The grid records what made it; another grid is not written over it, the same one is; a folder
    or a non-image source is named on one screen."""
    from PIL import Image

    from exface.cli import main
    from exface.disentangle.swap import SWAP_RECORD
    from exface.report_dir import file_sha256

    grid = tmp_path / "grid.png"
    record = json.loads(Image.open(grid).text[SWAP_RECORD])
    assert record["checkpoint"]["sha256"] == file_sha256(ckpt) and record["id_seeds"] == [1, 2]
    assert record["attr_seeds"] == [3, 4, 5]
    before = grid.read_bytes()
    capsys.readouterr()

    def refused(args, *expected):
        with pytest.raises(SystemExit) as exit_:
            main(["swap", "--checkpoint", str(ckpt), *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 1 and "Traceback" not in err and all(e in err for e in expected), err

    refused(["--output", str(grid), "--id_seeds", "[7]", "--attr_seeds", "[8, 9]"],
            "holds another swap grid", "id_seeds: the file has [1, 2], this run [7]", "fix: pass another --output")
    assert grid.read_bytes() == before
    other = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(other)  # an image exface did not write
    refused(["--output", str(other), "--id_seeds", "[1]", "--attr_seeds", "[3]"], "not a grid written by `exface swap`")
    refused(["--output", str(tmp_path), "--id_seeds", "[1]", "--attr_seeds", "[3]"], "is a folder, not a PNG file")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    refused(["--output", str(tmp_path / "g3.png"), "--id_images", f"[{junk}]", "--attr_seeds", "[3]"],
            "junk.png is not a readable image")
    main(["swap", "--checkpoint", str(ckpt), "--output", str(grid), "--id_seeds", "[1, 2]", "--attr_seeds", "[3, 4, 5]"])
    assert grid.read_bytes() == before  # the same grid again: rendered again, the same bytes


def _malicious_checkpoint_is_refused(ckpt, tmp_path, capsys):
    """A real checkpoint with an object whose __reduce__ runs code: refused, and nothing runs."""
    from exface.cli import main
    from exface.disentangle.swap import load_disentangle_checkpoint
    from exface.errors import ExfaceError

    assert isinstance(load_disentangle_checkpoint(ckpt), DisentangleModule)  # the real one loads
    marker = tmp_path / "pwned"
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    data["hyper_parameters"]["payload"] = CodeRunningPayload(str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save(data, evil)
    with pytest.raises(ExfaceError, match="refusing to load the checkpoint") as err:
        load_disentangle_checkpoint(evil)
    assert err.value.where == str(evil) and "_run_marker" in err.value.problem
    capsys.readouterr()
    for cmd in (["swap", "--checkpoint", str(evil), "--id_seeds", "[1]", "--attr_seeds", "[3]"],
                ["disentangle-report", "--checkpoint", str(evil), "--output_dir", str(tmp_path / "evil_rep")]):
        with pytest.raises(SystemExit) as exit_:
            main(cmd)
        assert exit_.value.code == 1 and "refusing to load the checkpoint" in capsys.readouterr().err
    assert not marker.exists(), "code from the checkpoint ran"
    torch.load(evil, map_location="cpu", weights_only=False)  # control: an unrestricted load runs it
    assert marker.read_text() == "executed"
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    (tmp_path / "cut.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    for bad in ("junk.ckpt", "cut.ckpt"):
        with pytest.raises(FileNotFoundError, match="not a readable checkpoint"):
            load_disentangle_checkpoint(tmp_path / bad)


def test_identity_center_uses_the_generators_mean_embedding_and_checkpoints_it():
    m = _tiny_module(identity_center=32)
    x = m.render(m.latents(torch.arange(3)))
    plain = m.identity_embedder(m.identity_aligner(x))
    assert torch.equal(m.identity_mean, torch.zeros_like(m.identity_mean))
    m.fit_identity_mean()
    seeds = torch.arange(CENTER_SEED, CENTER_SEED + 32)
    mean = m.identity_embedder(m.identity_aligner(m.render(m.latents(seeds)))).mean(0)
    torch.testing.assert_close(m.identity_mean, mean)
    torch.testing.assert_close(m.embed(x), F.normalize(plain - mean, dim=-1))
    ckpt = {"state_dict": m.state_dict(), "hyper_parameters": {}}
    m.on_save_checkpoint(ckpt)
    m2 = _tiny_module(identity_center=32)
    m2.on_load_checkpoint(ckpt)
    m2.load_state_dict(ckpt["state_dict"])
    torch.testing.assert_close(m2.identity_mean, mean)
    assert int(m2.identity_mean_seed) == CENTER_SEED
    m2.fit_identity_mean()  # already set: kept
    torch.testing.assert_close(m2.identity_mean, mean)
    old = {"state_dict": {k: v for k, v in ckpt["state_dict"].items() if k not in ("identity_mean", "identity_mean_seed")}}
    m3 = _tiny_module()
    m3.on_load_checkpoint(old)
    m3.load_state_dict(old["state_dict"])  # a checkpoint from before the option still loads
    assert torch.equal(m3.embed(x), plain)


def test_centring_samples_are_never_training_or_report_images(monkeypatch, tmp_path):
    m = _tiny_module(identity_center=16)
    used: dict[str, set[int]] = {}
    stage = ["centre"]
    real = m.latents
    monkeypatch.setattr(m, "latents", lambda seeds: used.setdefault(stage[0], set()).update(seeds.tolist()) or real(seeds))
    m.fit_identity_mean()
    stage[0] = "report"
    m.report(tmp_path, pairs=4)
    stage[0] = "train"
    for k in range(3):
        m.losses(_batch(k))
    assert len(used["centre"]) == 16 and used["report"] and used["train"]
    assert not used["centre"] & used["report"] and not used["centre"] & used["train"]
    assert not used["report"] & used["train"]
    assert json.loads((tmp_path / "report.json").read_text())["settings"]["identity_mean_first_seed"] == CENTER_SEED


def test_checkpoint_centred_before_center_seed_is_kept_and_named(caplog):
    m = _tiny_module(identity_center=16)
    m.fit_identity_mean()
    sd = {k: v for k, v in m.state_dict().items() if k != "identity_mean_seed"}  # as written before the fix
    m2 = _tiny_module(identity_center=16)
    with caplog.at_level("WARNING", logger="exface.disentangle.module"):
        m2.on_load_checkpoint({"state_dict": sd})
    m2.load_state_dict(sd)
    torch.testing.assert_close(m2.identity_mean, m.identity_mean)
    assert int(m2.identity_mean_seed) == HELD_OUT_SEED and "held-out pairs" in caplog.text


def test_frozen_landmark_net_inside_the_attribute_encoder_is_not_checkpointed():
    enc = LandmarkAttributeEncoder(TinyLandmarks(), points=68, hidden=8)
    m = _tiny_module(attribute_encoder=enc)
    ckpt = {"state_dict": m.state_dict(), "hyper_parameters": {}}
    nested = [k for k in ckpt["state_dict"] if k.startswith("attribute_encoder.landmarks.")]
    m.on_save_checkpoint(ckpt)
    assert not any(k.startswith("attribute_encoder.landmarks.") for k in ckpt["state_dict"])
    assert any(k.startswith("attribute_encoder.mlp.") for k in ckpt["state_dict"])
    assert nested  # TinyLandmarks has weights
    m2 = _tiny_module(attribute_encoder=LandmarkAttributeEncoder(TinyLandmarks(seed=1), points=68, hidden=8))
    own = {k: v.clone() for k, v in m2.state_dict().items() if k in nested}
    m2.on_load_checkpoint(ckpt)
    m2.load_state_dict(ckpt["state_dict"])  # strict; the landmark net's weights are the recipe part's
    assert all(torch.equal(m2.state_dict()[k], v) for k, v in own.items())
    torch.testing.assert_close(m2.attribute_encoder.mlp[0].weight, m.attribute_encoder.mlp[0].weight)


def test_resume_refuses_a_pair_stream_of_another_seed_or_batch_size():
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from exface.errors import ExfaceStateError

    def resumed(**kw) -> GeneratorPairDataModule:
        dm = GeneratorPairDataModule(**kw)
        dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), ckpt_path="ckpt/last.ckpt")
        return dm

    dm = GeneratorPairDataModule(batch_size=4, seed=0)
    dm.consumed = 3
    state = dm.state_dict()
    same = resumed(batch_size=4, seed=0)
    same.load_state_dict(state)
    assert same.consumed == 3
    with pytest.raises(ExfaceStateError, match="data.init_args.seed: checkpoint 0, this run 1"):
        resumed(batch_size=4, seed=1).load_state_dict(state)
    with pytest.raises(ExfaceStateError, match="data.init_args.batch_size: checkpoint 4, this run 8"):
        resumed(batch_size=8, seed=0).load_state_dict(state)
    GeneratorPairDataModule(batch_size=8, seed=0).load_state_dict(state)  # validate/test, no fit: not refused


def test_timm_attribute_encoder_takes_the_backbones_own_normalization():
    import timm

    enc = TimmAttributeEncoder("test_resnet", input_size=16)
    cfg = timm.create_model("test_resnet", pretrained=False).pretrained_cfg
    torch.testing.assert_close(enc.mean.flatten(), torch.tensor(cfg["mean"], dtype=torch.float32))
    torch.testing.assert_close(enc.std.flatten(), torch.tensor(cfg["std"], dtype=torch.float32))


@pytest.mark.parametrize("augment", ["none", "identity", "both"])
def test_latent_oracle_search_runs_every_augmentation_on_tiny_parts(augment):
    """The latent oracle's per-pair search, each augmentation: it moves the latent, kept on the sphere."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "disentangle_latent_oracle.py"
    spec = importlib.util.spec_from_file_location("disentangle_latent_oracle", path)
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    m = _tiny_module(space="z")
    m.eval()
    with torch.no_grad():
        zi, za = m.latents(torch.arange(3)), m.latents(torch.arange(3, 6))
        id_img, attr_img = m.render(zi), m.render(za)
    start = oracle.start_latents(zi, za, "mid")
    assert torch.allclose(start.norm(dim=1), torch.full((3,), 8 ** 0.5), atol=1e-5)
    member = lambda x: F.normalize(m.embed(x) * 2 + 0.1, dim=-1)  # noqa: E731 - a second "network"
    z = oracle.search(m, id_img, attr_img, start, 0.01, 5, 0.05, (member,), augment, seed=1)
    assert z.shape == start.shape and torch.allclose(z.norm(dim=1), start.norm(dim=1), atol=1e-4)
    assert not torch.equal(z, start)
