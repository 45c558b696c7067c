"""Moving latents along a boundary normal: InterFaceGAN's ``linear_interpolate`` and a stepwise editor.

:func:`linear_interpolate` follows genforce/interfacegan ``utils/manipulator.py``: for z and w
latents ``[N, d]`` the ``steps`` outputs sit at the *absolute* signed distances
``linspace(start_distance, end_distance, steps)`` from the boundary (each latent is first
projected onto the hyperplane, then moved along the normal); for w+ latents
``[N, num_ws, w_dim]`` the distances are *offsets* added to the latent. Deviation: the
signed distance includes the boundary's offset (``x . n + b``, the learned hyperplane)
where InterFaceGAN uses ``x . n`` (a parallel hyperplane through the origin).

:class:`BoundaryEditor` is the same direction as a :class:`~exface.editing.base.LatentEditor`:
at each step it moves toward the target value by at most ``step_size`` along the normal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from exface.boundaries.base import Boundaries
from exface.editing.base import EditState, LatentEditor
from exface.errors import ExfaceError
from exface.interfacegan.directions import EditDirection, load_boundaries, select_direction

__all__ = ["linear_interpolate", "distance_steps", "signed_distance", "BoundaryEditor"]


def distance_steps(start_distance: float, end_distance: float, steps: int) -> Tensor:
    """``linspace(start, end, steps)``, refusing a range with no steps."""
    if int(steps) < 2 or not (start_distance == start_distance and end_distance == end_distance):
        raise ExfaceError(
            f"steps={steps} from {start_distance} to {end_distance} is no distance range", where="steps",
            fix="pass steps >= 2 (e.g. --steps 7 for -3..3 in steps of 1)",
        )
    if start_distance == end_distance:
        raise ExfaceError(
            f"start_distance and end_distance are both {start_distance}: the edit would not move",
            where="start_distance / end_distance", fix="pass two different distances (e.g. --start_distance -3 --end_distance 3)",
        )
    return torch.linspace(float(start_distance), float(end_distance), int(steps))


def _layer_normal(direction: EditDirection, latent: Tensor) -> Tensor:
    """The normal shaped like one latent (``[d]``, or ``[num_ws, w_dim]`` for w+)."""
    n = direction.normal.to(latent)
    if latent.ndim == 2:
        if n.numel() != latent.shape[1]:
            raise ValueError(f"boundary has {n.numel()} dimensions, the latents {latent.shape[1]}")
        return n
    num_ws, w_dim = latent.shape[1:]
    if n.numel() == num_ws * w_dim:
        return n.reshape(num_ws, w_dim)
    if n.numel() != w_dim:
        raise ValueError(f"boundary has {n.numel()} dimensions; w+ latents need {w_dim} or {num_ws * w_dim}")
    out = torch.zeros(num_ws, w_dim, dtype=latent.dtype, device=latent.device)
    if direction.layer is None:
        out[:] = n  # every layer moves alike, as InterFaceGAN does for w+
    else:
        out[direction.layer] = n
    return out


def signed_distance(latent: Tensor, direction: EditDirection) -> Tensor:
    """``[N]`` signed distances ``x . n + b`` (z/w), or ``(x - 0) . n`` along a w+ direction."""
    n = _layer_normal(direction, latent)
    flat = latent.reshape(latent.shape[0], -1)
    unit = n.reshape(-1) / n.reshape(-1).norm()
    return flat @ unit + (direction.offset if latent.ndim == 2 else 0.0)


def linear_interpolate(latent: Tensor, direction: EditDirection, start_distance: float = -3.0,
                       end_distance: float = 3.0, steps: int = 10) -> Tensor:
    """``[N, steps, *shape]`` edited latents (see the module docstring for z/w vs w+)."""
    lin = distance_steps(start_distance, end_distance, steps).to(latent)
    n = _layer_normal(direction, latent)
    if latent.ndim == 2:
        amount = lin[None, :] - signed_distance(latent, direction)[:, None]  # [N, S]: to the absolute distances
    elif latent.ndim == 3:
        amount = lin[None, :].expand(latent.shape[0], -1)  # relative offsets
    else:
        raise ValueError(f"latents must be [N, d] (z, w) or [N, num_ws, w_dim] (w+), got {tuple(latent.shape)}")
    shape = amount.shape + (1,) * (latent.ndim - 1)
    return latent[:, None] + amount.reshape(shape) * n


class BoundaryEditor(LatentEditor):
    """Steps along an attribute boundary's normal (optionally conditioned) toward the target.

    Each :meth:`propose` moves every latent by ``step_size`` along the normal, toward higher
    scores when the value is below the target and lower when above (the positive side of an
    InterFaceGAN boundary holds the high scores). With ``slope`` (score units per unit of
    distance, e.g. from the re-scoring report) a step is shortened to ``|gap| / slope`` so
    it does not overshoot. The total travel from the start latent is capped at
    ``max_distance``; latents within ``tolerance`` of the target (or with no score) stay.

    Args:
        boundaries: a boundary file (``exface interfacegan-fit``) or loaded ``Boundaries``.
        attribute: the attribute to steer (a boundary of the file).
        conditions: attributes whose boundaries the direction is made orthogonal to.
        layer: for per-layer w+ boundaries, the layer's boundary to use (only that layer moves); required for
            them: per-layer boundaries without a layer are refused (:class:`~exface.errors.ExfaceError` listing
            the layers), never edited at a silently chosen one.
    """

    def __init__(self, boundaries: str | Path | Boundaries, attribute: str, conditions: Sequence[str] = (),
                 step_size: float = 0.5, slope: float | None = None, max_distance: float | None = 3.0,
                 tolerance: float = 0.0, layer: int | None = None) -> None:
        if step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        b = boundaries if isinstance(boundaries, Boundaries) else load_boundaries(boundaries)
        self.boundaries_path = None if isinstance(boundaries, Boundaries) else str(boundaries)
        self.boundaries = b  # for check_applicable against the driver's generator (the age report does)
        self.direction = select_direction(b, attribute, conditions, layer, layer_option="layer (BoundaryEditor init_args)")
        self.attribute = attribute
        self.conditions = list(conditions)
        self.space = b.space
        self.step_size = float(step_size)
        self.slope = slope
        self.max_distance = max_distance
        self.tolerance = float(tolerance)

    def propose(self, state: EditState) -> Tensor:
        latent = state.latent
        n = _layer_normal(self.direction, latent)  # unit for z/w; for w+ one unit normal per moved layer
        gap = (state.target - state.value).to(latent)
        step = torch.full_like(gap, self.step_size)
        if self.slope is not None and self.slope != 0:
            step = torch.minimum(step, gap.abs() / abs(self.slope))
        sign = torch.sign(gap) * (1.0 if self.slope is None or self.slope > 0 else -1.0)
        move = torch.where(torch.isfinite(gap) & (gap.abs() > self.tolerance), sign * step, torch.zeros_like(step))
        flat = n.reshape(-1)
        travelled = (latent - state.start_latent).reshape(len(latent), -1) @ flat / (flat @ flat)
        if self.max_distance is not None:
            move = (travelled + move).clamp(-self.max_distance, self.max_distance) - travelled
        return latent + move.reshape((-1,) + (1,) * (latent.ndim - 1)) * n
