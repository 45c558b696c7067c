"""Landmark sources: where the keypoints an alignment template needs come from.

A :class:`LandmarkSource` is a registered part of kind ``landmark_sources`` (registering is
subclassing, as for every exface part). It maps images ``[N, 3, H, W]`` in [-1, 1] RGB to
landmark pixel coordinates ``[N, K, 2]`` (pixel centres at integers) in its declared
``scheme`` (:mod:`exface.alignment.keypoints`).

Built in:

- :class:`FaceApiLandmarks` (``ibug68``): face-api's 68-point net, in PyTorch, batched, on any
  device and differentiable with respect to the images. The net expects a face-detector crop;
  these images have no detector, so the net first runs on a configurable box (default: the
  whole image) and then ``refine`` more times on the face box re-derived from its own
  landmarks (:func:`box_from_landmarks`, calibrated against face-api's SSD detector).
- :class:`DlibLandmarks` (``dlib5`` or ``ibug68``): dlib's shape predictors from the
  ``face-recognition-models`` package, on dlib's HOG face detection (the face nearest the
  box; the box itself where none is found). CPU, not differentiable.

Sources that detect faces (DlibLandmarks, or FaceApiLandmarks given a ``detector``) keep a
:class:`~exface.alignment.faces.FaceTally` of the faces found per image.
- :class:`MTCNNLandmarks` (``insightface5``): facenet-pytorch's MTCNN, an optional dependency.

Given face boxes (``forward(images, boxes)``, e.g. from a registered face detector through
:class:`~exface.alignment.landmark_aligner.LandmarkAligner`'s ``detector``), the face-api
and dlib sources start from those boxes instead of their fixed box or dlib's HOG detector.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from exface.alignment.faces import FaceTally, pick_faces
from exface.detectors.base import Detections
from exface.alignment.geometry import float_dtype, warp_affine
from exface.models.faceapi_landmarks import FaceLandmark68Net
from exface.models.faceapi_ops import FACEAPI_INPUT_SIZE, faceapi_input
from exface.registry import Registrable
from exface.tensors import to_uint8

__all__ = [
    "LandmarkSource",
    "FaceApiLandmarks",
    "DlibLandmarks",
    "MTCNNLandmarks",
    "box_from_landmarks",
    "resolve_box",
    "FACE_BOXES",
    "face_recognition_models_path",
]

Box = Sequence[float]


#: Named relative face boxes ``(x0, y0, x1, y1)`` for :class:`FaceApiLandmarks` and
#: :class:`DlibLandmarks`: ``full`` (the whole image: faces that fill the frame, such as
#: ArcFace/DigiFace-style 112x112 crops) and ``lfw_deepfunneled`` (the median box of
#: face-api's SSD detector on LFW's 250x250 deep-funneled images, from
#: ``tests/tfjs_reference/calibrate_ssd_box.py``).
FACE_BOXES = {
    "full": (0.0, 0.0, 1.0, 1.0),
    "lfw_deepfunneled": (0.293, 0.279, 0.684, 0.754),
}


def resolve_box(box: Box | str | None, n: int, height: int, width: int, device=None) -> Tensor:
    """Relative ``(x0, y0, x1, y1)`` in [0, 1], a name in :data:`FACE_BOXES`, or None (whole
    image) -> ``[n, 4]`` pixel boxes.

    Pixel boxes use the pixel-edge convention: the whole image is ``(0, 0, W, H)``.
    """
    if box is None:
        box = FACE_BOXES["full"]
    if isinstance(box, str):
        if box not in FACE_BOXES:
            raise ValueError(
                f"unknown face box {box!r}; give a named box ({', '.join(FACE_BOXES)}) or four "
                f"relative numbers [x0, y0, x1, y1]"
            )
        box = FACE_BOXES[box]
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1.5 and 0 <= box[1] < box[3] <= 1.5):
        raise ValueError(
            f"box must be relative (x0, y0, x1, y1) with x0 < x1 and y0 < y1, fractions of the "
            f"image size (e.g. (0.25, 0.25, 0.75, 0.75) for the centre), got {tuple(box)}"
        )
    b = torch.tensor(
        [box[0] * width, box[1] * height, box[2] * width, box[3] * height],
        dtype=torch.float32,
        device=device,
    )
    return b.expand(n, 4).clone()


#: Calibration of :func:`box_from_landmarks`: face-api's SSD detector box relative to the
#: bounding box of face-api's 68 landmarks (width w, height h, centre (cx, cy)): centre
#: ``(cx + dx w, cy + dy h)``, size ``(sw w, sh h)``. Medians over the 90 faces SSD found in
#: 100 LFW fold-1 images (spread: dy +-0.05, sh +-0.11), measured on TF.js with
#: ``python tests/tfjs_reference/calibrate_ssd_box.py``.
SSD_BOX_FROM_LANDMARKS = {"dx": 0.008, "dy": -0.137, "sw": 1.014, "sh": 1.297}


def box_from_landmarks(points: Tensor, square: bool = True) -> Tensor:
    """``[N, 68, 2]`` landmarks -> ``[N, 4]`` face boxes like face-api's SSD detector draws them.

    With ``square`` the box is widened to a square around the same centre (the landmark net
    pads its input to a square anyway; a square crop fills that padding with image content).
    """
    c = SSD_BOX_FROM_LANDMARKS
    lo, hi = points.min(1).values, points.max(1).values
    size = hi - lo
    centre = (lo + hi) / 2 + size * torch.tensor([c["dx"], c["dy"]], device=points.device, dtype=points.dtype)
    wh = size * torch.tensor([c["sw"], c["sh"]], device=points.device, dtype=points.dtype)
    if square:
        wh = wh.max(1, keepdim=True).values.expand(-1, 2)
    return torch.cat([centre - wh / 2, centre + wh / 2], 1)


class LandmarkSource(Registrable, nn.Module, ABC):
    """Images ``[N, 3, H, W]`` in [-1, 1] RGB -> landmarks ``[N, K, 2]`` in pixels of those images."""

    registry_kind: ClassVar[str] = "landmark_sources"

    #: The landmark scheme of the output (see :mod:`exface.alignment.keypoints`).
    scheme: ClassVar[str] = ""

    #: Faces found per image by sources that detect faces (``None`` for those that do not).
    tally: FaceTally | None = None

    @abstractmethod
    def forward(self, images: Tensor, boxes: Tensor | None = None) -> Tensor:
        """Landmark pixel coordinates ``[N, K, 2]``.

        ``boxes`` (``[N, 4]`` pixel face boxes, e.g. from a :mod:`exface.detectors` detector)
        replace the source's own starting box or detector where it has one.
        """

    def default_boxes(self, images: Tensor) -> Tensor:
        """``[N, 4]`` pixel boxes the source starts from without a detector (its ``box``)."""
        n, _, h, w = images.shape
        return resolve_box(getattr(self, "box", None), n, h, w, images.device).to(float_dtype(images))


class FaceApiLandmarks(LandmarkSource):
    """face-api's 68-point landmark net on a box, refined on its own face box.

    Args:
        manifest: TF.js weights manifest (default: the zoo's ``faceapi-face-landmark-68``).
        box: relative ``(x0, y0, x1, y1)`` the first pass crops, or a name in
            :data:`FACE_BOXES` (default: the whole image, right for faces that fill the frame).
            Give the face's usual place when it fills only part of the frame (on LFW's
            deep-funneled images ``"lfw_deepfunneled"``: starting from the whole 250x250
            image instead costs ~10 points of LFW accuracy downstream).
        refine: further passes, each on the square face box derived from the previous pass's
            landmarks (:func:`box_from_landmarks`). 0 trusts ``box`` as the face box.
        square: crop a square around the box (the net's input is square).
    """

    scheme = "ibug68"

    def __init__(
        self,
        manifest: str | Path | None = None,
        box: tuple[float, float, float, float] | str | None = None,
        refine: int = 1,
        square: bool = True,
    ) -> None:
        super().__init__()
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}")
        self.net = FaceLandmark68Net.from_manifest(manifest)
        self.net.requires_grad_(False)
        self.box = box if box is None or isinstance(box, str) else tuple(box)
        self.refine = int(refine)
        self.square = bool(square)
        resolve_box(self.box, 1, 1, 1)  # validate early

    def landmarks_in_boxes(self, images: Tensor, boxes: Tensor) -> Tensor:
        """Run the net on each image's ``[N, 4]`` pixel box; landmarks in image pixels.

        The box is cut as face-api does for a detection (pixel ``u`` of the 112-px input is
        image point ``x0 + u * side / 112``), but as one batched, differentiable warp, with
        image content instead of black where a square box extends a non-square one.
        """
        if self.square:
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2
            side = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdim=True).values
            boxes = torch.cat([centre - side / 2, centre + side / 2], 1)
        n = images.shape[0]
        size = FACEAPI_INPUT_SIZE
        step = (boxes[:, 2:] - boxes[:, :2]) / size  # [N, 2] image pixels per net pixel
        a = torch.zeros(n, 2, 3, device=images.device, dtype=float_dtype(images))
        a[:, 0, 0], a[:, 1, 1] = step[:, 0], step[:, 1]
        a[:, :, 2] = boxes[:, :2]
        crops = warp_affine(images, a, (size, size))
        raw = self.net.forward_raw(faceapi_input(crops)).view(n, 68, 2) * size
        return raw * step.unsqueeze(1) + boxes[:, :2].unsqueeze(1)

    def forward(self, images: Tensor, boxes: Tensor | None = None) -> Tensor:
        boxes = self.default_boxes(images) if boxes is None else boxes.to(images.device, float_dtype(images))
        pts = self.landmarks_in_boxes(images, boxes)
        for _ in range(self.refine):
            pts = self.landmarks_in_boxes(images, box_from_landmarks(pts.detach()))
        return pts


def face_recognition_models_path(name: str) -> Path:
    """Path of a model file of the ``face-recognition-models`` package (without importing it:
    its ``__init__`` needs ``pkg_resources``, which new setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "dlib landmarks need the face-recognition-models package: "
            "pip install face-recognition-models==0.3.0 dlib-bin"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall face-recognition-models")
    return path


def _to_uint8_hwc(images: Tensor) -> np.ndarray:
    x = images if images.dtype == torch.uint8 else to_uint8(images)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).cpu().numpy())


