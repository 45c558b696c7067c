"""Edit directions from an attribute-boundary file: plain, or conditioned on other attributes.

A conditional direction (InterFaceGAN Sec. 2.3, ``project_boundary``) is the primary normal
with its components along the condition normals removed, so moving along it leaves the
condition attributes' signed distances unchanged. InterFaceGAN writes the projection out
for one and two conditions and solves the normal equations for more (genforce/interfacegan
f717ada, 2022; its earlier ``project_boundary`` raised NotImplementedError beyond two);
here every case is the same exact orthogonal projection onto the complement of the
conditions' span (least squares in float64), which is what those formulas compute.

Boundary files record the bank's generator (class, arguments and weights digest:
``meta["generator"]``), its dimensions, the bank's truncation (``meta["bank"]``) and the
latent space (``Boundaries.space``); :func:`check_applicable` refuses to apply one to
another generator, another checkpoint of the same architecture, another truncation or
another space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from exface.boundaries.base import Boundaries
from exface.errors import ExfaceError, ExfaceFileError
from exface.exfacegan.provenance import part_differences, part_fingerprint
from exface.generators.base import Generator

__all__ = ["EditDirection", "load_boundaries", "project_boundary", "select_direction", "check_applicable", "is_per_layer",
           "available_layers"]


def load_boundaries(path: str | Path) -> Boundaries:
    """A boundary file, with its path in ``meta["path"]`` (for error messages)."""
    path = Path(path)
    if not path.is_file():
        raise ExfaceFileError("the boundary file does not exist", where=path,
                              fix="fit boundaries first (`exface interfacegan-fit --config recipes/interfacegan_...fit.yaml`)")
    b = Boundaries.load(path)
    b.meta["path"] = str(path)
    return b


def project_boundary(primary: Tensor, conditions: Tensor) -> Tensor:
    """The unit vector closest to ``primary`` ``[d]`` that is orthogonal to every row of ``conditions`` ``[k, d]``.

    ``P n / |P n|`` with ``P = I - C^T (C C^T)^+ C``: the orthogonal projection onto the
    complement of the conditions' span (conditions need not be unit or independent).
    """
    n = torch.as_tensor(primary).double().reshape(-1)
    c = torch.as_tensor(conditions).double().reshape(-1, n.shape[0]) if torch.as_tensor(conditions).numel() else None
    if c is None:
        return (n / n.norm()).float()
    # coefficients a minimizing |n - C^T a|: the residual is the projection (lstsq is exact for dependent rows too)
    a = torch.linalg.lstsq(c.T, n[:, None], driver="gelsd").solution
    p = n - (c.T @ a)[:, 0]
    p = p - c.T @ torch.linalg.lstsq(c.T, p[:, None], driver="gelsd").solution[:, 0]  # one refinement step
    norm = p.norm()
    if norm < 1e-8 * n.norm():
        raise ValueError("the primary boundary lies in the span of its conditions: nothing is left to edit along")
    return (p / norm).float()


@dataclass
class EditDirection:
    """A unit normal ``[d]`` with its offset, for signed distances ``x . normal + offset``.

    ``name`` is the edited attribute, ``conditions`` the attributes held fixed; ``layer``
    is the w+ layer a per-layer boundary belongs to (None: all of the latent).
    """

    name: str
    normal: Tensor
    offset: float
    space: str
    conditions: list[str] = field(default_factory=list)
    layer: int | None = None

    @property
    def label(self) -> str:
        """``age``, ``age@layer 3`` (a per-layer w+ boundary), ``age given gender_male``."""
        at = f"@layer {self.layer}" if self.layer is not None else ""
        return self.name + at + (f" given {', '.join(self.conditions)}" if self.conditions else "")


def is_per_layer(boundaries: Boundaries) -> bool:
    """Whether the file holds one w+ boundary per layer (``interfacegan-fit --per_layer true``)."""
    layers = boundaries.meta.get("layers") or []
    return bool(boundaries.meta.get("per_layer")) or any(l is not None for l in layers)


def available_layers(boundaries: Boundaries, name: str | None = None) -> list[int]:
    """The layers the file has a boundary for (of ``name``, or of any attribute)."""
    names = list(boundaries.meta.get("attribute_names") or [])
    layers = list(boundaries.meta.get("layers") or [None] * len(names))
    return sorted({l for a, l in zip(names, layers) if l is not None and (name is None or a == name)})


def _row(boundaries: Boundaries, name: str, layer: int | None, layer_option: str = "--layer") -> int:
    names = list(boundaries.meta.get("attribute_names") or [])
    layers = list(boundaries.meta.get("layers") or [None] * len(names))
    where = boundaries.meta.get("path")
    if name in names and is_per_layer(boundaries) and layer is None:
        have = available_layers(boundaries, name)
        raise ExfaceError(
            f"the boundary file holds per-layer w+ boundaries ({name!r} at layers {have}) and no layer was chosen: "
            f"editing would have to pick one layer silently",
            where=where,
            fix=f"pass {layer_option} K with K one of {have} to edit that layer's boundary (it moves that layer only), "
                f"or fit one boundary for the whole w+ latent (`exface interfacegan-fit --space w+ --per_layer false`)",
        )
    if name in names and layer is not None and not is_per_layer(boundaries):
        raise ExfaceError(
            f"{layer_option} {layer} was given, but the boundary file holds one boundary per attribute for the whole "
            f"{boundaries.space} latent, not per-layer boundaries",
            where=where,
            fix=f"drop {layer_option}, or fit per-layer boundaries (`exface interfacegan-fit --space w+ --per_layer true`)",
        )
    rows = [i for i, (a, l) in enumerate(zip(names, layers)) if a == name and (layer is None or l == layer)]
    if not rows:
        if name in names and layer is not None:
            raise ExfaceError(
                f"the boundary file has no boundary for {name!r} at layer {layer}; it has layers "
                f"{available_layers(boundaries, name)}",
                where=where, fix=f"pass {layer_option} with one of those layers",
            )
        at = f" at layer {layer}" if layer is not None else ""
        raise ExfaceError(
            f"the boundary file has no boundary for {name!r}{at}; it has {sorted(set(names)) or 'none'}",
            where=where,
            fix=f"edit one of those, or fit {name!r} with `exface interfacegan-fit` (attributes: [..., {name}]; "
                f"the bank needs a predictor that outputs {name!r})",
        )
    return rows[0]


def select_direction(boundaries: Boundaries, attribute: str, conditions: Sequence[str] = (),
                     layer: int | None = None, layer_option: str = "--layer") -> EditDirection:
    """The direction that edits ``attribute``, orthogonal to the ``conditions``' normals.

    ``layer``: for per-layer w+ boundaries (``meta["per_layer"]``), the layer whose boundary
    is edited along (only that layer of the latent moves, InterFaceGAN's layer-wise edit; the
    conditions are that layer's boundaries). Per-layer boundaries without a ``layer`` are
    refused (an :class:`~exface.errors.ExfaceError` listing the layers and naming
    ``layer_option``, the option as the caller spells it), as is a ``layer`` for boundaries
    of the whole latent: no layer is ever picked silently.
    """
    conditions = [c for c in conditions]
    if attribute in conditions:
        raise ValueError(f"{attribute!r} cannot be edited while held fixed; remove it from the conditions")
    i = _row(boundaries, attribute, layer, layer_option)
    normal, offset = boundaries.normals[i].float(), float(boundaries.offsets[i])
    layer_i = (boundaries.meta.get("layers") or [None] * len(boundaries))[i]
    if conditions:
        cond = torch.stack([boundaries.normals[_row(boundaries, c, layer_i, layer_option)] for c in conditions])
        projected = project_boundary(normal, cond)
        # the conditional hyperplane passes through the primary's point nearest the origin, -offset * n
        offset = offset * float(projected.double() @ normal.double())
        normal = projected
    return EditDirection(attribute, normal, offset, boundaries.space, list(conditions), layer_i)


def _truncation_differences(boundaries: Boundaries, generator: Generator, listed: list[str]) -> list[str]:
    """The bank's truncation (how its scored images were rendered) against the generator's."""
    bank = boundaries.meta.get("bank") or {}
    out = []
    for key, cast in (("truncation_psi", float), ("truncation_cutoff", int)):
        if key not in bank or any(d.startswith(f"generator.{key}:") for d in listed):
            continue  # not recorded (older files), or already named by the generator's arguments
        mine = getattr(generator, key, None)
        mine = None if mine is None else cast(mine)
        if bank[key] != mine:
            out.append(f"{key}: the bank rendered with {bank[key]!r}, this generator renders with {mine!r}")
    return out


def check_applicable(boundaries: Boundaries, generator: Generator, space: str | None = None) -> None:
    """Refuse a boundary file made for another generator, checkpoint, truncation or latent space.

    The generator is compared with the record of the bank the boundaries were fit on by
    :func:`~exface.exfacegan.provenance.part_differences` (class, weights digest, non-path
    arguments; a checkpoint at another path with the same weights is the same generator),
    and the bank's ``truncation_psi`` / ``truncation_cutoff`` with the generator's: the
    scores the boundaries separate were taken on images rendered with that truncation.
    """
    path = boundaries.meta.get("path")
    rec = boundaries.meta.get("generator") or {}
    want = rec.get("class")
    got = type(generator).__name__
    if want is not None and want != got:
        raise ExfaceError(
            f"the boundaries were learned in the latent space of {want}, not {got}",
            where=path,
            fix=f"pass the generator they were fit on ({rec.get('args', {})}), or fit boundaries for {got} "
                f"with `exface interfacegan-fit`",
        )
    dims = boundaries.meta.get("generator_dims") or {}
    mine = {"z_dim": int(generator.z_dim), "w_dim": int(generator.w_dim), "num_ws": int(generator.num_ws)}
    diff = {k: (dims[k], mine[k]) for k in dims.keys() & mine.keys() if dims[k] != mine[k]}
    if diff:
        raise ExfaceError(
            f"the boundaries were learned for a {want} with {dims}, this one has {mine}: they belong to another checkpoint",
            where=path, fix="pass that checkpoint, or fit boundaries for this one",
        )
    diffs = part_differences("generator", rec, part_fingerprint(generator)) if rec else []
    diffs += _truncation_differences(boundaries, generator, diffs)
    if diffs:
        shown = diffs[:4] + ([f"... and {len(diffs) - 4} more"] if len(diffs) > 4 else [])
        bank = (boundaries.meta.get("bank") or {}).get("root")
        raise ExfaceError(
            f"the boundaries were learned with another {got} checkpoint or setting than this one: " + "; ".join(shown),
            where=path,
            fix=f"pass the generator of the bank they were fit on ({bank or 'see the file'}: {rec.get('args', {})}), "
                f"or fit boundaries for this one with `exface interfacegan-fit` (a new bank_dir)",
        )
    if space is not None and space != boundaries.space:
        raise ExfaceError(
            f"the boundaries live in space {boundaries.space!r}, the edit asks for {space!r}",
            where=path,
            fix=f"use space {boundaries.space!r}, or fit boundaries in {space!r} (`exface interfacegan-fit --space {space}`)",
        )
    generator.check_space("w+" if boundaries.space == "w+" else boundaries.space)
