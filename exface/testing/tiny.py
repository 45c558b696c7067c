"""Tiny deterministic test doubles of a generator, an identity embedder and a landmark source.

They are registered parts (``TinyGenerator``, ``TinyEmbedder``, ``TinyLandmarks``) so recipes and the CLI can
name them, but they are random networks built from a seed: fast stand-ins for pipeline
tests, never for measurements. Import this module (``import exface.testing.tiny``) before
a recipe names them, or use the full class path ``exface.testing.tiny.TinyGenerator``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.alignment.landmarks import LandmarkSource
from exface.detectors.base import Detections, FaceDetector
from exface.embedders.base import IdentityEmbedder
from exface.generators.base import Generator

__all__ = ["TinyGenerator", "TinyEmbedder", "TinyDetector", "TinyLandmarks"]


def _seeded_init(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=gen) / max(1, fan_in) ** 0.5)
    module.requires_grad_(False)


class TinyGenerator(Generator):
    """A random z -> w -> image network: z ``[N, z_dim]`` to ``[N, 3, resolution, resolution]`` in [-1, 1].

    Has a mapping network (so spaces z and w, with ``truncation_psi`` toward the mean w of
    1000 seeded samples) and a two-layer upsampling conv synthesis.
    """

    latent_spaces: ClassVar[tuple[str, ...]] = ("z", "w")

    def __init__(self, z_dim: int = 8, w_dim: int | None = None, resolution: int = 16,
                 truncation_psi: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
        self.z_dim, self.w_dim, self.num_ws, self.resolution = int(z_dim), int(w_dim or z_dim), 1, int(resolution)
        self.truncation_psi = float(truncation_psi)
        self.seed = int(seed)
        self.mapping = nn.Sequential(nn.Linear(self.z_dim, self.w_dim), nn.Tanh(), nn.Linear(self.w_dim, self.w_dim))
        self.const = nn.Linear(self.w_dim, 16 * 4 * 4)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 3, 3, padding=1)
        _seeded_init(self, self.seed)
        with torch.no_grad():
            z = torch.randn(1000, self.z_dim, generator=torch.Generator().manual_seed(self.seed + 1))
            self.register_buffer("w_avg", self.mapping(z).mean(0))

    def to_w(self, z: Tensor, truncation_psi: float | None = None, truncation_cutoff: int | None = None) -> Tensor:
        psi = self.truncation_psi if truncation_psi is None else float(truncation_psi)
        w = self.mapping(z.to(self.device, torch.float32))
        return self.w_avg + psi * (w - self.w_avg)

    def synthesize(self, latent: Tensor, space: str = "z", **kwargs: Any) -> Tensor:
        self.check_space(space)
        w = self.to_w(latent) if space == "z" else latent.to(self.device, torch.float32)
        x = self.const(w).view(-1, 16, 4, 4)
        while x.shape[-1] < self.resolution:
            x = F.leaky_relu(self.conv1(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
        return torch.tanh(3.0 * self.conv2(x))


class TinyEmbedder(IdentityEmbedder):
    """A random conv + linear embedder on ``input_size`` crops -> ``embedding_dim`` unit vectors."""

    def __init__(self, input_size: tuple[int, int] = (16, 16), embedding_dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.embedding_dim = int(embedding_dim)
        self.seed = int(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, self.embedding_dim)
        _seeded_init(self, self.seed)

    def embed_raw(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 4)
        return self.fc(x.flatten(1))


class TinyDetector(FaceDetector):
    """Finds the faces it is told to: the relative ``boxes`` in every image brighter than
    ``min_mean`` (mean pixel in [-1, 1]); darker images have no face. For pipeline tests."""

    def __init__(self, boxes: tuple[tuple[float, float, float, float], ...] = ((0.25, 0.25, 0.75, 0.75),),
                 min_mean: float = -0.9) -> None:
        super().__init__()
        self.boxes = tuple(tuple(float(v) for v in b) for b in boxes)
        self.min_mean = float(min_mean)

    def detect(self, images: Tensor) -> list[Detections]:
        h, w = images.shape[-2:]
        rel = torch.tensor(self.boxes, dtype=torch.float32).view(-1, 4)
        pix = rel * torch.tensor([w, h, w, h], dtype=torch.float32)
        scores = torch.linspace(0.9, 0.6, len(rel))
        out = []
        for img in images:
            keep = float(img.mean()) > self.min_mean
            out.append(Detections(pix if keep else pix[:0], scores if keep else scores[:0]))
        return out


class TinyLandmarks(LandmarkSource):
    """A random, differentiable conv + linear net: images -> 68 (ibug-scheme) points inside the image."""

    scheme = "ibug68"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 136)
        _seeded_init(self, self.seed)

    def forward(self, images: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(F.relu(self.conv(images)), 4).flatten(1)
        rel = torch.sigmoid(4.0 * self.fc(x)).view(-1, 68, 2)
        return rel * torch.tensor([images.shape[-1], images.shape[-2]], dtype=rel.dtype, device=rel.device)