class DlibLandmarks(LandmarkSource):
    """dlib's 5- or 68-point shape predictor (``face-recognition-models``), CPU only.

    Args:
        points: 5 (``dlib5`` scheme, what dlib's face-chip alignment uses) or 68 (``ibug68``).
        detect: find the face with dlib's HOG detector (upsampled ``upsample`` times); of
            several faces the one nearest ``box`` (or the image centre when ``box`` is None),
            not the largest (which on LFW is often a bystander). When it finds none, or with
            ``detect=False``, the predictor runs on ``box``. Faces found per image are kept in
            :attr:`tally`. Boxes given to :meth:`forward` (an aligner's detector) replace HOG.
        box: relative ``(x0, y0, x1, y1)`` face box or a name in :data:`FACE_BOXES`
            (default: the whole image).
    """

    def __init__(
        self,
        points: int = 5,
        detect: bool = True,
        box: tuple[float, float, float, float] | str | None = None,
        upsample: int = 1,
    ) -> None:
        super().__init__()
        try:
            import dlib
        except ImportError as err:
            raise ImportError("DlibLandmarks needs dlib: pip install dlib-bin") from err
        if points not in (5, 68):
            raise ValueError(f"dlib has 5- and 68-point predictors, not {points}")
        name = f"shape_predictor_{points}_face_landmarks.dat"
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(face_recognition_models_path(name)))
        self._detector = dlib.get_frontal_face_detector() if detect else None
        self.points = points
        self.box = box if box is None or isinstance(box, str) else tuple(box)
        self.upsample = int(upsample)
        resolve_box(self.box, 1, 1, 1)
        self.tally = FaceTally() if detect else None

    @property
    def scheme(self) -> str:  # type: ignore[override]
        return "dlib5" if self.points == 5 else "ibug68"

    def forward(self, images: Tensor, boxes: Tensor | None = None) -> Tensor:
        dlib = self._dlib
        n, _, h, w = images.shape
        arrays = _to_uint8_hwc(images)
        if boxes is None:
            boxes = self.default_boxes(images).cpu()
            if self._detector is not None:
                found = []
                for img in arrays:
                    dets = self._detector(img, self.upsample)
                    b = torch.tensor([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in dets], dtype=torch.float32)
                    found.append(Detections(b.view(-1, 4), torch.ones(len(b))))
                expected = resolve_box(self.box, 1, 1, 1)[0].tolist() if self.box is not None else None
                boxes = pick_faces(found, boxes, expected, (h, w), self.tally)
        out = np.zeros((n, self.points, 2), dtype=np.float32)
        for i, img in enumerate(arrays):
            x0, y0, x1, y1 = boxes[i].tolist()
            rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)
            shape = self._predictor(img, rect)
            out[i] = [(p.x, p.y) for p in shape.parts()]
        return torch.from_numpy(out).to(device=images.device, dtype=float_dtype(images))


