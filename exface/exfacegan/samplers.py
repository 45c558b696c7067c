"""Latent samplers: how the images of one synthetic identity are drawn from a boundary.

Every sampler works in the raw latent space the boundaries were learned in
(:attr:`Boundaries.space`) and measures sides with :meth:`Boundaries.signed_distance`,
where the positive side (``n . x + b > 0``) is the reference's identity (label 1 in
:func:`exface.exfacegan.labeling.label_identities`).

Each boundary gives one identity on its positive side and, with ``both_sides``, a
second one on its negative side (``side=-1``), as in ExFaceGAN. A sampler is called as
``sampler.sample(boundaries, index, side, reference, num, rng, gan)`` and returns
``[num, d]`` latents; ``rng`` is a seeded :class:`torch.Generator`, so the same work item
gives the same latents on any device split.

Baselines for the quality report live here too: :class:`RandomSampler` (independent
random latents: the chance floor) and :class:`NoiseSampler` (reference + Gaussian noise).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch
from torch import Tensor

from exface.boundaries.base import Boundaries
from exface.generators.base import Generator
from exface.registry import Registrable

__all__ = [
    "LatentSampler",
    "ExFaceGANSampler",
    "DistanceSampler",
    "NoiseSampler",
    "RandomSampler",
    "TruncationCenter",
    "check_truncation_center",
    "random_latents",
    "render_latents",
    "sphere_project",
]


def random_latents(gan: Generator, num: int, space: str, rng: torch.Generator) -> Tensor:
    """``num`` random latents of ``space`` drawn from ``rng``: z ~ N(0, I), or w = mapping(z) *untruncated*.

    Latents are stored and moved untruncated, as ExFaceGAN stores them; truncation is
    applied when they are rendered (:func:`render_latents`).
    """
    z = torch.randn(num, gan.z_dim, generator=rng)
    if space == "z":
        return z
    if space == "w":
        with torch.no_grad():
            return gan.to_w(z.to(gan.device), truncation_psi=1.0).float().cpu()
    raise ValueError(f"sampling supports the latent spaces 'z' and 'w', not {space!r}")


#: The point truncation pulls w toward: the checkpoint's average w (StyleGAN's truncation
#: trick), or the origin (what ExFaceGAN's released code does, see :func:`render_latents`).
TruncationCenter = Literal["w_avg", "zero"]


def check_truncation_center(center: str) -> None:
    if center not in ("w_avg", "zero"):
        raise ValueError(f"truncation_center must be 'w_avg' (the checkpoint's average w) or 'zero' "
                         f"(ExFaceGAN's code), got {center!r}")


@torch.no_grad()
def render_latents(gan: Generator, latents: Tensor, space: str, truncation_psi: float | None = None,
                   truncation_cutoff: int | None = None, truncation_center: TruncationCenter = "w_avg") -> Tensor:
    """Images of latents as the bank's images were made: truncation applied at render time.

    ``z`` goes through the generator's own mapping and truncation. An untruncated ``w`` is
    broadcast to the ``num_ws`` layers (a ``w+`` latent already has them) and the first
    ``truncation_cutoff`` of them (all with None) are pulled toward ``w_avg`` by
    ``1 - truncation_psi``, exactly what the generator does to ``mapping(z)`` (ExFaceGAN: psi
    0.7 on the first 8 layers). So a stored latent re-renders the image that was embedded.

    ``truncation_center="zero"`` pulls toward the origin instead: ``psi * w`` on those layers.
    That is what ExFaceGAN's released code does: its ``TruncationModule``
    (``generators/stylegan3_generator.py``) registers ``w_avg`` as a zero buffer that nothing
    fills from the checkpoint, so its "truncation" scales w by 0.7 on the first 8 layers
    rather than moving it toward the checkpoint's average w. A deviation from StyleGAN's
    truncation trick, kept only to reproduce their images (the paper recipes set it); ``z``
    is then mapped untruncated and rendered as that w.
    """
    check_truncation_center(truncation_center)
    latents = latents.to(gan.device)
    truncating = truncation_psi is not None and float(truncation_psi) != 1.0
    if truncating and truncation_center == "zero" and space == "z":
        latents, space = gan.to_w(latents, truncation_psi=1.0), "w"
    if space not in ("w", "w+") or not truncating:
        return gan.synthesize(latents, space=space)
    psi = float(truncation_psi)
    center = gan.w_avg.to(latents.dtype)
    if truncation_center == "zero":
        center = torch.zeros_like(center)
    if space == "w" and ("w+" not in gan.latent_spaces or getattr(gan, "num_ws", 1) == 1):
        return gan.synthesize(center.lerp(latents, psi), space="w")
    ws = latents.clone() if space == "w+" else latents.unsqueeze(1).repeat(1, gan.num_ws, 1)
    cut = ws.shape[1] if truncation_cutoff is None else int(truncation_cutoff)
    ws[:, :cut] = center.lerp(ws[:, :cut], psi)
    return gan.synthesize(ws, space="w+")


def sphere_project(x: Tensor) -> Tensor:
    """Scale each row to norm sqrt(d), where N(0, I) z vectors concentrate (ExFaceGAN's z step)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(x.shape[-1])


class LatentSampler(Registrable, ABC):
    """Draws the latents of one identity (boundary ``index``, ``side`` +1 or -1).

    A registered part (kind ``samplers``): a recipe names it as
    ``sampler: {class_path: ExFaceGANSampler, init_args: {max_offset: 30}}``.
    """

    registry_kind: ClassVar[str] = "samplers"
    name: ClassVar[str] = ""

    @abstractmethod
    def sample(
        self,
        boundaries: Boundaries,
        index: int,
        side: int,
        reference: Tensor,
        num: int,
        rng: torch.Generator,
        gan: Generator,
    ) -> Tensor:
        """``[num, d]`` untruncated latents in ``boundaries.space``; ``reference`` is the boundary's reference ``[d]``."""

    def describe(self) -> dict:
        """What ``synthesis.json`` records: the short name, the class and the init arguments."""
        return {"sampler": self.name, "class": type(self).__name__,
                **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class ExFaceGANSampler(LatentSampler):
    """ExFaceGAN's sampling (Boutros et al., IJCB 2023; ``random_sampling`` in fdbtrs/ExFaceGAN).

    What their ``create_dataset.py`` does: start from the boundary's *reference* latent
    ``x_r`` (not a random latent), draw an offset ``o ~ U(min_offset, max_offset)`` per
    sample *and per dimension*, and take ``x = x_r + side * (o * n)`` (elementwise product
    with the unit normal ``n``). The move along the normal is ``sum_j o_j n_j^2`` in
    ``[min_offset, max_offset]`` (so samples go deeper into the side); the component off the
    normal, ``o * n - (sum o n^2) n``, is what varies between samples. The negative side
    (``x_r - o * n``) becomes a second identity. In z space the result is rescaled to norm
    sqrt(d) (``normalize_z``), as theirs is. Their default ``max_offset`` is 30 in
    StyleGAN's w space.

    Deviation: their boundaries point away from the identity (they subtract for the
    identity side); exface's point toward it (positive = identity), so the identity side
    here is ``+``. The z rescaling can move a latent across a boundary with a non-zero
    offset ``b``; this is their behaviour, kept.
    """

    name = "exfacegan"

    def __init__(self, min_offset: float = 0.0, max_offset: float = 30.0, normalize_z: bool = True) -> None:
        if not 0 <= min_offset <= max_offset:
            raise ValueError(f"need 0 <= min_offset <= max_offset, got {min_offset}, {max_offset}")
        self.min_offset = float(min_offset)
        self.max_offset = float(max_offset)
        self.normalize_z = bool(normalize_z)

    def sample(self, boundaries, index, side, reference, num, rng, gan):
        n = boundaries.normals[index].float()
        d = n.shape[0]
        o = self.min_offset + (self.max_offset - self.min_offset) * torch.rand(num, d, generator=rng)
        x = reference.float().unsqueeze(0) + float(side) * o * n
        if boundaries.space == "z" and self.normalize_z:
            x = sphere_project(x)
        return x


class DistanceSampler(LatentSampler):
    """A random latent moved along the unit normal to a chosen signed distance.

    ``x' = x + (t - s(x)) n`` with ``t = side * (distance + jitter * eps)``, ``eps ~ N(0, 1)``
    and ``s`` the signed distance in raw space, so every sample lies exactly at ``t`` from
    the boundary (the hyperplane is the only thing the identity is defined by). ``x`` is a
    fresh random latent of the boundary's space (:func:`random_latents`: ``w`` is the mapping
    network's *untruncated* output, the space the bank stores and the boundaries were fit
    in; the bank's truncation is applied when the sample is rendered, by
    :func:`render_latents`). No sphere projection: that would change the distance.
    """

    name = "distance"

    def __init__(self, distance: float = 3.0, jitter: float = 0.0) -> None:
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        self.distance = float(distance)
        self.jitter = float(jitter)

    def sample(self, boundaries, index, side, reference, num, rng, gan):
        x = random_latents(gan, num, boundaries.space, rng)
        target = self.distance + self.jitter * torch.randn(num, generator=rng)
        target = float(side) * target
        n = boundaries.normals[index].float()
        s = boundaries.signed_distance(x, index)
        return x + (target - s).unsqueeze(1) * n


class NoiseSampler(LatentSampler):
    """Baseline: the identity's anchor latent plus isotropic Gaussian noise of std ``sigma``.

    The anchor is the reference latent on the positive side and its mirror image across
    the boundary on the negative side (see :func:`anchor_latent`). With ``normalize_z`` (z
    space) the result is rescaled to norm sqrt(d), like ExFaceGAN's samples.
    """

    name = "noise"

    def __init__(self, sigma: float = 0.5, normalize_z: bool = True) -> None:
        self.sigma = float(sigma)
        self.normalize_z = bool(normalize_z)

    def sample(self, boundaries, index, side, reference, num, rng, gan):
        anchor = anchor_latent(boundaries, index, side, reference)
        x = anchor.unsqueeze(0) + self.sigma * torch.randn(num, anchor.shape[0], generator=rng)
        if boundaries.space == "z" and self.normalize_z:
            x = sphere_project(x)
        return x


class RandomSampler(LatentSampler):
    """Baseline: ``num`` independent random latents (no identity at all: the chance floor)."""

    name = "random"

    def sample(self, boundaries, index, side, reference, num, rng, gan):
        return random_latents(gan, num, boundaries.space, rng)


def anchor_latent(boundaries: Boundaries, index: int, side: int, reference: Tensor) -> Tensor:
    """The latent an identity is compared with: the reference (side +1) or its mirror (side -1).

    The mirror ``x_r - 2 s(x_r) n`` is the reflection across the hyperplane: the negative
    side's identity has no reference image of its own, and this point is as deep on its side
    as the reference is on the other.
    """
    reference = reference.float()
    if side > 0:
        return reference
    s = boundaries.signed_distance(reference.unsqueeze(0), index)[0]
    return reference - 2.0 * s * boundaries.normals[index].float()
