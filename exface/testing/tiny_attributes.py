"""A tiny deterministic attribute predictor for pipeline tests (``TinyAttributes``).

Its scores are plain image statistics, so they are smooth functions of a generator's
latent and a linear boundary can find them: ``brightness`` (mean intensity), ``redness``
(mean red minus mean green) and ``contrast`` (standard deviation). A stand-in for tests,
never for measurements. Import this module before a recipe names it.
"""

from __future__ import annotations

from torch import Tensor

from exface.attributes.base import AttributePredictor

__all__ = ["TinyAttributes"]


class TinyAttributes(AttributePredictor):
    """Image statistics as attributes: brightness, redness, contrast (test stand-in)."""

    attribute_names = ("brightness", "redness", "contrast")

    def __init__(self, input_size: tuple[int, int] = (16, 16)) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = images.float()
        return {"brightness": x.mean((1, 2, 3)), "redness": (x[:, 0] - x[:, 1]).mean((1, 2)),
                "contrast": x.flatten(1).std(1)}
