"""Safe files for resumable runs: atomic writes, a folder lock, crash leftovers, disk full.

Every output file of a bank build or a synthesis run is written to a temporary name that
carries the writer's process id (``.partial-<pid>-<name>``) and renamed into place, so a
file under its final name is always complete. A crash leaves only ``.partial-*`` files;
:func:`clean_partials` removes those whose process is gone. A full disk raises an
:class:`~exface.errors.ExfaceFileError` that says so (the partial file is removed; what
was written before stays valid). :class:`FolderLock` makes a second run into the same
folder stop with a message instead of interleaving its files with the first's.
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from exface.errors import ExfaceFileError, ExfaceStateError

__all__ = ["partial_name", "atomic_write_bytes", "sync_files", "atomic_torch_save", "atomic_write_json", "clean_partials",
           "FolderLock", "is_primary_process", "ensure_writable_dir"]

PARTIAL_PREFIX = ".partial-"


def partial_name(path: Path) -> Path:
    """The temporary name ``path`` is written under by this process."""
    return path.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{path.name}")


def _write_via(path: Path, write: Callable[[Any], None], sync: bool = True) -> None:
    tmp = partial_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ExfaceFileError(
                f"the disk is full: could not write {path.name}", where=path,
                fix=f"free space on the disk holding {path.parent} and run the same command again "
                    f"(files already written are complete and are kept)",
            ) from err
        raise


def atomic_write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file (never a half-written ``path``).

    ``sync=False`` leaves out the per-file ``fsync``: the caller makes many files durable at
    once with :func:`sync_files` before it writes anything that vouches for them.
    """
    _write_via(Path(path), lambda f: f.write(data), sync)


def sync_files(root: Path, paths: list[Path]) -> None:
    """Make ``paths`` (written with ``sync=False`` under ``root``) durable on disk.

    On Linux one ``syncfs`` of ``root``'s file system: one journal commit for a whole batch
    of files instead of one each (1,024 15-kB files here: 0.10 s wall and 0.07 s of CPU,
    against 0.40 s and 0.22 s for a ``fsync`` per file). Elsewhere, a ``fsync`` per file.
    """
    if _syncfs is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if _syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _load_syncfs():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def atomic_torch_save(obj: Any, path: Path) -> bytes:
    """``torch.save`` ``obj`` to ``path`` atomically; returns the bytes written (to checksum)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(Path(path), data)
    return data


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_partials(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove ``.partial-<pid>-*`` files whose writer process no longer runs; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    pattern = f"**/{PARTIAL_PREFIX}*" if recursive else f"{PARTIAL_PREFIX}*"
    for p in folder.glob(pattern):
        pid = p.name[len(PARTIAL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def is_primary_process() -> bool:
    """False in the extra processes Lightning's DDP launcher starts (they share rank 0's lock)."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("LOCAL_RANK", "NODE_RANK"))


class FolderLock:
    """An exclusive lock on ``folder`` (``flock`` on ``folder/.lock``), released on exit or death.

    A second process that tries to take it gets an :class:`~exface.errors.ExfaceStateError`
    naming the holder's process id and host. The kernel drops the lock when its holder
    dies, so a killed run never leaves the folder locked.
    """

    def __init__(self, folder: Path, what: str = "run") -> None:
        self.path = Path(folder) / ".lock"
        self.what = what
        self._fh = None

    def __enter__(self) -> "FolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ExfaceStateError(
                f"another {self.what} is writing into {self.path.parent} ({holder})", where=self.path.parent,
                fix="wait for it to finish (then run again to complete or check the folder), or use another folder",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def ensure_writable_dir(folder: Path, what: str = "output_dir") -> Path:
    """Create ``folder`` and prove it takes a file, before any long computation writes there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = partial_name(folder / ".write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ExfaceFileError(f"cannot write into the {what} ({err.strerror or err})", where=folder,
                              fix=f"pass a {what} you can write to (nothing has been computed yet)") from err
    return folder
