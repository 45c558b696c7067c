"""face-api's attribute nets as registered attribute predictors (offline defaults, CPU-friendly).

All three take face crops ``[N, 3, H, W]`` in [-1, 1] RGB. ``input_size`` is (112, 112), the
nets' own input, but any size is accepted: the crop is zero-padded to a centred square and
resized exactly as face-api does (:func:`exface.models.faceapi_ops.faceapi_input`). The nets
were trained on face-detector boxes (roughly brows to chin, ear to ear); ArcFace-aligned
112x112 crops are close to that. For images in which the face fills only part of the frame,
``box`` (relative ``(x0, y0, x1, y1)``) cuts that part first.

- :class:`FaceApiAgeGender`: ``age`` (years, regression, typical range 5-80) and
  ``gender_male`` (probability in [0, 1] that the face is male; face-api's ``probMale``).
- :class:`FaceApiExpression`: the 7 probabilities of face-api's expression classifier
  (``neutral, happy, sad, angry, fearful, disgusted, surprised``; they sum to 1).
- :class:`FaceApiLandmarks68`: 68 landmarks via :meth:`~FaceApiLandmarks68.landmarks` and the
  scores of :mod:`exface.attributes.pose` computed from them: ``yaw``, ``pitch``, ``roll``
  (degrees), ``mouth_open``, ``smile``, ``eyes_open`` (dimensionless ratios; see that module
  for definitions, signs and typical values).

The nets' weights are frozen (gradients still reach the input images, so the probabilities
can steer latent optimization); pose is computed with OpenCV and carries no gradient.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from exface.alignment.crops import FixedCropAligner
from exface.alignment.landmarks import FaceApiLandmarks
from exface.attributes.base import AttributePredictor
from exface.attributes.pose import eyes_open, head_pose, mouth_open, smile
from exface.models.faceapi_age_gender import AgeGenderNet
from exface.models.faceapi_expression import EXPRESSIONS, FaceExpressionNet

__all__ = ["FaceApiAgeGender", "FaceApiExpression", "FaceApiLandmarks68"]

Box = tuple[float, float, float, float]


def _check_images(images: Tensor, who: str) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{who} takes RGB face crops [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")


class _FaceApiPredictor(AttributePredictor):
    """Shared ``box`` handling: crop the box (to 112x112) before the net when one is given."""

    input_size = (112, 112)

    def __init__(self, box: Box | None) -> None:
        super().__init__()
        self.box = tuple(box) if box is not None else None
        self._crop = FixedCropAligner(self.box, (112, 112)) if self.box is not None else None

    def _prepare(self, images: Tensor) -> Tensor:
        _check_images(images, type(self).__name__)
        return self._crop(images) if self._crop is not None else images


class FaceApiAgeGender(_FaceApiPredictor):
    """face-api age (years) and gender (``gender_male`` probability) from a face crop."""

    attribute_names = ("age", "gender_male")

    def __init__(self, manifest: str | Path | None = None, box: Box | None = None) -> None:
        super().__init__(box)
        self.net = AgeGenderNet.from_manifest(manifest).requires_grad_(False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        age, gender = self.net(self._prepare(images))
        return {"age": age, "gender_male": gender[:, 0]}


class FaceApiExpression(_FaceApiPredictor):
    """face-api expression probabilities: neutral, happy, sad, angry, fearful, disgusted, surprised."""

    attribute_names = EXPRESSIONS

    def __init__(self, manifest: str | Path | None = None, box: Box | None = None) -> None:
        super().__init__(box)
        self.net = FaceExpressionNet.from_manifest(manifest).requires_grad_(False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        probs = self.net(self._prepare(images))
        return {name: probs[:, i] for i, name in enumerate(EXPRESSIONS)}


class FaceApiLandmarks68(AttributePredictor):
    """face-api 68 landmarks, and head pose / mouth / smile / eye scores computed from them.

    Args:
        manifest: weights manifest (default: the zoo's ``faceapi-face-landmark-68``).
        box: relative box the landmark net runs on first (default: the whole crop).
        refine: further passes on the face box derived from the landmarks (see
            :class:`exface.alignment.landmarks.FaceApiLandmarks`); 1 helps when the face does
            not fill the crop the way a detector box would.
    """

    input_size = (112, 112)
    attribute_names = ("yaw", "pitch", "roll", "mouth_open", "smile", "eyes_open")

    def __init__(self, manifest: str | Path | None = None, box: Box | None = None, refine: int = 1) -> None:
        super().__init__()
        self.source = FaceApiLandmarks(manifest=manifest, box=box, refine=refine)

    def landmarks(self, images: Tensor) -> Tensor:
        """``[N, 68, 2]`` landmark (x, y) in pixels of ``images`` (pixel centres at integers)."""
        _check_images(images, type(self).__name__)
        return self.source(images)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        pts = self.landmarks(images)
        out = head_pose(pts, tuple(images.shape[-2:]))
        out["mouth_open"] = mouth_open(pts)
        out["smile"] = smile(pts)
        out["eyes_open"] = eyes_open(pts)
        return out
