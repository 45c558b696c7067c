"""One error type for expected failures: the problem, where (file or key), and the fix.

Raise :class:`ExfaceError` (or a subclass) for anything a user can cause and fix: a
missing or damaged file, a bad setting, data that do not belong together. The ``exface``
command prints it on one screen (``exface: error: <problem>`` / ``  in: <where>`` /
``  fix: <fix>``) and exits with status 1; ``EXFACE_DEBUG=1`` shows the traceback too.

It subclasses :class:`ValueError` so code (and tests) that catch ``ValueError`` for bad
input keep working; the specific subclasses add the matching built-in type
(``FileNotFoundError`` for a missing file, ``RuntimeError`` for a run-state conflict)::

    raise ExfaceError("chunk 3 is truncated", where="runs/bank/chunk_00003.pt",
                      fix="re-run the same command; the chunk is recomputed")
"""

from __future__ import annotations

__all__ = ["ExfaceError", "ExfaceFileError", "ExfaceStateError", "format_error"]


class ExfaceError(ValueError):
    """An expected failure: ``problem`` (what is wrong), ``where`` (file or key), ``fix``."""

    def __init__(self, problem: str, where: object = None, fix: str | None = None) -> None:
        self.problem = str(problem)
        self.where = None if where is None else str(where)
        self.fix = fix
        super().__init__(self._text())

    def _text(self) -> str:
        lines = [self.problem]
        if self.where:
            lines.append(f"in: {self.where}")
        if self.fix:
            lines.append(f"fix: {self.fix}")
        return "\n  ".join(lines)

    def __str__(self) -> str:
        return self._text()

    def __reduce__(self):  # picklable across DDP / subprocess boundaries
        return (type(self), (self.problem, self.where, self.fix))


class ExfaceFileError(ExfaceError, FileNotFoundError):
    """A file that is missing, unreadable, truncated or not what its name says."""

    def __init__(self, problem: str, where: object = None, fix: str | None = None) -> None:
        ExfaceError.__init__(self, problem, where, fix)
        self.filename = self.where

    def __str__(self) -> str:  # OSError.__str__ would print errno/strerror
        return self._text()


class ExfaceStateError(ExfaceError, RuntimeError):
    """A run-state conflict: another run holds the folder, a resume with other settings..."""


def format_error(err: BaseException, max_lines: int = 20) -> str:
    """``err`` as at most ``max_lines`` lines for the terminal (no traceback)."""
    if isinstance(err, ExfaceError):
        text = str(err)
    else:
        msg = str(err) if not isinstance(err, KeyError) else (repr(err.args[0]) if err.args else "")
        text = f"{type(err).__name__}: {msg}" if msg else type(err).__name__
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [f"... ({len(lines) - max_lines + 1} more lines cut)"]
    return "\n".join(ln[:400] for ln in lines)
