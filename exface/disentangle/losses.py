"""The losses of identity/attribute disentanglement, as the paper's code computes them.

Reference: Nitzan et al., "Face Identity Disentanglement via Latent Space Mapping" (arXiv
2005.07728), code YotamNitzan/ID-disentanglement, ``trainer.py``. Every function takes
batched tensors and returns a scalar; the weights live in the Lightning module (recipe
options), not here.

- :func:`identity_loss`: mean absolute difference of unit identity embeddings
  (``tf.keras.losses.MAE`` averaged over the batch).
- :func:`landmark_loss`: mean squared difference of landmark coordinates (the reference
  averages ``MSE`` over (x, y), points and batch; its points are the 51 inner points 17..67,
  in pixels of its landmark net's 160x160 input: :func:`landmark_frame` rescales any image's
  pixel coordinates to that frame so the paper's weight 0.001 keeps its meaning).
- :class:`PixelLoss`: ``fraction_ms_ssim * (1 - MS-SSIM) + (1 - fraction_ms_ssim) * L1``
  (0.84 / 0.16 in the reference), on images moved to [0, 1]. The L1 term is weighted per pixel
  by the reference's inverse Gaussian mask (more weight away from the face centre, sigma
  ``80 / 256`` of the side) normalized to sum 1, i.e. a weighted mean per image. Deviations:
  the reference sums that mean over the batch (``Reduction.SUM``), exface averages it, so the
  weight does not grow with the batch size; MS-SSIM is torchmetrics' with configurable
  scales, because 5 scales with an 11-px window need images of at least 160 px
  (:data:`MS_SSIM_BETAS_3` is what the 64-px DCGAN recipe uses).
- :func:`random_views` / :func:`points_in_views`: an exface extra, not the paper's. Random
  similarity transforms (plus a little noise) of the output that the identity and landmark
  losses may see instead of the output itself: an expectation over transformations, so that
  the mapper is not paid for changes that only one exact rendering makes the loss network read
  as the identity or the pose (per-pair latent search on the 64-px DCGAN finds such changes:
  ``benchmarks/disentangle_latent_oracle.py``).
- :func:`generator_adversarial_loss` / :func:`discriminator_loss`: the non-saturating logistic
  GAN loss on latents (binary cross-entropy on logits) and :func:`r1_penalty`,
  ``gamma / 2 * E ||grad_x D(x)||^2`` on real latents.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MS_SSIM_BETAS_5",
    "MS_SSIM_BETAS_3",
    "identity_loss",
    "landmark_frame",
    "landmark_loss",
    "inverse_gaussian_mask",
    "PixelLoss",
    "random_views",
    "points_in_views",
    "generator_adversarial_loss",
    "discriminator_loss",
    "r1_penalty",
]

#: The standard 5-scale MS-SSIM exponents (Wang et al. 2003; TF's and torchmetrics' default).
MS_SSIM_BETAS_5 = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: The first three of those, renormalized to sum 1: the finest three scales (64, 32, 16 px on
#: 64-px images), each at least as large as the 11-px window.
MS_SSIM_BETAS_3 = tuple(round(b / sum(MS_SSIM_BETAS_5[:3]), 4) for b in MS_SSIM_BETAS_5[:3])


def identity_loss(pred_embedding: Tensor, target_embedding: Tensor) -> Tensor:
    """Mean absolute difference of (unit) identity embeddings ``[N, D]``; the target carries no gradient."""
    return (pred_embedding - target_embedding.detach()).abs().mean()


def landmark_frame(points: Tensor, image_size: int, frame: float = 160.0) -> Tensor:
    """Pixel landmarks of ``image_size``-px images -> pixels of the same image resized to ``frame`` px."""
    return points * (float(frame) / float(image_size))


def random_views(images: Tensor, generator: torch.Generator, flip: bool = True, rotate_deg: float = 5.0,
                 scale: float = 0.07, shift: float = 0.025, noise: float = 0.02) -> tuple[Tensor, Tensor]:
    """A random view of each image ``[N, C, H, W]`` and its map ``theta`` ``[N, 2, 3]``.

    Each view is a similarity transform of its image (rotation up to +-``rotate_deg``, scale
    1 +- ``scale``, shift up to +-``shift`` of the side, mirrored half the time when ``flip``;
    reflection padding) plus Gaussian noise of std ``noise``, drawn from ``generator`` (CPU) so
    that a seeded run draws the same views. A view's pixel at normalized position ``p`` (in
    [-1, 1], ``align_corners=False``) shows the image's point ``theta @ (p, 1)``. Differentiable
    in ``images``.
    """
    n = len(images)
    u = torch.rand(n, 5, generator=generator)
    ang = (u[:, 0] - 0.5) * 2 * (rotate_deg * torch.pi / 180.0)
    sc = 1 + (u[:, 1] - 0.5) * 2 * scale
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = sc * torch.cos(ang) * sign, -sc * torch.sin(ang)
    theta[:, 1, 0], theta[:, 1, 1] = sc * torch.sin(ang) * sign, sc * torch.cos(ang)
    theta[:, :, 2] = (u[:, 2:4] - 0.5) * 2 * (2 * shift)  # normalized units: the side is 2
    theta = theta.to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if noise:
        views = views + noise * torch.randn(images.shape, generator=generator).to(images)
    return views, theta


def points_in_views(points: Tensor, theta: Tensor, side: float, pixels: int | None = None) -> Tensor:
    """Points ``[N, K, 2]`` (x, y in a ``side``-px frame of the image) moved into the views
    :func:`random_views` made with ``theta`` (its inverse map), in the same frame.

    ``pixels``: the image's own size in pixels when the points follow exface's landmark
    convention (pixel centres at integers of the ``pixels``-px image, scaled to the frame by
    :func:`landmark_frame`): half a pixel is then added before the map and taken off after it.
    None: 0 is the image's edge. Solved in float32 whatever the dtype of ``theta``.
    """
    h = 0.0 if pixels is None else 0.5 * float(side) / float(pixels)
    p = (points.float() + h) * (2.0 / side) - 1.0
    th = theta.float()
    a, t = th[:, :, :2], th[:, :, 2]
    q = torch.linalg.solve(a, (p - t[:, None, :]).transpose(1, 2)).transpose(1, 2)
    return ((q + 1.0) * (side / 2.0) - h).to(points.dtype)


def landmark_loss(pred_points: Tensor, target_points: Tensor, first: int = 17) -> Tensor:
    """Mean squared difference of landmarks ``[N, K, 2]`` over points ``first..K-1``, coordinates and batch.

    ``first=17`` keeps the 51 inner points of the 68-point scheme (the jaw line, points 0..16,
    is dropped as in the reference: it belongs to the head's shape, hence partly to identity).
    """
    if pred_points.shape != target_points.shape:
        raise ValueError(f"landmark shapes differ: {tuple(pred_points.shape)} vs {tuple(target_points.shape)}")
    return (pred_points[:, first:] - target_points[:, first:].detach()).pow(2).mean()


def inverse_gaussian_mask(size: int, sigma: float) -> Tensor:
    """The reference's pixel weights ``[size, size]``: ``max(g) + min(g) - g`` for a centred
    Gaussian ``g`` of std ``sigma`` px, normalized to sum 1 (low weight at the face centre,
    never zero)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g1 = torch.exp(-0.5 * (coords / sigma) ** 2)
    g = torch.outer(g1, g1)
    g = g / g.sum()
    inv = g.max() + g.min() - g
    return (inv / inv.sum()).float()


class PixelLoss(nn.Module):
    """``fraction_ms_ssim * (1 - MS-SSIM) + (1 - fraction_ms_ssim) * masked L1`` of images in [-1, 1].

    Args:
        fraction_ms_ssim: share of the MS-SSIM term (0.84 in the reference).
        betas: MS-SSIM scale exponents, one per scale (:data:`MS_SSIM_BETAS_5` for >= 160-px
            images, :data:`MS_SSIM_BETAS_3` for 64-px images).
        kernel_size: MS-SSIM Gaussian window (11 as in TF/torchmetrics).
        sigma: std of that window (1.5).
        mask: ``gaussian`` (the reference's inverse Gaussian pixel weights, sigma
            ``80 / 256`` of the side) or ``uniform``.
    """

    def __init__(self, fraction_ms_ssim: float = 0.84, betas: Sequence[float] = MS_SSIM_BETAS_5,
                 kernel_size: int = 11, sigma: float = 1.5, mask: Literal["gaussian", "uniform"] = "gaussian") -> None:
        super().__init__()
        if not 0.0 <= fraction_ms_ssim <= 1.0:
            raise ValueError(f"fraction_ms_ssim must be in [0, 1], got {fraction_ms_ssim}")
        if mask not in ("gaussian", "uniform"):
            raise ValueError(f"mask must be 'gaussian' or 'uniform', got {mask!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive number, got {kernel_size}")
        self.fraction_ms_ssim = float(fraction_ms_ssim)
        self.betas = tuple(float(b) for b in betas)
        self.kernel_size, self.sigma, self.mask = int(kernel_size), float(sigma), mask

    def min_size(self) -> int:
        """Smallest image side torchmetrics' MS-SSIM accepts with these scales and window."""
        return (self.kernel_size - 1) * max(1, len(self.betas) - 1) ** 2

    def check_size(self, size: int) -> None:
        if self.fraction_ms_ssim > 0 and size < self.min_size():
            raise ValueError(
                f"MS-SSIM with {len(self.betas)} scales and a {self.kernel_size}-px window needs images of at "
                f">= {self.min_size()} px, these are {size} px: give fewer betas (e.g. the 3-scale "
                f"{MS_SSIM_BETAS_3}) or a smaller kernel_size"
            )

    def weights(self, height: int, width: int, device: torch.device) -> Tensor:
        if self.mask == "uniform" or height != width:
            return torch.full((height, width), 1.0 / (height * width), device=device)
        return inverse_gaussian_mask(height, 80.0 * height / 256.0).to(device)

    def ms_ssim(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-image MS-SSIM ``[N]`` of images in [-1, 1] (compared in [0, 1])."""
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

        self.check_size(min(pred.shape[-2:]))
        return ms_ssim((pred + 1) / 2, (target + 1) / 2, kernel_size=self.kernel_size, sigma=self.sigma,
                       data_range=1.0, betas=self.betas, reduction="none")

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        target = target.detach()
        w = self.weights(pred.shape[-2], pred.shape[-1], pred.device)
        l1 = ((pred - target).abs().mean(1) / 2 * w).sum((-2, -1)).mean()  # /2: [-1, 1] -> [0, 1] units
        if self.fraction_ms_ssim == 0:
            return l1
        ssim = (1 - self.ms_ssim(pred, target)).mean()
        return self.fraction_ms_ssim * ssim + (1 - self.fraction_ms_ssim) * l1


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss ``-log sigmoid(D(fake))``, batch mean."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Logistic discriminator loss ``-log sigmoid(D(real)) - log(1 - sigmoid(D(fake)))`` (StyleGAN's D_logistic)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(discriminator: Callable[[Tensor], Tensor], real: Tensor, gamma: float = 10.0) -> Tensor:
    """R1 gradient penalty ``gamma / 2 * mean_i ||d D(x_i) / d x_i||^2`` on real samples (a graph is kept)."""
    real = real.detach().requires_grad_(True)
    with torch.enable_grad():
        out = discriminator(real)
        (grad,) = torch.autograd.grad(out.sum(), real, create_graph=True)
    return 0.5 * float(gamma) * grad.flatten(1).pow(2).sum(1).mean()