class MTCNNLandmarks(LandmarkSource):
    """facenet-pytorch's MTCNN 5 points (eye centres, nose tip, mouth corners).

    Needs ``pip install facenet-pytorch`` (not an exface dependency). Images where MTCNN finds
    no face raise an error naming them, unless ``fallback_box`` is given: then the ArcFace
    template's points are placed in that relative box for those images.
    """

    scheme = "insightface5"

    def __init__(self, fallback_box: tuple[float, float, float, float] | str | None = None) -> None:
        super().__init__()
        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:
            raise ImportError(
                "MTCNNLandmarks needs facenet-pytorch, an optional dependency: "
                "`pip install facenet-pytorch` (or use FaceApiLandmarks, the default source)"
            ) from err
        self._mtcnn = MTCNN(keep_all=False, select_largest=True, device="cpu")
        self.fallback_box = fallback_box if fallback_box is None or isinstance(fallback_box, str) else tuple(fallback_box)
        if self.fallback_box is not None:
            resolve_box(self.fallback_box, 1, 1, 1)

    def forward(self, images: Tensor, boxes: Tensor | None = None) -> Tensor:
        """MTCNN's own detection; ``boxes`` are not used (MTCNN finds faces itself)."""
        from exface.alignment.templates import ARCFACE_96x112

        n, _, h, w = images.shape
        arrays = list(_to_uint8_hwc(images))
        _, _, points = self._mtcnn.detect(arrays, landmarks=True)
        out = np.zeros((n, 5, 2), dtype=np.float32)
        missing = []
        for i, p in enumerate(points):
            if p is None or len(p) == 0:
                missing.append(i)
                continue
            out[i] = np.asarray(p[0], dtype=np.float32)
        if missing:
            if self.fallback_box is None:
                raise RuntimeError(
                    f"MTCNN found no face in images {missing} of the batch; pass fallback_box "
                    f"(relative x0, y0, x1, y1) to place a mean face there instead"
                )
            x0, y0, x1, y1 = resolve_box(self.fallback_box, 1, h, w)[0].tolist()
            tmpl = (np.asarray(ARCFACE_96x112, dtype=np.float32) + [8.0, 0.0]) / 112.0
            out[missing] = tmpl * [x1 - x0, y1 - y0] + [x0, y0]
        return torch.from_numpy(out).to(device=images.device, dtype=float_dtype(images))
