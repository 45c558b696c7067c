"""The boundary-learner contract: fit R linear boundaries over one latent bank."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import Tensor

from exface.errors import ExfaceFileError, ExfaceStateError
from exface.torch_files import read_torch_file
from exface.registry import Registrable

__all__ = ["Boundaries", "BoundaryLearner", "boundary_setting_differences", "check_boundary_inputs",
           "hyperplanes_to_raw", "latent_split", "refuse_other_boundaries"]

#: ``meta`` keys that measure a fit (or are added on load) rather than say what made it:
#: never compared when deciding whether a boundary file may be replaced
RESULT_META_KEYS = frozenset({"val_accuracy", "remaining_accuracy", "path"})

_FIX_REMAKE = ("re-create it with the command that made it (`exface fit --config <fit recipe>` for identity "
               "boundaries, `exface interfacegan-fit --config <recipe>` for attribute boundaries), or copy it again")


@dataclass
class Boundaries:
    """R hyperplanes ``n_r . x + b_r = 0`` in one latent space.

    ``normals`` are unit vectors ``[R, d]`` and ``offsets`` ``[R]`` are expressed in the
    raw space named by ``space`` ("z", "w", ...): any scaling a learner used internally is
    folded back, so ``signed_distance(x) = x @ n + b`` holds for raw latents.
    ``val_balanced_accuracy`` and ``val_auc`` (``[R]``) come from held-out latents.
    """

    normals: Tensor
    offsets: Tensor
    space: str
    val_balanced_accuracy: Tensor
    val_auc: Tensor
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.normals.shape[0]

    def signed_distance(self, x: Tensor, index: Tensor | int | None = None) -> Tensor:
        """``[N, R]`` distances of every x to every boundary (or ``[N]`` for one index)."""
        if index is None:
            return x @ self.normals.T.to(x) + self.offsets.to(x)
        return (x * self.normals[index].to(x)).sum(-1) + self.offsets[index].to(x)

    def save(self, path: str | Path, setting: str = "save_path") -> None:
        """Write the boundaries to ``path`` atomically (a temporary file renamed into place).

        An existing boundary file at ``path`` is replaced only when it was made with the same
        settings and inputs (its ``meta`` without the measured results, its space and shape);
        otherwise :class:`~exface.errors.ExfaceStateError` names the differences and the old
        file stays as it was. ``setting`` names the option that chose ``path`` (for the fix).
        """
        from exface.exfacegan.run_files import atomic_torch_save  # here: exface.exfacegan imports this module

        path = Path(path)
        refuse_other_boundaries(path, self.meta, space=self.space, shape=tuple(self.normals.shape), setting=setting)
        atomic_torch_save({k: getattr(self, k) for k in self.__dataclass_fields__}, path)

    @classmethod
    def load(cls, path: str | Path) -> "Boundaries":
        """A boundary file of :meth:`save`; a missing, damaged or foreign file raises ExfaceFileError."""
        path = Path(path)
        if not path.is_file():
            raise ExfaceFileError("the boundary file does not exist", where=path,
                                  fix="fit boundaries first (`exface fit --config <fit recipe>`, or `exface "
                                      "interfacegan-fit` for attribute boundaries) or pass the right path")
        data = read_torch_file(path, "the boundary file", "boundaries", _FIX_REMAKE)
        required = ("normals", "offsets", "space", "val_balanced_accuracy", "val_auc")
        missing = [k for k in required if k not in data] if isinstance(data, dict) else list(required)
        if missing:
            held = sorted(map(str, data))[:6] if isinstance(data, dict) else type(data).__name__
            raise ExfaceFileError(
                f"the file is not an exface boundary file (it lacks {', '.join(missing)}; it holds {held})",
                where=path, fix="pass a boundaries.pt written by `exface fit` or `exface interfacegan-fit`",
            )
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        return bool(((a == b) | (a.isnan() & b.isnan())).all()) if a.is_floating_point() else torch.equal(a, b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return _flat(a).keys() == _flat(b).keys() and all(_same(v, _flat(b)[k]) for k, v in _flat(a).items())
    try:
        return bool(a == b)
    except Exception:
        return False


_ABSENT = object()


def _show(v: Any) -> str:
    text = "(absent)" if v is _ABSENT else repr(v.tolist() if isinstance(v, Tensor) and v.numel() <= 8 else v)
    return text if len(text) <= 70 else text[:67] + "..."


def boundary_setting_differences(recorded: Boundaries, meta: Mapping, space: str | None = None,
                                 shape: tuple[int, ...] | None = None, complete: bool = True,
                                 optional: Mapping | None = None) -> list[str]:
    """What differs between the settings and inputs ``recorded`` was made with and the given ones.

    Compared: ``space`` and ``shape`` (when given) and every ``meta`` key (nested dicts key by
    key, ``bank.root``), except the measured results (:data:`RESULT_META_KEYS`) and keys
    starting with ``_`` (the configuration system's bookkeeping). ``complete=False`` compares
    only the keys ``meta`` has (a check before the fit, when not every setting is known yet);
    ``optional`` values are compared only where ``recorded`` has the key.
    """
    out = []
    if space is not None and recorded.space != space:
        out.append(f"space: recorded {recorded.space!r}, given {space!r}")
    if shape is not None and tuple(recorded.normals.shape) != tuple(shape):
        out.append(f"shape (boundaries x dim): recorded {list(recorded.normals.shape)}, given {list(shape)}")

    def keep(k: str) -> bool:
        return not k.startswith("_") and k.split(".")[0] not in RESULT_META_KEYS

    old = {k: v for k, v in _flat(recorded.meta or {}).items() if keep(k)}
    new = {k: v for k, v in _flat(meta or {}).items() if keep(k)}
    keys = list(new) + [k for k in old if k not in new] if complete else list(new)
    for k, v in _flat(optional or {}).items():
        if keep(k) and k in old and k not in new:
            new[k] = v
            keys.append(k)
    for k in keys:
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if (a is _ABSENT) != (b is _ABSENT) or (a is not _ABSENT and not _same(a, b)):
            label = f"meta.{k}" if k in ("space", "shape") and space is not None else k
            out.append(f"{label}: recorded {_show(a)}, given {_show(b)}")
    return out


def refuse_other_boundaries(path: str | Path, meta: Mapping, space: str | None = None,
                            shape: tuple[int, ...] | None = None, complete: bool = True,
                            optional: Mapping | None = None, setting: str = "save_path") -> None:
    """Raise ExfaceStateError when ``path`` holds boundaries made with other settings or inputs.

    Nothing to do when ``path`` does not exist. A learner calls this before fitting (with
    what it knows then, ``complete=False``) so that a run that could not save stops before
    the work; :meth:`Boundaries.save` calls it with everything. An existing file that is not
    a readable boundary file is not replaced either. Arguments as
    :func:`boundary_setting_differences`; ``setting`` names the option that chose ``path``.
    """
    path = Path(path)
    if not path.exists():
        return
    fix = (f"pass another {setting} for the new boundaries, or delete {path} if the old boundaries (and anything "
           f"made from them) are no longer needed")
    if path.is_dir():
        raise ExfaceStateError(f"{path.name} is a folder, not a boundary file", where=path,
                               fix=f"pass a file path as {setting} (e.g. {path / 'boundaries.pt'})")
    try:
        recorded = Boundaries.load(path)
    except ExfaceFileError as err:
        raise ExfaceStateError(f"{path.name} already exists and is not a readable boundary file ({err.problem}); "
                               f"it is not overwritten", where=path, fix=fix) from err
    diffs = boundary_setting_differences(recorded, meta, space, shape, complete, optional)
    if diffs:
        shown = diffs[:10] + ([f"... and {len(diffs) - 10} more"] if len(diffs) > 10 else [])
        raise ExfaceStateError(
            f"{path.name} already holds boundaries made with other settings or inputs; they are not overwritten "
            f"(a dataset synthesized from them could no longer be resumed or checked). Differences:\n    "
            + "\n    ".join(shown), where=path, fix=fix,
        )


class BoundaryLearner(Registrable, ABC):
    """Learns one linear boundary per reference from a shared bank of latents.

    Contract: :meth:`fit` takes latents ``x`` ``[N, d]`` and labels ``y`` ``[R, N]``
    (1 = positive / identity-similar, 0 = negative, -1 = ignore this latent for that
    reference) and returns :class:`Boundaries` with unit normals in the raw space of ``x``.
    """

    registry_kind: ClassVar[str] = "boundaries"

    @abstractmethod
    def fit(self, x: Tensor, y: Tensor, space: str = "w") -> Boundaries:
        """Fit all R boundaries."""


def check_boundary_inputs(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Validate the learner contract's inputs; returns ``x float32 [N, d]``, ``y int8 [R, N]``."""
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"latents x must be a float [N, d] array, got {x.dtype} of shape {tuple(x.shape)}")
    if y.ndim == 1:
        y = y[None]
    if y.ndim != 2 or y.shape[1] != x.shape[0]:
        raise ValueError(
            f"labels y must be [R, N] with N = {x.shape[0]} latents (one row per reference), "
            f"got shape {tuple(y.shape)}; transpose it if it is [N, R]"
        )
    if y.is_floating_point():
        raise ValueError(f"labels y must be integers in {{1, 0, -1}}, got dtype {y.dtype}")
    bad = (y != 1) & (y != 0) & (y != -1)
    if bad.any():
        raise ValueError(f"labels y must be 1 (positive), 0 (negative) or -1 (ignore); found {y[bad][0].item()}")
    x = x.detach().float()
    if not torch.isfinite(x).all():
        raise ValueError("latents x contain NaN or inf")
    return x, y.detach().to(torch.int8)


