"""IResNet identity embedders: arcface_torch, ElasticFace and AdaFace backbones."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor

from exface.embedders.base import IdentityEmbedder
from exface.models.checkpoint_io import FORMATS, read_iresnet_checkpoint
from exface.models.iresnet import IRESNET_LAYERS, build_iresnet

__all__ = ["IResNetEmbedder"]

log = logging.getLogger(__name__)


class IResNetEmbedder(IdentityEmbedder):
    """insightface IResNet-18/34/50/100/200 (arcface_torch, ElasticFace, AdaFace checkpoints).

    Args:
        arch: ``r18``, ``r34``, ``r50``, ``r100`` or ``r200``; ``"auto"`` takes the depth
            from ``weights``. A checkpoint of another depth is an error naming both.
        weights: path of an arcface_torch ``backbone.pth``, an ElasticFace
            ``*backbone.pth`` (``module.`` prefix allowed) or an AdaFace ``.ckpt``.
            None builds a randomly initialized network (to train from scratch).
        checkpoint_format: ``auto`` (detect from the keys), ``arcface_torch``,
            ``elasticface`` or ``adaface``. Without weights it picks the layout.
        dropout: dropout before the embedding layer, for training (ExFaceGAN trains
            IResNet-50 with 0.4; arcface_torch uses 0).
        fp16: the trunk, final BN, flatten and dropout under autocast, the ``fc`` and
            ``features`` layers in float32 (arcface_torch's ``fp16``).

    Preprocessing follows each project's inference code: arcface_torch and ElasticFace
    take RGB ``(x - 127.5) / 127.5``; AdaFace takes BGR ``((x / 255) - 0.5) / 0.5``, the
    same numbers in the other channel order. The network is put in eval mode when
    weights are loaded.
    """

    def __init__(self, arch: str = "r50", weights: str | Path | None = None, checkpoint_format: str = "auto",
                 dropout: float = 0.0, fp16: bool = False) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if checkpoint_format not in FORMATS:
            raise ValueError(f"checkpoint_format must be one of {', '.join(FORMATS)}, got {checkpoint_format!r}")
        if arch != "auto" and arch not in IRESNET_LAYERS:
            raise ValueError(f"unknown arch {arch!r}; choose auto or one of {', '.join(IRESNET_LAYERS)}")
        if weights is None:
            if arch == "auto":
                raise ValueError("arch='auto' needs weights to read the depth from; name an arch")
            layout = "adaface" if checkpoint_format == "adaface" else "arcface_torch"
            self.backbone = build_iresnet(arch, strided_identity_shortcut=(layout == "adaface"), dropout=dropout,
                                          fp16=fp16)
            log.info("IResNetEmbedder(%s): no weights given, randomly initialized", arch)
        else:
            ckpt = read_iresnet_checkpoint(weights, checkpoint_format)
            if arch != "auto" and ckpt.arch != arch:
                found = ckpt.arch or f"a non-standard depth {ckpt.layers}"
                raise ValueError(f"{weights} holds {found}, but arch={arch!r}; pass arch={ckpt.arch or 'auto'!r}")
            layout = ckpt.layout
            self.backbone = ckpt.build()
            self.backbone.dropout.p, self.backbone.fp16 = float(dropout), bool(fp16)
            arch = ckpt.arch or arch
        self.layout = layout
        # init arguments as attributes: FR checkpoints record them to rebuild the network
        self.arch, self.checkpoint_format = arch, ("adaface" if layout == "adaface" else "arcface_torch")
        self.dropout, self.fp16 = float(dropout), bool(fp16)
        self.color_order = "BGR" if layout == "adaface" else "RGB"
        self.mean = (127.5, 127.5, 127.5)
        self.std = (127.5, 127.5, 127.5)
        self.embedding_dim = self.backbone.num_features
        self.input_size = (self.backbone.input_size, self.backbone.input_size)
        if weights is not None:
            self.eval()

    def embed_raw(self, x: Tensor) -> Tensor:
        return self.backbone(x)
