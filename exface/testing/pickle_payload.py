"""A picklable object whose unpickling runs code: for tests that loaders never execute pickled code.

``CodeRunningPayload(marker)`` pickles as a call of :func:`_run_marker`, which writes
``"executed"`` to the file ``marker``; a test stores it in a checkpoint, loads the file through
the code under test and checks that ``marker`` does not exist (and, as a control, that an
unrestricted ``torch.load(..., weights_only=False)`` creates it).
"""

from __future__ import annotations

__all__ = ["CodeRunningPayload"]


def _run_marker(marker: str) -> str:
    """Module-level so pickle can name it; the file it writes proves code from a pickle ran."""
    with open(marker, "w") as f:
        f.write("executed")
    return marker


class CodeRunningPayload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_run_marker, (self.marker,))
