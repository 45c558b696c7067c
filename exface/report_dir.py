"""One rule for every report folder: it records what made it, and holds one report only.

``exface report`` / ``synthesize --report``, ``exface benchmark`` and ``exface
disentangle-report`` write their files through :class:`ReportDir`:

- the folder's ``made_by.json`` records the report's *identity* (``made_by``): its inputs
  (paths and content digests), the parts (class, weights digest, arguments) and the
  settings that decide its figures; never timings or where it is written. The report's own
  json carries the same ``made_by``;
- a folder whose record names another identity, or that holds files but no record (another
  program's, or a report of an exface that did not record it), is refused with an
  :class:`~exface.errors.ExfaceStateError` naming the differing keys, before the report's
  expensive work where its inputs are known up front;
- the same identity again regenerates the report: its files are replaced, and the files of
  the earlier report that this one does not write (a ``roc_<set>.png`` of a set no longer
  plotted) are removed. Only files the record lists are ever removed, and only for the same
  identity;
- every file is written atomically (a temporary name, then a rename), and the folder is
  locked (:class:`~exface.exfacegan.run_files.FolderLock`) while a report is written, so
  two reports never interleave their files.

Usage::

    with ReportDir(out, made_by, "benchmark", fix="...") as rd:
        ...                                  # the expensive work
        rd.write_text("report.md", text)     # atomic, listed in made_by.json
    # on success: stale files of the same report removed, made_by.json marked complete
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from exface.errors import ExfaceFileError, ExfaceStateError
from exface.exfacegan.run_files import (PARTIAL_PREFIX, FolderLock, atomic_write_bytes, clean_partials,
                                        ensure_writable_dir)

__all__ = ["RECORD", "ReportDir", "file_sha256", "part_identity", "identity_differences", "refuse_other_report"]

#: the record of what made the report in a folder
RECORD = "made_by.json"
FORMAT = "exface-report-dir"
_IGNORED = (".lock", RECORD)


def canonical(obj: Any) -> Any:
    """``obj`` as JSON gives it back (tuples as lists, keys as strings): what a record compares."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def part_identity(part: Any) -> dict[str, Any] | None:
    """What a part *is*: class, weights sha256 and its non-path arguments (None for no part).

    File-path arguments are left out when the weights digest is known: the same weights at
    another path are the same part (as :func:`~exface.exfacegan.provenance.part_differences`).
    """
    if part is None:
        return None
    from exface.exfacegan.provenance import is_path_value, part_fingerprint

    rec = part_fingerprint(part)
    if "weights_sha256" in rec:
        rec["args"] = {k: v for k, v in rec.get("args", {}).items() if not is_path_value(v)}
    return canonical(rec)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for k in obj:
            out.update(_flatten(obj[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and any(isinstance(v, (Mapping, list)) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def _show(v: Any) -> str:
    if v is _ABSENT:
        return "nothing"
    text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return repr(v[:12] + "...")  # a sha256
    return text if len(text) <= 120 else text[:117] + "..."


_ABSENT = object()


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any], only_new_keys: bool = False,
                         holder: str = "the folder's report") -> list[str]:
    """``key: the folder's report has X, this run Y`` for every key whose value differs
    (``only_new_keys``: only the keys ``new`` has, for an identity known in part; ``holder``:
    what holds the old record, e.g. "the file")."""
    a, b = _flatten(canonical(old)), _flatten(canonical(new))
    keys = set(b) if only_new_keys else set(a) | set(b)
    return [f"{k}: {holder} has {_show(a.get(k, _ABSENT))}, this run {_show(b.get(k, _ABSENT))}"
            for k in sorted(keys) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def refuse_other_report(folder: str | Path, known: Mapping[str, Any], what: str, fix: str | None = None) -> None:
    """Before a run that ends in a report: refuse a ``folder`` that holds another report, judged
    on the part of its identity known up front (``known``, e.g. the dataset's path before the
    dataset is made). :class:`ReportDir` checks the whole identity when the report is written."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    probe = ReportDir(folder, known, what, fix)
    rec_path = folder / RECORD
    if not rec_path.is_file():
        probe._check()  # refuses a non-empty folder without a record
        return
    try:
        rec = json.loads(rec_path.read_text())
        old = rec["made_by"]
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
        probe._check()  # names the damaged record
        return
    diffs = identity_differences(old, known, only_new_keys=True)
    if diffs and probe._entries():
        raise ExfaceStateError(f"the folder holds another {rec.get('report', 'report')}:\n  " + "\n  ".join(diffs),
                               where=folder, fix=probe.fix)


class ReportDir:
    """A report folder held for one report identity ``made_by`` (see the module docstring).

    ``what`` names the report in messages ("quality report"); ``fix`` is the way out shown
    when the folder holds another report (default: another folder, or delete this one).
    Entering the context checks the folder, locks it and records ``made_by`` in
    ``made_by.json``; write every file with :meth:`write_bytes` / :meth:`write_text` (or
    :meth:`keep` one written by other means); leaving it without an error removes the
    earlier same-identity report's files this one did not write and marks the record complete.
    """

    def __init__(self, folder: str | Path, made_by: Mapping[str, Any], what: str, fix: str | None = None) -> None:
        self.folder = Path(folder)
        self.made_by = canonical(dict(made_by))
        self.what = what
        self.fix = fix or (f"write this {what} into another folder, or delete {self.folder} to replace the report "
                           f"there (the same {what} again overwrites it)")
        self._lock: FolderLock | None = None
        self._old_files: list[str] = []
        self._files: list[str] = []

    # ------------------------------------------------------------------ check and claim
    def __enter__(self) -> "ReportDir":
        if self.folder.is_dir():  # refuse another report's folder without touching it (not even a .lock)
            self._check()
        ensure_writable_dir(self.folder, f"{self.what} folder")
        self._lock = FolderLock(self.folder, f"exface {self.what}").__enter__()
        try:
            clean_partials(self.folder)
            self._old_files = self._check()
            self._write_record("writing")
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.finish()
            else:  # what this run wrote stays listed, so the same report run again can replace it
                self._write_record("incomplete")
        finally:
            self._release()

    def _entries(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir()
                      if p.name not in _IGNORED and not p.name.startswith(PARTIAL_PREFIX))

    def _check(self) -> list[str]:
        """The files of the earlier report of the same identity; raises for another report's folder."""
        entries = self._entries()
        rec_path = self.folder / RECORD
        if not rec_path.is_file():
            if entries:
                raise ExfaceStateError(
                    f"the folder is not empty and holds no {RECORD} saying what made its files (e.g. {entries[:3]}): "
                    f"they are another program's, or a report of an older exface; this {self.what} would overwrite "
                    f"or mix with them", where=self.folder, fix=self.fix)
            return []
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            rec = None
        if not isinstance(rec, dict) or rec.get("format") != FORMAT or not isinstance(rec.get("made_by"), dict):
            raise ExfaceFileError(f"{RECORD} is damaged or not an exface report record", where=rec_path,
                                  fix=f"delete {self.folder} (or only {RECORD}, if you know the files there are "
                                      f"this report's) or write the {self.what} into another folder")
        old_files = [f for f in rec.get("files", []) if isinstance(f, str) and f and Path(f).name == f]
        diffs = identity_differences(rec["made_by"], self.made_by)
        if diffs:
            if entries:  # a record that names no file on disk held nothing: a failed run's claim
                kind = rec.get("report", "report")
                raise ExfaceStateError(
                    f"the folder holds another {kind}, made from other inputs or settings:\n  " + "\n  ".join(diffs),
                    where=self.folder, fix=self.fix)
            return []
        return old_files

    def _write_record(self, status: str) -> None:
        files = sorted(set(self._files) | (set(self._old_files) if status != "complete" else set()))
        rec = {"format": FORMAT, "report": self.what, "status": status, "made_by": self.made_by, "files": files,
               "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        atomic_write_bytes(self.folder / RECORD, (json.dumps(rec, indent=1, sort_keys=True) + "\n").encode())

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    # ------------------------------------------------------------------ writing
    def path(self, name: str) -> Path:
        """The final path of the report file ``name`` (a plain file name in the folder)."""
        if not name or Path(name).name != name or name in _IGNORED or name.startswith(PARTIAL_PREFIX):
            raise ValueError(f"not a report file name: {name!r}")
        return self.folder / name

    def _note(self, name: str) -> None:
        if name not in self._files:
            self._files.append(name)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write the report file ``name`` atomically; it belongs to this report."""
        if self._lock is None:
            raise RuntimeError("ReportDir.write_bytes outside its `with` block")
        path = self.path(name)
        atomic_write_bytes(path, data)
        self._note(name)
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def keep(self, name: str) -> None:
        """A file in the folder that belongs to this report but was written by other means (a cache)."""
        if self.path(name).is_file():
            self._note(name)

    def finish(self) -> None:
        """Remove the earlier same-identity report's files this one did not write; mark the record complete."""
        for name in self._old_files:
            if name not in self._files:
                p = self.folder / name
                if p.is_file() or p.is_symlink():
                    p.unlink()
        self._write_record("complete")
        self._old_files = []
