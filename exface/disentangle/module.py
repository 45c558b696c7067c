"""``DisentangleModule``: identity/attribute disentanglement by mapping into a frozen generator.

Nitzan et al., "Face Identity Disentanglement via Latent Space Mapping" (TOG 2020, arXiv
2005.07728; code YotamNitzan/ID-disentanglement, TF2). An identity image ``i`` and an
attribute image ``a`` go in; ``latent = mapper(E_id(i), A(a))`` and ``G(latent)`` should have
``i``'s identity and ``a``'s pose, expression and lighting:

- frozen: the generator ``G``, the identity embedder ``E_id`` (with its aligner), the
  differentiable landmark net;
- trained: the attribute encoder ``A``, the :class:`~exface.models.id_mapper.LatentMapper`
  and the :class:`~exface.models.id_mapper.LatentDiscriminator` on latents.

Schedule and losses as in the reference ``trainer.py`` (every weight and rate is an option):
batch ``k`` is a cross-identity step when ``k % cross_every == 0`` (3; ``i != a``), else a
same-image step (``a = i``, and the pixel loss applies). Every step: identity L1 on
embeddings (1) + landmark MSE on the inner 51 points in a 160-px frame (0.001) [+ pixel
loss 0.02 x (0.84 (1 - MS-SSIM) + 0.16 L1) on same-image steps], one Adam step of the
encoder and mapper at ``lr``. On adversarial steps (``k % adversarial_every == 0``; the
reference alternates, using the latent discriminator on even steps only) also the
non-saturating adversarial loss on the mapped latents (weight 1), whose gradient (taken at
the same parameters, before either update) is applied by a second Adam at
``adversarial_lr_factor x lr`` (0.1), and the discriminator's logistic loss + R1 (gamma 10) on
latents of the generator's prior, by a third Adam at ``discriminator_lr_factor x lr`` (0.4).

exface additions, all off by default: ``latent_weight`` (an L2 pull of the mapped latent
to the source's own latent on same-image steps; the reference computes the matching w's but
leaves this loss at 0); evaluation judges other than the loss networks.

Checkpoints hold the trained networks and optimizer states only; the frozen networks (also
those nested in a trained part, such as ``LandmarkAttributeEncoder``'s landmark net) are
rebuilt from the recipe (they are dropped on save and taken from the live module on load).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.alignment.base import Aligner
from exface.alignment.landmarks import LandmarkSource
from exface.disentangle.encoders import AttributeEncoder
from exface.disentangle.evaluation import (
    IdentityJudge,
    LandmarkJudge,
    pair_metrics,
    reconstruction_metrics,
    summarize,
    swap_grid,
    write_report,
)
from exface.disentangle.losses import (
    MS_SSIM_BETAS_5,
    PixelLoss,
    discriminator_loss,
    generator_adversarial_loss,
    identity_loss,
    landmark_frame,
    landmark_loss,
    points_in_views,
    r1_penalty,
    random_views,
)
from exface.embedders.base import IdentityEmbedder
from exface.generators.base import Generator
from exface.models.id_mapper import LatentDiscriminator, LatentMapper

__all__ = ["DisentangleModule", "FROZEN"]

log = logging.getLogger(__name__)

#: Seed of the random loss views of batch 0 (``loss_views``); batch k draws from VIEW_SEED + k.
VIEW_SEED = 7_000_003

#: Submodules that are never trained (and are not stored in checkpoints).
FROZEN = ("generator", "identity_embedder", "identity_aligner", "landmarks",
          "eval_embedder", "eval_aligner", "eval_landmarks")


class DisentangleModule(pl.LightningModule):
    """Identity/attribute disentanglement in a frozen generator's latent space (Nitzan et al. 2020).

    Args:
        generator: the frozen generator (any registered Generator).
        identity_embedder: the frozen identity encoder (any registered IdentityEmbedder).
        identity_aligner: generator images -> the embedder's crops (e.g. FixedCropAligner).
        attribute_encoder: the trainable attribute encoder (e.g. TimmAttributeEncoder).
        landmarks: the frozen, differentiable 68-point landmark source (FaceApiLandmarks).
        space: the generator latent the mapper writes: ``z`` (DCGAN) or ``w`` (StyleGAN, the
            paper's; broadcast to every layer).
        mapper_hidden: hidden sizes of the mapper (the paper: 2048, 1024, 512).
        discriminator_hidden: hidden sizes of the latent discriminator (256, 128, 64).
        id_weight: identity L1 weight (1).
        landmark_weight: landmark MSE weight (0.001).
        landmark_first: first landmark index in the loss (17: the 51 inner points).
        landmark_frame: landmark coordinates are pixels of the image resized to this side (160,
            the reference landmark net's input, for which 0.001 was chosen).
        pixel_weight: pixel loss weight on same-image steps (0.02).
        ms_ssim_fraction: MS-SSIM share of the pixel loss (0.84; the rest is masked L1).
        ms_ssim_betas: MS-SSIM scale exponents (5 scales need >= 160-px images; the 64-px
            DCGAN recipe uses the 3-scale :data:`~exface.disentangle.losses.MS_SSIM_BETAS_3`).
        ms_ssim_kernel: MS-SSIM Gaussian window size (11).
        pixel_mask: ``gaussian`` (the reference's inverse Gaussian L1 weights) or ``uniform``.
        adversarial_weight: non-saturating adversarial loss weight on latents (1; 0 = off).
        r1_gamma: R1 penalty weight of the latent discriminator (10).
        latent_weight: exface extra, off by default: MSE of the mapped latent to the source's
            latent on same-image steps.
        loss_views: exface extra, ``none`` (the paper) by default: ``identity`` -- the identity
            loss sees a random view of each output (:func:`~exface.disentangle.losses.random_views`:
            rotation, scale, shift, mirror, noise), ``both`` -- the identity and landmark losses
            see one random view (not mirrored; the landmark target moved into it). The pixel
            loss always sees the output itself. Why: a per-pair latent search on the 64-px DCGAN
            satisfies face-api's identity and landmark losses with changes that other networks
            do not read (``benchmarks/disentangle_latent_oracle.py``); a random view each step
            pays only for changes that survive small transformations. The views of batch ``k``
            are drawn from seed ``VIEW_SEED + k``, so a resumed run draws the same ones.
        identity_center: exface extra, 0 (off, the paper) by default: subtract the mean identity
            embedding of this many generator samples (fixed seeds from
            :data:`~exface.disentangle.datamodule.CENTER_SEED`, never used for training or
            evaluation pairs) and renormalize, for the mapper's input and the
            identity loss. For an embedder whose embeddings of this generator's faces are all
            alike (face-api ResNet-34 on DCGAN faces: random pairs at cosine 0.89), the plain
            identity loss barely tells two identities apart; centred, the same loss does. The
            mean is a buffer in the checkpoint, so a resumed or reloaded module uses the same one.
        cross_every: batch k is cross-identity when ``k % cross_every == 0`` (3).
        adversarial_every: the adversarial losses run when ``k % adversarial_every == 0`` (2).
        lr: Adam learning rate of the attribute encoder and mapper (the reference: 5e-5 at
            256 px, 1e-5 at 1024 px).
        adversarial_lr_factor: the adversarial generator step's rate, times ``lr`` (0.1).
        discriminator_lr_factor: the discriminator's rate, times ``lr`` (0.4).
        adam_betas: Adam betas (Keras' defaults, as the reference).
        eval_embedder: an identity judge other than the loss's embedder (the loss's own
            embedder is always reported too, marked as not independent). None: the default
            independent evaluator of :mod:`exface.exfacegan.evaluator` for the loss's embedder
            (HSEFaceRes for FaceApiResNet34), when ``auto_eval_embedder`` and it is available.
        auto_eval_embedder: pick that default evaluator when ``eval_embedder`` is None.
        eval_aligner: its aligner (default: ``identity_aligner``'s crop at its input size,
            :func:`exface.exfacegan.evaluator.evaluator_aligner`).
        eval_landmarks: a landmark judge other than the loss's landmark net (e.g. DlibLandmarks).
        eval_landmark_size: images are resized to this side before ``eval_landmarks``
            (detectors need bigger faces than 64 px); None keeps them.
        report_dir: where :meth:`on_fit_end` writes the report (None: no report).
        report_pairs: held-out cross-identity pairs in the report (and as many same-image pairs).
        grid_size: identities and attribute sources in the report's swap grid.
        eval_batch_size: images per batch in the report.
    """

    def __init__(
        self,
        generator: Generator,
        identity_embedder: IdentityEmbedder,
        identity_aligner: Aligner,
        attribute_encoder: AttributeEncoder,
        landmarks: LandmarkSource,
        space: Literal["z", "w"] = "w",
        mapper_hidden: Sequence[int] = (2048, 1024, 512),
        discriminator_hidden: Sequence[int] = (256, 128, 64),
        id_weight: float = 1.0,
        landmark_weight: float = 0.001,
        landmark_first: int = 17,
        landmark_frame: float = 160.0,
        pixel_weight: float = 0.02,
        ms_ssim_fraction: float = 0.84,
        ms_ssim_betas: Sequence[float] = MS_SSIM_BETAS_5,
        ms_ssim_kernel: int = 11,
        pixel_mask: Literal["gaussian", "uniform"] = "gaussian",
        adversarial_weight: float = 1.0,
        r1_gamma: float = 10.0,
        latent_weight: float = 0.0,
        loss_views: Literal["none", "identity", "both"] = "none",
        identity_center: int = 0,
        cross_every: int = 3,
        adversarial_every: int = 2,
        lr: float = 5e-5,
        adversarial_lr_factor: float = 0.1,
        discriminator_lr_factor: float = 0.4,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        eval_embedder: IdentityEmbedder | None = None,
        auto_eval_embedder: bool = True,
        eval_aligner: Aligner | None = None,
        eval_landmarks: LandmarkSource | None = None,
        eval_landmark_size: int | None = None,
        report_dir: str | None = None,
        report_pairs: int = 256,
        grid_size: int = 6,
        eval_batch_size: int = 32,
    ) -> None:
        super().__init__()
        # Under LightningCLI the hyperparameters are the recipe's part *configs* (so
        # load_from_checkpoint rebuilds every part); built in Python, the part objects are left
        # out (pass them to load_from_checkpoint again).
        modules = [k for k, v in locals().items() if isinstance(v, nn.Module) and k != "self"]
        self.save_hyperparameters(ignore=None if _cli_given_hparams() else modules, logger=False)
        self.automatic_optimization = False
        generator.check_space(space)
        if space not in ("z", "w"):
            raise ValueError(f"space must be 'z' or 'w' (one latent per image), got {space!r}")
        if cross_every < 1 or adversarial_every < 1:
            raise ValueError("cross_every and adversarial_every must be >= 1")
        if getattr(landmarks, "scheme", "ibug68") != "ibug68":
            raise ValueError(f"landmarks must give the 68-point ibug scheme, {type(landmarks).__name__} gives {landmarks.scheme}")
        self.generator, self.identity_embedder, self.identity_aligner = generator, identity_embedder, identity_aligner
        if eval_embedder is None and auto_eval_embedder:
            from exface.exfacegan.evaluator import default_evaluator

            eval_embedder, why = default_evaluator(identity_embedder)
            log.info("disentangle evaluation: %s", why if eval_embedder is None else f"{type(eval_embedder).__name__} ({why})")
        if eval_embedder is not None and eval_aligner is None:
            from exface.exfacegan.evaluator import evaluator_aligner

            eval_aligner = evaluator_aligner(identity_aligner, eval_embedder)
        self.landmarks, self.attribute_encoder = landmarks, attribute_encoder
        self.eval_embedder, self.eval_aligner, self.eval_landmarks = eval_embedder, eval_aligner, eval_landmarks
        for name in FROZEN:
            part = getattr(self, name)
            if part is not None:
                part.requires_grad_(False)
        self.space = space
        self.latent_dim = generator.z_dim if space == "z" else generator.w_dim
        self.mapper = LatentMapper(identity_embedder.embedding_dim, attribute_encoder.out_dim, self.latent_dim, mapper_hidden)
        self.discriminator = LatentDiscriminator(self.latent_dim, discriminator_hidden)
        self.pixel_loss = PixelLoss(ms_ssim_fraction, ms_ssim_betas, ms_ssim_kernel, mask=pixel_mask)
        if pixel_weight > 0:
            self.pixel_loss.check_size(generator.resolution)
        self.w = dict(id=float(id_weight), landmark=float(landmark_weight), pixel=float(pixel_weight),
                      adversarial=float(adversarial_weight), latent=float(latent_weight))
        self.landmark_first, self.landmark_frame_size = int(landmark_first), float(landmark_frame)
        if loss_views not in ("none", "identity", "both"):
            raise ValueError(f"loss_views must be 'none', 'identity' or 'both', got {loss_views!r}")
        self.loss_views = loss_views
        self.r1_gamma, self.cross_every, self.adversarial_every = float(r1_gamma), int(cross_every), int(adversarial_every)
        self.lr, self.adversarial_lr_factor, self.discriminator_lr_factor = float(lr), float(adversarial_lr_factor), float(discriminator_lr_factor)
        self.adam_betas = tuple(adam_betas)
        self.eval_landmark_size = eval_landmark_size
        self.report_dir, self.report_pairs, self.grid_size = report_dir, int(report_pairs), int(grid_size)
        self.eval_batch_size = int(eval_batch_size)
        for name in ("report_pairs", "grid_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                from exface.errors import ExfaceError

                raise ExfaceError(f"{name} must be at least 1, got {getattr(self, name)}",
                                  where=f"model.init_args.{name}", fix=f"set {name} to 1 or more")
        self._val: dict[str, list[Tensor]] = {}
        if identity_center < 0:
            raise ValueError(f"identity_center must be >= 0, got {identity_center}")
        self.identity_center = int(identity_center)
        self.register_buffer("identity_mean", torch.zeros(identity_embedder.embedding_dim))
        # first seed of the samples identity_mean was fitted on (-1: not fitted), kept in checkpoints
        self.register_buffer("identity_mean_seed", torch.tensor(-1, dtype=torch.long))

    # ---------------------------------------------------------------- parts
    def train(self, mode: bool = True) -> "DisentangleModule":
        """Frozen networks stay in eval mode (batch-norm statistics never change)."""
        super().train(mode)
        for name in FROZEN:
            part = getattr(self, name, None)
            if part is not None:
                part.eval()
        return self

    def trainable_generator_parameters(self) -> list[nn.Parameter]:
        return [*self.attribute_encoder.parameters(), *self.mapper.parameters()]

    def latents(self, seeds: Tensor) -> Tensor:
        """Latents ``[N, latent_dim]`` of the generator's prior for integer seeds (w: mapped with its truncation)."""
        z = torch.cat([self.generator.sample_z(1, seed=int(s), device=self.device) for s in seeds.tolist()])
        return z if self.space == "z" else self.generator.to_w(z)

    def render(self, latent: Tensor) -> Tensor:
        return self.generator.synthesize(latent, space=self.space)

    def embed(self, images: Tensor) -> Tensor:
        """Unit identity embeddings (centred on :attr:`identity_mean` when ``identity_center``)."""
        e = self.identity_embedder(self.identity_aligner(images))
        if self.identity_center:
            e = F.normalize(e - self.identity_mean, dim=-1)
        return e

    @torch.no_grad()
    def fit_identity_mean(self, batch_size: int = 64) -> None:
        """Set :attr:`identity_mean` from ``identity_center`` generator samples (a no-op when off or set)."""
        if not self.identity_center or bool(self.identity_mean.abs().sum() > 0):
            return
        from exface.disentangle.datamodule import CENTER_SEED

        seeds = torch.arange(CENTER_SEED, CENTER_SEED + self.identity_center)
        embs = [self.identity_embedder(self.identity_aligner(self.render(self.latents(seeds[i:i + batch_size]))))
                for i in range(0, len(seeds), batch_size)]
        self.identity_mean.copy_(torch.cat(embs).mean(0))
        self.identity_mean_seed.fill_(CENTER_SEED)

    def on_fit_start(self) -> None:
        if self.report_dir and self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            # the report written at the end must not be refused after the training: check its folder now
            from exface.disentangle.evaluation import refuse_other_disentangle_report

            refuse_other_disentangle_report(self.report_dir, self._report_settings(identity_mean=False),
                                            self.report_pairs, *self.judges())
        self.fit_identity_mean()

    def landmarks_160(self, images: Tensor) -> Tensor:
        return landmark_frame(self.landmarks(images), images.shape[-1], self.landmark_frame_size)

    def forward(self, id_images: Tensor, attr_images: Tensor) -> Tensor:
        """Mapped latents ``[N, latent_dim]`` for identity and attribute images (generator-aligned, [-1, 1])."""
        return self.mapper(self.embed(id_images), self.attribute_encoder(attr_images))

    @torch.no_grad()
    def swap(self, id_images: Tensor, attr_images: Tensor) -> Tensor:
        """Images ``[N, 3, R, R]`` with the identity of ``id_images`` and the attributes of ``attr_images``."""
        return self.render(self(id_images, attr_images))

    # ---------------------------------------------------------------- training
    def configure_optimizers(self):
        g = self.trainable_generator_parameters()
        opt_g = torch.optim.Adam(g, lr=self.lr, betas=self.adam_betas)
        opt_g_adv = torch.optim.Adam(g, lr=self.lr * self.adversarial_lr_factor, betas=self.adam_betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr * self.discriminator_lr_factor,
                                 betas=self.adam_betas)
        return [opt_g, opt_g_adv, opt_d]

    def losses(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor, bool]:
        """The generator-side losses of one batch (weighted terms), the mapped latents, and whether it is cross."""
        k = int(batch["index"])
        cross = k % self.cross_every == 0
        with torch.no_grad():
            id_lat = self.latents(batch["id_seed"])
            attr_lat = self.latents(batch["attr_seed"]) if cross else id_lat
            id_img = self.render(id_lat)
            attr_img = self.render(attr_lat) if cross else id_img
            id_emb = self.embed(id_img)
            attr_lmk = self.landmarks_160(attr_img) if self.w["landmark"] else None
        fake = self.mapper(id_emb, self.attribute_encoder(attr_img))
        out = self.render(fake)
        id_view, lmk_view = out, out
        if self.loss_views != "none" and (self.w["id"] or self.w["landmark"]):
            gen = torch.Generator().manual_seed(VIEW_SEED + k)
            view, theta = random_views(out, gen, flip=self.loss_views == "identity")
            id_view = view
            if self.loss_views == "both":
                lmk_view = view
                if attr_lmk is not None:
                    attr_lmk = points_in_views(attr_lmk, theta, self.landmark_frame_size, out.shape[-1])
        terms: dict[str, Tensor] = {}
        if self.w["id"]:
            terms["id"] = self.w["id"] * identity_loss(self.embed(id_view), id_emb)
        if self.w["landmark"]:
            terms["landmark"] = self.w["landmark"] * landmark_loss(self.landmarks_160(lmk_view), attr_lmk,
                                                                   self.landmark_first)
        if not cross and self.w["pixel"]:
            terms["pixel"] = self.w["pixel"] * self.pixel_loss(out, attr_img)
        if not cross and self.w["latent"]:
            terms["latent"] = self.w["latent"] * (fake - attr_lat).pow(2).mean()
        return terms, fake, cross

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        opt_g, opt_g_adv, opt_d = self.optimizers()
        k = int(batch["index"])
        adversarial = self.w["adversarial"] > 0 and k % self.adversarial_every == 0
        params = self.trainable_generator_parameters()
        terms, fake, cross = self.losses(batch)
        total = sum(terms.values())
        n = len(batch["id_seed"])

        # Both generator-side gradients are taken at the same parameters, then applied by
        # their own Adam (the reference's g_optimizer and g_gan_optimizer).
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(total, retain_graph=adversarial)
        if adversarial:
            main_grads = [None if p.grad is None else p.grad.clone() for p in params]
            opt_g.zero_grad(set_to_none=True)
            g_adv = self.w["adversarial"] * generator_adversarial_loss(self.discriminator(fake))
            self.manual_backward(g_adv)
            adv_grads = [p.grad for p in params]
            for p, g in zip(params, main_grads):
                p.grad = g
        opt_g.step()
        if adversarial:
            for p, g in zip(params, adv_grads):
                p.grad = g
            opt_g_adv.step()
            opt_g_adv.zero_grad(set_to_none=True)
            with torch.no_grad():
                real = self.latents(batch["real_seed"])
            opt_d.zero_grad(set_to_none=True)
            d_loss = self.w["adversarial"] * discriminator_loss(self.discriminator(real), self.discriminator(fake.detach()))
            r1 = r1_penalty(self.discriminator, real, self.r1_gamma) if self.r1_gamma else torch.zeros((), device=self.device)
            self.manual_backward(d_loss + r1)
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
            self.log_dict({"train/g_adversarial": g_adv.detach(), "train/d_loss": d_loss.detach(), "train/r1": r1.detach()},
                          batch_size=n)
        kind = "cross" if cross else "same"
        self.log_dict({f"train/{kind}_{name}": v.detach() for name, v in terms.items()}, batch_size=n)
        self.log(f"train/{kind}_total", total.detach(), prog_bar=True, batch_size=n)
        # time per batch (process CPU time counts every thread): what "fits in N minutes" is measured by
        self.log_dict({"train/batch_wall_s": time.perf_counter() - wall0, "train/batch_cpu_s": time.process_time() - cpu0,
                       "train/batch_index": float(k)}, batch_size=n)

    # ---------------------------------------------------------------- evaluation
    def judges(self) -> tuple[list[IdentityJudge], list[LandmarkJudge]]:
        """The loss networks (marked dependent) and the evaluation networks given."""
        ids = [IdentityJudge(f"{type(self.identity_embedder).__name__}-loss", self.embed, False)]
        if self.eval_embedder is not None:
            emb, aligner = self.eval_embedder, self.eval_aligner
            ids.append(IdentityJudge(type(emb).__name__, lambda x: emb(aligner(x)), True))
        lmks = [LandmarkJudge(f"{type(self.landmarks).__name__}-loss", self.landmarks, False)]
        if self.eval_landmarks is not None:
            src, size = self.eval_landmarks, self.eval_landmark_size

            def judge(x: Tensor) -> Tensor:
                if size is None or size == x.shape[-1]:
                    return src(x)
                up = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
                return src(up) * (x.shape[-1] / size)

            lmks.append(LandmarkJudge(type(src).__name__, judge, True))
        return ids, lmks

    @torch.no_grad()
    def evaluate_seeds(self, id_seeds: Tensor, attr_seeds: Tensor) -> dict[str, Tensor]:
        """Per-pair metrics (mapper and both corners) and same-image reconstruction for seed pairs."""
        ids, lmks = self.judges()
        id_img, attr_img = self.render(self.latents(id_seeds)), self.render(self.latents(attr_seeds))
        res = pair_metrics(self.swap(id_img, attr_img), id_img, attr_img, ids, lmks)
        res.update(reconstruction_metrics(self.swap(id_img, id_img), id_img, ids))
        return res

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        for k, v in self.evaluate_seeds(batch["id_seed"], batch["attr_seed"]).items():
            self._val.setdefault(k, []).append(v.cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        s = summarize({k: torch.cat(v) for k, v in self._val.items()})
        self._val = {}
        keep = {f"val/{k}": v["mean"] for k, v in s.items() if k.startswith(("mapper/", "recon/"))}
        self.log_dict(keep, sync_dist=True)

    @torch.no_grad()
    def report(self, out_dir: str | Path, pairs: int | None = None, settings: dict | None = None) -> dict:
        """Evaluate ``pairs`` held-out pairs (and as many same-image pairs), write the report to ``out_dir``."""
        from exface.disentangle.datamodule import held_out_seeds

        from exface.disentangle.evaluation import refuse_other_disentangle_report

        pairs = self.report_pairs if pairs is None else int(pairs)
        if pairs < 1 or self.eval_batch_size < 1:
            from exface.errors import ExfaceError

            raise ExfaceError(f"a report needs pairs >= 1 and eval_batch_size >= 1, got {pairs} and "
                              f"{self.eval_batch_size}", where="pairs / eval_batch_size", fix="pass 1 or more")
        settings = self._report_settings(settings)
        ids, lmks = self.judges()
        refuse_other_disentangle_report(out_dir, settings, pairs, ids, lmks)  # before the evaluation's minutes
        was_training = self.training
        self.eval()
        id_s, attr_s = held_out_seeds(pairs)
        per: dict[str, list[Tensor]] = {}
        t0 = time.perf_counter()
        for i in range(0, pairs, self.eval_batch_size):
            for k, v in self.evaluate_seeds(id_s[i:i + self.eval_batch_size], attr_s[i:i + self.eval_batch_size]).items():
                per.setdefault(k, []).append(v.cpu())
            log.info("disentangle report: %d/%d pairs evaluated (%.0f s)", min(pairs, i + self.eval_batch_size), pairs,
                     time.perf_counter() - t0)
        g = self.grid_size
        gid, gattr = held_out_seeds(g, offset=pairs)
        id_img, attr_img = self.render(self.latents(gid)), self.render(self.latents(gattr))
        outs = torch.stack([self.swap(id_img[r:r + 1].expand_as(attr_img), attr_img) for r in range(g)])
        result = write_report(out_dir, {k: torch.cat(v) for k, v in per.items()}, swap_grid(id_img, attr_img, outs),
                              ids, lmks, settings)
        self.train(was_training)
        return result

    def _report_settings(self, settings: dict | None = None, identity_mean: bool = True) -> dict:
        cfg = {k: v for k, v in self.hparams.items() if not isinstance(v, nn.Module)}
        base = {"hparams": cfg}
        if identity_mean:
            base["identity_mean_first_seed"] = int(self.identity_mean_seed)
        return {**base, **(settings or {})}

    def on_fit_end(self) -> None:
        if self.report_dir and self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            result = self.report(self.report_dir)
            log.info("disentanglement report in %s: %s", self.report_dir, result["verdict"])

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the trained networks only, and no network objects among the hyperparameters."""
        sd = checkpoint["state_dict"]
        for key in [k for k in sd if _is_frozen(k)]:
            del sd[key]
        hp = checkpoint.get("hyper_parameters")
        if isinstance(hp, dict):
            checkpoint["hyper_parameters"] = {k: v for k, v in hp.items() if not isinstance(v, nn.Module)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Take the frozen networks' weights from this module (they were built from the recipe);
        a checkpoint from before ``identity_center`` has no identity mean (it had none: zeros).

        A checkpoint whose identity mean has no recorded seed was centred on seeds from
        ``HELD_OUT_SEED``: the images of the first held-out pairs. It is kept (the mapper was
        trained with it), recorded as such and named in a warning. Resuming with other settings than
        the checkpoint's is refused (:func:`exface.resume_check.check_resume`)."""
        sd = checkpoint["state_dict"]
        for k, v in self.state_dict().items():
            if _is_frozen(k):
                sd.setdefault(k, v)
        sd.setdefault("identity_mean", torch.zeros_like(self.identity_mean))
        if "identity_mean_seed" not in sd:
            from exface.disentangle.datamodule import HELD_OUT_SEED

            fitted = bool(sd["identity_mean"].abs().sum() > 0)
            sd["identity_mean_seed"] = torch.tensor(HELD_OUT_SEED if fitted else -1, dtype=torch.long)
            if fitted:
                log.warning("this checkpoint's identity mean was fitted on seeds %d.. (before CENTER_SEED), the "
                            "images of the first held-out pairs; its report's loss-network identity figures are "
                            "centred on them. Retrain to centre on unseen samples.", HELD_OUT_SEED)
        # a resume with other settings is refused (the report's extent and folder only shape the report,
        # written once at the end of fit with this run's settings)
        from exface.resume_check import check_resume

        check_resume(self, checkpoint, may_differ=("report_dir", "report_pairs", "grid_size", "eval_batch_size"))


#: Frozen networks nested inside trained parts (LandmarkAttributeEncoder's landmark net).
FROZEN_NESTED = ("attribute_encoder.landmarks.",)


def _is_frozen(key: str) -> bool:
    """Whether a state-dict key belongs to a frozen network (rebuilt from the recipe, never stored)."""
    return key.split(".", 1)[0] in FROZEN or key.startswith(FROZEN_NESTED)


def _cli_given_hparams() -> bool:
    """True inside LightningCLI's instantiation (it hands over the recipe's config as hparams)."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - older/newer Lightning: fall back to leaving parts out
        return False
    return _given_hyperparameters.get() is not None

