"""The latent-editor contract: move latents toward a target value of one attribute.

One contract serves every wing that edits: InterFaceGAN's linear boundaries
(:mod:`exface.interfacegan`), the locally linear (gradient) walk and the reinforcement-
learning age policy (:mod:`exface.agerl`). A driver (the editing environment) owns the
generator, aligner, attribute predictor and identity embedder; at every step it renders the
current latents, scores them, and hands the editor an :class:`EditState`; the editor
answers with the next latents. Because every editor sees the same state and the same step
budget, ``exface edit`` and the editing reports compare them side by side.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from exface.registry import Registrable

__all__ = ["EditState", "LatentEditor"]


@dataclass
class EditState:
    """What an editor sees at one step, batched over N latents.

    ``latent`` and ``start_latent`` are ``[N, *shape]`` in the editor's ``space`` ("z", "w"
    or "w+" as ``[N, num_ws, w_dim]``). ``value`` is the attribute's current score and
    ``target`` the score to reach (``[N]``, in the predictor's units, e.g. years).
    ``similarity`` is the identity cosine of the current face to the start face ``[N]``;
    ``start_embedding`` ``[N, D]`` the start face's identity embedding. ``step`` counts
    from 0; ``max_steps`` is the budget. ``extra`` holds driver-specific tensors (for
    example the gradient of the score with respect to the latent, when the driver computes
    it).
    """

    latent: Tensor
    start_latent: Tensor
    value: Tensor
    target: Tensor
    similarity: Tensor
    start_embedding: Tensor
    step: int
    max_steps: int
    extra: dict[str, Any] | None = None

    def get(self, key: str) -> Any:
        """``extra[key]``, with an error naming what the driver did not provide."""
        if not self.extra or key not in self.extra:
            raise KeyError(
                f"this editor needs EditState.extra[{key!r}], which the driver did not provide; "
                f"set the editor's uses_gradient (for 'value_grad') or use a driver that computes it"
            )
        return self.extra[key]


class LatentEditor(Registrable, ABC):
    """Moves latents toward a target value of one attribute, one bounded step at a time.

    Contract: :meth:`propose` takes an :class:`EditState` and returns the next latents
    ``[N, *shape]`` in ``self.space`` (same shape as ``state.latent``). It must not render
    or score: the driver does, so every editor is judged on the same renders. ``attribute``
    names the score it steers (a key of an attribute predictor's output) and ``space`` the
    latent space it moves in; a driver refuses an editor whose space differs from its own.

    ``uses_gradient``: set True when :meth:`propose` reads ``state.extra["value_grad"]``
    (the gradient of the score with respect to the latent, through generator, aligner and
    predictor, ``[N, *shape]``); drivers compute it only for such editors, since a backward
    pass costs about as much as the forward one. Drivers also pass ``extra["start_value"]``
    (``[N]``, the score of the start latent) and ``extra["done"]`` (``[N]`` bool, latents
    whose episode has ended; the driver keeps them where they are whatever is proposed).
    """

    registry_kind: ClassVar[str] = "editors"
    uses_gradient: ClassVar[bool] = False

    attribute: str
    space: str

    @abstractmethod
    def propose(self, state: EditState) -> Tensor:
        """The next latents ``[N, *shape]``."""