def latent_split(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of ``n`` latent indices into (train, val)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    if n_val < 2 or n - n_val < 2:
        raise ValueError(f"{n} latents are too few to hold out {val_fraction:.0%} for validation")
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def hyperplanes_to_raw(
    weights: Tensor, biases: Tensor, scale: Tensor | None = None, shift: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Fold a hyperplane fitted on ``x' = scale * x + shift`` back to raw ``x``; unit normals.

    ``w . x' + b = (w * scale) . x + (b + w . shift)``; the result is divided by
    ``|w * scale|`` so normals have unit length and signed distances are Euclidean in
    raw space. Min-max scaling to [-1, 1] is ``scale = 2 / (hi - lo)``,
    ``shift = -1 - lo * scale``; standardization is ``scale = 1 / sigma``,
    ``shift = -mu / sigma``. Inputs ``weights [R, d]``, ``biases [R]``.
    """
    w = weights.double()
    b = biases.double()
    if scale is not None:
        w_raw = w * scale.double()
    else:
        w_raw = w
    b_raw = b + (w * shift.double()).sum(1) if shift is not None else b
    norm = w_raw.norm(dim=1)
    if (norm == 0).any():
        bad = (norm == 0).nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"boundaries {bad} have a zero normal (the classifier learned nothing); check that "
            "those references have both positive and negative latents and a large enough C"
        )
    return (w_raw / norm[:, None]).float(), (b_raw / norm).float()
