"""face-api's SSD MobileNet v1 face detector as a registered :class:`FaceDetector`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from exface.detectors.base import Detections, FaceDetector
from exface.models.faceapi_ssd import SSD_INPUT_SIZE, SSDMobileNetV1Net, ssd_input, ssd_nms

__all__ = ["SSDMobileNetV1"]


class SSDMobileNetV1(FaceDetector):
    """face-api's SSD MobileNet v1 (WIDER FACE): every face with its box and score.

    Args:
        manifest: ``ssd_mobilenetv1_model-weights_manifest.json`` (default: the zoo's
            ``faceapi-ssd-mobilenetv1``).
        min_confidence: keep faces scoring above this (face-api's default 0.5).
        max_results: at most this many faces per image (face-api's default 100).
        iou_threshold: non-maximum suppression overlap (face-api uses 0.5).

    Boxes match face-api's ``detectAllFaces(img, SsdMobilenetv1Options)`` (same weights, same
    input resize, same decoding and NMS; ``tests/test_detectors.py`` checks it against TF.js).
    The network runs batched; NMS runs per image on the CPU.
    """

    def __init__(
        self,
        manifest: str | Path | None = None,
        min_confidence: float = 0.5,
        max_results: int = 100,
        iou_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0 < min_confidence < 1:
            raise ValueError(f"min_confidence must lie in (0, 1), got {min_confidence}")
        self.net = SSDMobileNetV1Net.from_manifest(manifest).requires_grad_(False)
        self.min_confidence = float(min_confidence)
        self.max_results = int(max_results)
        self.iou_threshold = float(iou_threshold)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[Detections]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"SSDMobileNetV1 takes RGB images [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        boxes, scores = self.net(ssd_input((images.float() + 1.0) * 127.5))
        boxes, scores = boxes.cpu(), scores.cpu()
        # locateFaces: the image fills round(side * 512 / max(H, W)) of the padded square.
        scale = SSD_INPUT_SIZE / max(h, w)
        pad_y = SSD_INPUT_SIZE / round(h * scale)
        pad_x = SSD_INPUT_SIZE / round(w * scale)
        out = []
        for b, s in zip(boxes, scores):
            keep = ssd_nms(b, s, self.max_results, self.iou_threshold, self.min_confidence)
            k = b[keep]
            top = k[:, 0].clamp(min=0) * pad_y * h
            bottom = k[:, 2].clamp(max=1) * pad_y * h
            left = k[:, 1].clamp(min=0) * pad_x * w
            right = k[:, 3].clamp(max=1) * pad_x * w
            out.append(Detections(torch.stack([left, top, right, bottom], 1), s[keep]))
        return out
