"""Lightning wrapper for face-recognition training: a backbone plus a margin loss."""

from __future__ import annotations

from typing import Callable

import lightning.pytorch as pl
import torch
from torch import Tensor

from exface.embedders.base import IdentityEmbedder
from exface.losses.base import FRLoss
from exface.losses.partial_fc import exclude_partial_fc_from_ddp

__all__ = ["FaceRecognitionModule"]


class FaceRecognitionModule(pl.LightningModule):
    """Train an identity embedder with a margin loss (ArcFace, CosFace, PartialFC, plugins...).

    The loss is given without its sizes (``loss: {class_path: ArcFace, init_args: {s: 64}}``):
    it is built in :meth:`setup` with the backbone's ``embedding_dim`` and the datamodule's
    ``num_classes``. SGD with momentum and a polynomial decay, as arcface_torch trains.

    Args:
        backbone: the network to train (any registered IdentityEmbedder).
        loss: a margin loss class; called as ``loss(embedding_dim, num_classes)``.
        lr: base learning rate (arcface_torch: 0.1 for batch 512; scale with batch size).
        momentum: SGD momentum.
        weight_decay: L2 on backbone and class centres.
        warmup_steps: linear warm-up steps before the polynomial decay.
    """

    def __init__(self, backbone: IdentityEmbedder, loss: Callable[[int, int], FRLoss], lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 5e-4, warmup_steps: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self._loss_factory = loss
        self.loss: FRLoss | None = None
        self.lr, self.momentum, self.weight_decay, self.warmup_steps = lr, momentum, weight_decay, warmup_steps

    def setup(self, stage: str) -> None:
        if self.loss is None:
            dm = self.trainer.datamodule
            num_classes = getattr(dm, "num_classes", None)
            if num_classes is None:
                dm.setup(stage)
                num_classes = dm.num_classes
            self.loss = self._loss_factory(self.backbone.embedding_dim, num_classes)
            # PartialFC shards its centres across ranks: DDP must not average them.
            exclude_partial_fc_from_ddp(self)

    def forward(self, images: Tensor) -> Tensor:
        """Unnormalized embeddings of images in [-1, 1] RGB."""
        return self.backbone.embed_raw(self.backbone.preprocess(images))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = self.loss(self(images), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        emb = torch.nn.functional.normalize(self(images).float(), dim=1)
        centres = torch.nn.functional.normalize(self.loss_centres().float(), dim=1)
        acc = ((emb @ centres.T).argmax(1) == labels).float().mean()
        self.log("val/accuracy", acc, prog_bar=True, batch_size=len(labels))

    def loss_centres(self) -> Tensor:
        """The class-centre matrix ``[num_classes, embedding_dim]`` of the loss."""
        weight = getattr(self.loss, "weight", None)
        if weight is None:
            raise AttributeError(f"{type(self.loss).__name__} exposes no `weight` of class centres")
        return weight

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = self.warmup_steps

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.0, 1.0 - (step - warm) / max(1, total - warm)) ** 2

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
