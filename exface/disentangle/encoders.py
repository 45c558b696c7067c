"""Attribute encoders: the trainable image -> attribute-code network of the disentanglement model.

The paper uses an ImageNet InceptionV3 (``include_top=False, pooling='avg'``, 2048-D, input
resized to 299 px). exface's :class:`TimmAttributeEncoder` takes any timm backbone by name,
so ``inception_v3`` at 299 px reproduces that, and a small network at the generator's own
resolution (``resnet10t`` at 64 px, the DCGAN recipe's) keeps CPU training within minutes.

:class:`LandmarkAttributeEncoder` is an exface extra (not in the paper): a frozen, pretrained
68-point landmark network whose points (head pose, mouth and eye opening) feed a small
trainable MLP, optionally beside a trainable backbone for what landmarks do not hold
(lighting, texture). Where no pretrained backbone can be fetched (the offline default), it
gives the mapper the attribute source's geometry from the first step instead of asking a
backbone trained from scratch in 30 CPU minutes to find it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.alignment.landmarks import LandmarkSource
from exface.registry import Registrable

__all__ = ["AttributeEncoder", "TimmAttributeEncoder", "LandmarkAttributeEncoder"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class AttributeEncoder(Registrable, nn.Module, ABC):
    """Images ``[N, 3, H, W]`` in [-1, 1] RGB (any size) -> attribute codes ``[N, out_dim]``.

    Trainable; the disentanglement module optimizes it together with the latent mapper.
    """

    registry_kind: ClassVar[str] = "attribute_encoders"
    out_dim: int

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """Attribute codes."""


class TimmAttributeEncoder(AttributeEncoder):
    """Any timm backbone (global-average-pooled features) as the attribute encoder.

    Args:
        model_name: a timm model name (``inception_v3`` is the paper's; ``resnet10t`` is small).
        pretrained: load timm's pretrained weights (needs them in the Hugging Face cache or
            network access; the paper starts from ImageNet weights). Off by default: exface's
            offline default trains the encoder from scratch.
        input_size: images are resized (bilinear, antialiased when shrinking) to this side
            first (the paper: 299 for InceptionV3).
    """

    def __init__(self, model_name: str = "resnet10t", pretrained: bool = False, input_size: int = 64) -> None:
        super().__init__()
        import timm

        if model_name not in timm.list_models():
            import difflib

            near = difflib.get_close_matches(model_name, timm.list_models(), n=3)
            raise ValueError(f"timm has no model {model_name!r}" + (f"; did you mean {', '.join(near)}?" if near else ""))
        self.model_name, self.input_size = model_name, int(input_size)
        self.net = timm.create_model(model_name, pretrained=pretrained, num_classes=0, global_pool="avg")
        self.out_dim = int(self.net.num_features)
        # the backbone's own input normalization (timm's pretrained config: ImageNet's mean/std for
        # most, 0.5/0.5 for inception_v3, i.e. the [-1, 1] input the paper's Keras encoder takes)
        cfg = getattr(self.net, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", _IMAGENET_MEAN), cfg.get("std", _IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = (images + 1) / 2
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            shrink = x.shape[-1] > self.input_size
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=shrink)
        return self.net((x - self.mean) / self.std).flatten(1)


class LandmarkAttributeEncoder(AttributeEncoder):
    """A frozen landmark network's points, through a trainable MLP (+ optionally a backbone's code).

    The ``K`` points of ``landmarks`` (pixels) are scaled to the image (``[-1, 1]`` across
    it), flattened and mapped by ``2K -> hidden -> hidden`` (LeakyReLU 0.2) to the code;
    with ``backbone`` its code is concatenated after. The landmark network gets no
    gradient and stays in eval mode.

    Args:
        landmarks: the frozen landmark source (e.g. ``FaceApiLandmarks`` on the generator's face box).
        points: the number of points it gives (68 for the ibug scheme).
        hidden: width of the MLP and of its code.
        backbone: a trainable attribute encoder for the rest (e.g. ``TimmAttributeEncoder``), or none.
    """

    def __init__(self, landmarks: LandmarkSource, points: int = 68, hidden: int = 256,
                 backbone: AttributeEncoder | None = None) -> None:
        super().__init__()
        self.landmarks = landmarks.requires_grad_(False).eval()
        self.backbone = backbone
        self.points, self.hidden = int(points), int(hidden)
        self.mlp = nn.Sequential(nn.Linear(2 * self.points, self.hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(self.hidden, self.hidden), nn.LeakyReLU(0.2))
        self.out_dim = self.hidden + (backbone.out_dim if backbone is not None else 0)

    def train(self, mode: bool = True) -> LandmarkAttributeEncoder:
        super().train(mode)
        self.landmarks.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            pts = self.landmarks(images)
        if pts.shape[1] != self.points:
            raise ValueError(f"{type(self.landmarks).__name__} gave {pts.shape[1]} points, the encoder expects "
                             f"points={self.points}")
        h, w = images.shape[-2:]
        scale = pts.new_tensor([w, h])
        code = self.mlp((pts / scale * 2 - 1).flatten(1))
        if self.backbone is None:
            return code
        return torch.cat([code, self.backbone(images)], dim=1)
