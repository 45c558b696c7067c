"""Reading torch files that users hand to exface: tensors and plain data only, bad files named.

Every checkpoint, boundaries file or policy exface reads goes through :func:`read_torch_file`:
``torch.load(weights_only=True)`` (no code from a pickle ever runs), and a damaged, truncated
or code-carrying file becomes one :class:`~exface.errors.ExfaceFileError` that names the
file and the fix, instead of torch's paragraph.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from exface.errors import ExfaceFileError

__all__ = ["read_torch_file"]


def _short_reason(err: BaseException) -> str:
    """One line of why torch could not read a file (torch's own text runs to a paragraph)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = [ln for ln in lines
              if ln.startswith("Unsupported operand") or ("WeightsUnpickler error:" in ln and not ln.endswith(":"))]
    line = detail[-1] if detail else (lines[0] if lines else "")
    line = line.split(". ")[0].rstrip(".")  # "PytorchStreamReader failed ...: failed finding central directory"
    return f"{type(err).__name__}: {line[:200]}" if line else type(err).__name__


def read_torch_file(path: Path, what: str, kind: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)``, with a damaged or refused file as an ExfaceFileError.

    ``what`` names the file in the message ("the boundary file"), ``kind`` what it should
    be ("boundaries"), ``fix`` how to get a good one. torch's exception stays chained.
    A pickle that asks for code (a refused global) is named as such, never loaded.
    """
    try:
        with warnings.catch_warnings():  # garbage often "looks like" another pickle protocol
            warnings.filterwarnings("ignore", message=r".*pickle protocol.*")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad bytes
        refused = re.search(r"GLOBAL (\S+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if refused:
            raise ExfaceFileError(
                f"{what} pickles {refused.group(1)}, not only tensors and plain data; it is not loaded, since "
                f"unpickling it could run code from the file", where=path, fix=fix,
            ) from err
        raise ExfaceFileError(f"{what} is not a readable {kind} file (damaged or truncated?): {_short_reason(err)}",
                              where=path, fix=fix) from err
