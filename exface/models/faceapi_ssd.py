"""face-api's ``ssd_mobilenetv1_model`` face detector in PyTorch (network, box decoding, NMS).

A port of ``src/ssdMobilenetv1/`` of ``@vladmandic/face-api@1.7.15`` (itself the TF object
detection API's SSD MobileNet v1 trained on WIDER FACE), on the same uint8-quantized weights:

- Input (``NetInput.toBatchTensor(512, false)``): the image on the [0, 255] scale is padded
  with zeros to a square at the bottom or right (not centred), resized to 512x512 with TF's
  legacy bilinear rule, and mapped to ``x / 127.5 - 1``.
- MobileNet v1: a 3x3/2 conv then 13 depthwise (batch norm, eps 1e-3) + pointwise pairs,
  strides 2 at pairs 2, 4, 6 and 12; every conv is followed by a clip to [0, 6]; the
  convolutions' batch norms are folded into a bias (``convolution_bn_offset``).
- Prediction: 8 more pointwise convs (3x3/2 at odd indices) and 6 box predictors (1x1 convs)
  on conv 11 (3 anchors per cell, 32x32) and five smaller maps (6 anchors per cell): 5118
  anchors, each with 4 box offsets and 3 class logits (score: sigmoid of logit 1).
- Decoding against the stored anchors (``Output/extra_dim``, (ymin, xmin, ymax, xmax)): centre
  offsets scaled by 1/10, log sizes by 1/5.
- :func:`ssd_nms`: face-api's greedy non-maximum suppression (IoU > 0.5 suppresses; scores
  must exceed ``min_confidence``; at most ``max_results``).
- Boxes are clipped to [0, 1] of the padded square and rescaled to the image, as
  ``SsdMobilenetv1.locateFaces`` does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.models.faceapi_ops import WeightReader, resolve_manifest, tf_resize_bilinear, tf_same_pad
from exface.models.tfjs import load_tfjs_weights

__all__ = ["SSDMobileNetV1Net", "ssd_input", "ssd_nms", "SSD_INPUT_SIZE"]

SSD_INPUT_SIZE = 512
_BN_EPS = 0.0010000000474974513
_STRIDE2 = (2, 4, 6, 12)


def _relu6(x: Tensor) -> Tensor:
    return x.clamp(0.0, 6.0)


class _PointwiseConv(nn.Module):
    """``clip(conv2d(x, filters, stride, 'same') + bn_offset, 0, 6)`` (face-api ``pointwiseConvLayer``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(cin, cout, kernel, stride, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return _relu6(self.conv(tf_same_pad(x, self.kernel, self.stride)))

    def load_tf(self, w: WeightReader, prefix: str) -> None:
        w.copy(self.conv.weight, f"{prefix}/weights", (3, 2, 0, 1))
        w.copy(self.conv.bias, f"{prefix}/convolution_bn_offset")


class _DepthwiseConv(nn.Module):
    """``clip(batchNorm(depthwiseConv2d(x, filters, stride, 'same')), 0, 6)``."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels, 3, stride, groups=channels, bias=False)
        for name in ("mean", "variance", "scale", "offset"):
            self.register_buffer(name, torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(tf_same_pad(x, 3, self.stride))
        v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
        y = (y - v(self.mean)) * (v(self.scale) * torch.rsqrt(v(self.variance) + _BN_EPS)) + v(self.offset)
        return _relu6(y)

    def load_tf(self, w: WeightReader, prefix: str) -> None:
        w.copy(self.conv.weight, f"{prefix}/depthwise_weights", (2, 3, 0, 1))
        w.copy(self.mean, f"{prefix}/BatchNorm/moving_mean")
        w.copy(self.variance, f"{prefix}/BatchNorm/moving_variance")
        w.copy(self.scale, f"{prefix}/BatchNorm/gamma")
        w.copy(self.offset, f"{prefix}/BatchNorm/beta")


class _BoxPredictor(nn.Module):
    """1x1 convs to ``anchors * 4`` box offsets and ``anchors * 3`` class logits per cell."""

    def __init__(self, cin: int, anchors: int) -> None:
        super().__init__()
        self.box = nn.Conv2d(cin, anchors * 4, 1)
        self.cls = nn.Conv2d(cin, anchors * 3, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        # face-api reshapes the NHWC maps: cells row-major, then the anchors of a cell.
        box = self.box(x).permute(0, 2, 3, 1).reshape(n, -1, 4)
        cls = self.cls(x).permute(0, 2, 3, 1).reshape(n, -1, 3)
        return box, cls

    def load_tf(self, w: WeightReader, prefix: str) -> None:
        w.copy(self.box.weight, f"{prefix}/BoxEncodingPredictor/weights", (3, 2, 0, 1))
        w.copy(self.box.bias, f"{prefix}/BoxEncodingPredictor/biases")
        w.copy(self.cls.weight, f"{prefix}/ClassPredictor/weights", (3, 2, 0, 1))
        w.copy(self.cls.bias, f"{prefix}/ClassPredictor/biases")


def ssd_input(images_255: Tensor, size: int = SSD_INPUT_SIZE) -> Tensor:
    """``[N, 3, H, W]`` on the [0, 255] scale -> face-api's normalized ``[N, 3, 512, 512]`` input."""
    h, w = images_255.shape[-2:]
    if h != w:  # padToSquare(isCenterImage=false): zeros appended at the bottom or right
        diff = abs(h - w)
        images_255 = F.pad(images_255, (0, diff, 0, 0) if h > w else (0, 0, 0, diff))
    x = tf_resize_bilinear(images_255, (size, size))
    return x / 127.5 - 1.0


class SSDMobileNetV1Net(nn.Module):
    """face-api's SSD MobileNet v1: normalized 512x512 input -> decoded boxes and scores.

    :meth:`forward` returns ``(boxes [N, 5118, 4] as (ymin, xmin, ymax, xmax) relative to the
    padded square, scores [N, 5118])``, face-api's ``forwardInput``.
    """

    zoo_name = "faceapi-ssd-mobilenetv1"

    def __init__(self) -> None:
        super().__init__()
        chans = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
        self.conv0 = _PointwiseConv(3, 32, 3, 2)
        self.depthwise = nn.ModuleList()
        self.pointwise = nn.ModuleList()
        for i in range(1, 14):
            self.depthwise.append(_DepthwiseConv(chans[i - 1], 2 if i in _STRIDE2 else 1))
            self.pointwise.append(_PointwiseConv(chans[i - 1], chans[i]))
        pred = [(1024, 256, 1, 1), (256, 512, 3, 2), (512, 128, 1, 1), (128, 256, 3, 2),
                (256, 128, 1, 1), (128, 256, 3, 2), (256, 64, 1, 1), (64, 128, 3, 2)]
        self.prediction = nn.ModuleList(_PointwiseConv(*p) for p in pred)
        self.predictors = nn.ModuleList(
            [_BoxPredictor(512, 3), _BoxPredictor(1024, 6), _BoxPredictor(512, 6),
             _BoxPredictor(256, 6), _BoxPredictor(256, 6), _BoxPredictor(128, 6)]
        )
        self.register_buffer("anchors", torch.zeros(5118, 4))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.conv0(x)
        conv11 = out
        for i, (dw, pw) in enumerate(zip(self.depthwise, self.pointwise), start=1):
            out = pw(dw(out))
            if i == 11:
                conv11 = out
        p = [out]
        for layer in self.prediction:
            p.append(layer(p[-1]))
        # box predictors on conv11, the backbone output, and prediction convs 1, 3, 5, 7
        maps = [conv11, out, p[2], p[4], p[6], p[8]]
        enc, cls = zip(*(pred(m) for pred, m in zip(self.predictors, maps)))
        enc, cls = torch.cat(enc, 1), torch.cat(cls, 1)
        return self.decode(enc), torch.sigmoid(cls[..., 1])

    def decode(self, enc: Tensor) -> Tensor:
        """face-api ``decodeBoxesLayer``: offsets ``[N, A, 4]`` against the anchors -> boxes."""
        a = self.anchors
        size = a[:, 2:] - a[:, :2]
        centre = a[:, :2] + size / 2
        half = torch.exp(enc[..., 2:] / 5) * size / 2
        mid = enc[..., :2] / 10 * size + centre
        return torch.cat([mid - half, mid + half], -1)

    def load_tf(self, w: WeightReader) -> None:
        self.conv0.load_tf(w, "MobilenetV1/Conv2d_0_pointwise")
        for i, (dw, pw) in enumerate(zip(self.depthwise, self.pointwise), start=1):
            dw.load_tf(w, f"MobilenetV1/Conv2d_{i}_depthwise")
            pw.load_tf(w, f"MobilenetV1/Conv2d_{i}_pointwise")
        for i, layer in enumerate(self.prediction):
            layer.load_tf(w, f"Prediction/Conv2d_{i}_pointwise")
        for i, pred in enumerate(self.predictors):
            pred.load_tf(w, f"Prediction/BoxPredictor_{i}")
        w.copy(self.anchors, "Output/extra_dim")

    @classmethod
    def from_manifest(cls, manifest: str | Path | None = None) -> "SSDMobileNetV1Net":
        """Load face-api's weights (default: the zoo's ``faceapi-ssd-mobilenetv1``); eval mode.

        The manifest also holds the TF graph's leftover integer constants (slice sizes,
        axes), which face-api ignores too; every float weight must be used.
        """
        path = resolve_manifest(manifest, cls.zoo_name)
        weights = load_tfjs_weights(path)
        net = cls()
        reader = WeightReader({k: v for k, v in weights.items() if k != "Output/extra_dim"} | {
            "Output/extra_dim": weights["Output/extra_dim"].reshape(-1, 4)}, str(path))
        net.load_tf(reader)
        unused = [k for k in set(weights) - reader.used if "/weights" in k or "BatchNorm" in k or "biases" in k]
        if unused:
            raise ValueError(f"{path}: weights the detector does not use: {sorted(unused)[:3]}; another model?")
        return net.eval()


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of one box ``a [4]`` against boxes ``b [K, 4]`` (face-api's IOU, corner order-free)."""
    lo_a, hi_a = torch.minimum(a[:2], a[2:]), torch.maximum(a[:2], a[2:])
    lo_b, hi_b = torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])
    area_a = (hi_a - lo_a).prod()
    area_b = (hi_b - lo_b).prod(1)
    inter = (torch.minimum(hi_a, hi_b) - torch.maximum(lo_a, lo_b)).clamp(min=0).prod(1)
    iou = inter / (area_a + area_b - inter)
    return torch.where((area_a <= 0) | (area_b <= 0), torch.zeros_like(iou), iou)


def ssd_nms(boxes: Tensor, scores: Tensor, max_results: int = 100, iou_threshold: float = 0.5,
            min_confidence: float = 0.5) -> Tensor:
    """Indices kept by face-api's greedy NMS, best score first.

    Candidates scoring above ``min_confidence`` are visited by decreasing score; one is kept
    unless its IoU with an already kept box exceeds ``iou_threshold``.
    """
    order = torch.nonzero(scores > min_confidence).flatten()
    order = order[torch.argsort(scores[order], descending=True, stable=True)]
    keep: list[int] = []
    for idx in order.tolist():
        if len(keep) >= max_results:
            break
        if keep and bool((_iou(boxes[idx], boxes[keep]) > iou_threshold).any()):
            continue
        keep.append(idx)
    return torch.tensor(keep, dtype=torch.long)
