"""The identity-embedder contract: aligned faces in, unit-length identity vectors out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.registry import Registrable
from exface.tensors import module_device

__all__ = ['IdentityEmbedder']


class IdentityEmbedder(Registrable, nn.Module, ABC):
    """A face-recognition network used as an identity embedder.

    Contract
    - Input to :meth:`forward`: aligned face crops, float ``[N, 3, H, W]``, RGB, in
      [-1, 1], with ``(H, W) == input_size``. The :class:`~exface.alignment.Aligner`
      in front of the embedder produces exactly that.
    - The network's own expectations are declared, not hidden: ``color_order`` ("RGB"
      or "BGR"), and ``mean``/``std`` applied to pixels in [0, 255] after the colour
      reorder (``x_net = (x_255[order] - mean) / std``). :meth:`preprocess` does that
      conversion from the common [-1, 1] RGB input.
    - Output: ``[N, embedding_dim]``, L2-normalized.
    """

    registry_kind: ClassVar[str] = "embedders"

    input_size: tuple[int, int] = (112, 112)
    embedding_dim: int = 512
    color_order: str = "RGB"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)

    @property
    def device(self) -> torch.device:
        return module_device(self)

    def preprocess(self, images: Tensor) -> Tensor:
        """[-1, 1] RGB -> the network's colour order and normalization."""
        x = (images + 1.0) * 127.5
        if self.color_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    @abstractmethod
    def embed_raw(self, x: Tensor) -> Tensor:
        """Network forward on preprocessed input; returns unnormalized embeddings."""

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != tuple(self.input_size):
            raise ValueError(
                f"{type(self).__name__} takes {tuple(self.input_size)} crops, got "
                f"{tuple(images.shape[-2:])}; put an Aligner (exface.alignment) in front of it"
            )
        return F.normalize(self.embed_raw(self.preprocess(images)).float(), dim=1)
