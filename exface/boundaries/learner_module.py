"""``BoundaryLearnerModule``: any registered :class:`BoundaryLearner` as the model of ``exface fit``.

:class:`~exface.boundaries.torch_svm.BoundaryFitModule` trains all boundaries as one
batched SVM with Lightning's optimizers. This module instead hands the whole bank (every
latent and its labels for every reference, from
:class:`~exface.exfacegan.datamodule.IdentityBankDataModule`) to a learner part once,
e.g. ExFaceGAN's own recipe ``LinearSVCBoundary(minmax_scale=True, balanced_split=True)``,
which splits per reference as their code does. The learner's boundaries (with the bank's
provenance in ``meta``) are written to ``save_path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from exface.boundaries.base import Boundaries, BoundaryLearner, refuse_other_boundaries
from exface.errors import ExfaceError

__all__ = ["BoundaryLearnerModule"]


def _learner_settings(learner: BoundaryLearner) -> dict[str, Any]:
    """The learner's plain scalar attributes (``C``, ``seed``, ...): learners record their arguments in ``meta``
    under the same names, so these can be compared with a saved file's before the fit."""
    attrs = {**(getattr(learner, "module_args", None) or {}), **vars(learner)}
    return {k: v for k, v in attrs.items()
            if not k.startswith("_") and (v is None or isinstance(v, (bool, int, float, str)))}


class BoundaryLearnerModule(pl.LightningModule):
    """Fits ``learner`` on the datamodule's latents and labels once (at the start of ``fit``).

    Args:
        learner: a boundary learner part (``LinearSVCBoundary``, ``LogisticBoundary``, ...).
        save_path: where the boundaries are saved (``Boundaries.save``); None keeps them in memory.
        space: the latent space's name; None takes the datamodule's ``space``.
    """

    def __init__(self, learner: BoundaryLearner, save_path: str | None = None, space: str | None = None) -> None:
        super().__init__()
        self.learner = learner
        self.save_path = save_path
        self.space = space
        self.automatic_optimization = False
        self.fitted: Boundaries | None = None

    def configure_optimizers(self) -> Any:
        return None

    def check_before_data(self, datamodule: Any) -> None:
        """Refuse before the datamodule's bank is built when ``save_path`` holds boundaries of another
        learner, labeling or space (what is known then; the rest is compared at the fit's start)."""
        if not self.save_path:
            return
        planned = getattr(datamodule, "planned_provenance", None)
        refuse_other_boundaries(self.save_path, {"learner": type(self.learner).__name__,
                                                 **(planned() if callable(planned) else {})},
                                space=self.space or getattr(datamodule, "space", None), complete=False,
                                optional=_learner_settings(self.learner), setting="model.init_args.save_path")

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        x, y = getattr(dm, "latents", None), getattr(dm, "labels", None)
        if x is None or y is None:
            raise ExfaceError(
                f"{type(dm).__name__} offers no latents/labels for a boundary learner", where="data",
                fix="use data: {class_path: IdentityBankDataModule, ...} with BoundaryLearnerModule",
            )
        space = self.space or getattr(dm, "space", "w")
        provenance = getattr(dm, "provenance", None) or {}
        if self.save_path:
            # refuse before the fit when save_path holds boundaries of another learner, bank or labeling;
            # the learner's own settings are compared where its attributes name them (all of them at save)
            refuse_other_boundaries(self.save_path, {"learner": type(self.learner).__name__, **provenance},
                                    space=space, complete=False, optional=_learner_settings(self.learner),
                                    setting="model.init_args.save_path")
        rank_zero_info(f"fitting {y.shape[0]} boundaries with {type(self.learner).__name__} on {x.shape[0]} latents")
        out = self.learner.fit(x, y, space=space)
        out.meta.update(provenance)
        self.fitted = out
        if self.save_path and self.trainer.is_global_zero:
            path = Path(self.save_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            out.save(path, setting="model.init_args.save_path")
            rank_zero_info(f"boundaries saved to {path} (validation balanced accuracy "
                           f"{float(out.val_balanced_accuracy.nanmean()):.3f})")

    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None  # the learner already ran in on_fit_start; the loop only walks the data once
