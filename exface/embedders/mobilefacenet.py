"""MobileFaceNet identity embedder: the small backbone exface trains on CPU."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from exface.embedders.base import IdentityEmbedder
from exface.models.mobilefacenet import MobileFaceNet

__all__ = ["MobileFaceNetEmbedder"]


class MobileFaceNetEmbedder(IdentityEmbedder):
    """MobileFaceNet (:mod:`exface.models.mobilefacenet`), randomly initialized, to train.

    Args:
        embedding_dim: embedding size (paper 128).
        input_size: side (or square ``(H, W)``) of the crops the embedder takes (112: the ArcFace template crop that
            ``exface synthesize`` stores and that benchmarks cut).
        net_size: side the network runs at; crops of another size are resized to it
            (bilinear, antialiased) inside :meth:`embed_raw`, so training and evaluation use one
            resize. ``None``: ``input_size``. 64 trains about 3x faster on CPU than 112.
        width: channel multiplier. dropout: dropout before the embedding layer.

    Input is RGB ``(x - 127.5) / 127.5``, as arcface_torch trains.
    """

    def __init__(self, embedding_dim: int = 128, input_size: int | tuple[int, int] = 112, net_size: int | None = None,
                 width: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding_dim, self.width, self.dropout = int(embedding_dim), float(width), float(dropout)
        if not isinstance(input_size, int):
            if len(input_size) != 2 or input_size[0] != input_size[1]:
                raise ValueError(f"MobileFaceNet takes square crops; input_size {tuple(input_size)} is not square")
            input_size = int(input_size[0])
        self.input_size = (int(input_size), int(input_size))
        self.net_size = int(net_size or input_size)
        self.net = MobileFaceNet(self.embedding_dim, self.net_size, self.width, dropout=self.dropout)

    def embed_raw(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.net_size or x.shape[-2] != self.net_size:
            x = F.interpolate(x, size=(self.net_size, self.net_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.net_size)
        return self.net(x)
