"""HSE_FaceRec_tf's age and gender heads (Human's ``faceres`` graph) as an attribute predictor.

A second, independent age/gender estimate beside :class:`~exface.attributes.faceapi.FaceApiAgeGender`
(another network, trained on other data: the HSE MobileNet's identity features, frozen, with
heads trained on IMDB-Wiki/Adience-style age labels).

- ``age``: years, as the authors read the 100-way softmax (``facial_analysis.py``): the two
  most probable classes ``a`` (age ``1 + a``), their probabilities renormalized to sum to 1,
  and the weighted mean of their ages. ``age_expected`` is the full softmax's expectation
  ``1 + sum_a a p_a`` (smooth, differentiable in the probabilities).
- ``gender_male``: the sigmoid output, the probability that the face is male (the authors
  call a face male when it is >= 0.6).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from exface.attributes.base import AttributePredictor
from exface.embedders.human import CAFFE_MEAN_BGR
from exface.models.faceapi_ops import resolve_manifest
from exface.models.tfjs_graph import TFJSGraph

__all__ = ["HSEAgeGender", "age_from_softmax"]

_AGE, _GENDER = "age_pred/Softmax", "gender_pred/Sigmoid"


def age_from_softmax(probs: Tensor, top: int = 2) -> Tensor:
    """HSE_FaceRec_tf's age: ``1 +`` the renormalized mean of the ``top`` most probable classes."""
    p, idx = probs.topk(top, dim=1)
    p = p / p.sum(1, keepdim=True)
    return 1.0 + (p * idx.to(p.dtype)).sum(1)


class HSEAgeGender(AttributePredictor):
    """HSE MobileNet age (years) and gender (``gender_male``) from face crops.

    Args:
        model: path of Human's ``faceres.json`` (default: the zoo's ``human-faceres``).

    Crops of any size are resized (bilinear, as the authors' ``cv2.resize``) to 224x224; the
    authors feed a face-detector box widened by 10 px per side.
    """

    input_size = (224, 224)
    attribute_names = ("age", "age_expected", "gender_male")

    def __init__(self, model: str | Path | None = None) -> None:
        super().__init__()
        self.net = TFJSGraph(resolve_manifest(model, "human-faceres"), outputs=[_AGE, _GENDER]).requires_grad_(False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} takes RGB face crops [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False)
        x = (images + 1.0) * 127.5
        mean = torch.tensor(CAFFE_MEAN_BGR, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = x.flip(1) - mean
        out = self.net(x.permute(0, 2, 3, 1))
        probs = out[_AGE]
        ages = torch.arange(probs.shape[1], device=probs.device, dtype=probs.dtype)
        return {
            "age": age_from_softmax(probs),
            "age_expected": 1.0 + probs @ ages,
            "gender_male": out[_GENDER][:, 0],
        }
