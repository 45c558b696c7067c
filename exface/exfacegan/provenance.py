"""Content fingerprints: what a bank, a boundaries file or a part *is*, not where it lies.

Paths move (``EXFACE_HOME``, a symlink, another machine); content does not. A part is
recorded as its class, its JSON-able init arguments and the sha256 of its weights
(:func:`part_fingerprint`); two records differ (:func:`part_differences`) when the class,
the weights or a non-path argument differs. File-valued arguments (``pkl``, ``weights``)
are kept in the record to document the run but are not compared: their content is, through
the weights digest. Both ``exface fit`` (the bank) and ``exface synthesize`` use this one
comparison, so they agree on what counts as a difference.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

__all__ = ["tensor_digest", "module_digest", "part_record", "part_fingerprint", "part_differences",
           "is_path_value"]

_FILE_SUFFIXES = {".pkl", ".pt", ".pth", ".bin", ".ckpt", ".onnx", ".safetensors", ".json", ".npz", ".npy", ".h5"}


def _update(h, obj: Any) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(str(k).encode() + b":")
            _update(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _update(h, v)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def tensor_digest(obj: Any) -> str:
    """sha256 (hex) of tensors / nested dicts and lists of them, by value (not file bytes)."""
    h = hashlib.sha256()
    _update(h, obj)
    return h.hexdigest()


def module_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (its weights, whatever file they came from)."""
    return tensor_digest(dict(module.state_dict()))


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (tuple, list)):
        items = [_jsonable(x) for x in v]
        return _SKIP if any(x is _SKIP for x in items) else items
    if isinstance(v, dict):
        out = {str(k): _jsonable(x) for k, x in v.items()}
        return _SKIP if any(x is _SKIP for x in out.values()) else out
    return _SKIP


_SKIP = object()


def part_record(part: Any) -> dict[str, Any]:
    """``{"class": name, "args": {...}}``: the init arguments a part kept as attributes.

    Each parameter of the class's ``__init__`` is looked up on the instance as ``name`` or
    ``name_path`` (e.g. ``weights`` / ``weights_path``); JSON-able values are recorded,
    others (modules, tensors) are skipped.
    """
    args: dict[str, Any] = {}
    try:
        params = inspect.signature(type(part).__init__).parameters
    except (TypeError, ValueError):
        params = {}
    for name in params:
        if name == "self":
            continue
        for attr in (name, f"{name}_path"):
            if attr in part.__dict__ or hasattr(type(part), attr) and not callable(getattr(type(part), attr)):
                try:
                    value = _jsonable(getattr(part, attr))
                except Exception:  # a property that fails is simply not recorded
                    value = _SKIP
                if value is not _SKIP and value is not None:
                    args[name] = value
                break
    return {"class": type(part).__name__, "args": args}


def part_fingerprint(part: Any) -> dict[str, Any]:
    """:func:`part_record` plus ``weights_sha256`` (for ``nn.Module`` parts)."""
    rec = part_record(part)
    if isinstance(part, nn.Module):
        rec["weights_sha256"] = module_digest(part)
    return rec


def is_path_value(value: Any) -> bool:
    """A string argument that names a file (compared by content, not by name)."""
    if not isinstance(value, str) or not value:
        return False
    p = Path(value).expanduser()
    return p.suffix.lower() in _FILE_SUFFIXES or "/" in value or p.exists()


def part_differences(role: str, recorded: Mapping[str, Any] | None, given: Mapping[str, Any] | None) -> list[str]:
    """Human-readable differences between two part records (empty when they are the same part).

    Compared: the class; ``weights_sha256`` when both records have it; every argument both
    have, except file paths when the weights digests are known (then the content decides).
    """
    if recorded is None or given is None:
        return [] if recorded == given else [f"{role}: recorded {_cls(recorded)}, given {_cls(given)}"]
    if recorded.get("class") != given.get("class"):
        return [f"{role}: recorded {recorded.get('class')}, given {given.get('class')}"]
    out = []
    both_digests = "weights_sha256" in recorded and "weights_sha256" in given
    if both_digests and recorded["weights_sha256"] != given["weights_sha256"]:
        out.append(f"{role}.weights: other weights (sha256 {recorded['weights_sha256'][:12]}... recorded, "
                   f"{given['weights_sha256'][:12]}... given)")
    ra, ga = recorded.get("args", {}), given.get("args", {})
    for k in sorted(set(ra) & set(ga)):
        if ra[k] == ga[k]:
            continue
        if both_digests and (is_path_value(ra[k]) or is_path_value(ga[k])):
            continue  # the same weights at another path are the same part
        out.append(f"{role}.{k}: recorded {ra[k]!r}, given {ga[k]!r}")
    return out


def _cls(rec: Any) -> Any:
    if isinstance(rec, list):
        return [r.get("class") for r in rec]
    return (rec or {}).get("class")
