"""Issue 9, points 6-8: latent-bank integrity (damaged chunks, weights by content, crash leftovers, disk full)."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
import torch

from exface.alignment import ResizeAligner
from exface.errors import ExfaceFileError
from exface.exfacegan.latent_bank import LatentBank
from exface.testing.tiny import TinyEmbedder, TinyGenerator


@pytest.fixture(scope="module")
def parts():
    return TinyGenerator(truncation_psi=0.7), ResizeAligner((16, 16)), TinyEmbedder()


def _build(root, parts, **kw):
    g, a, e = parts
    args = dict(num_latents=40, chunk_size=16, seed=3, accelerator="cpu", batch_size=16)
    args.update(kw)
    return LatentBank.build(root, g, a, e, **args)


def test_truncated_chunk_is_named_and_recomputed(tmp_path, parts, capsys):
    bank = _build(tmp_path / "bank", parts)
    good = bank.load(("z", "w", "embedding"))
    path = bank.chunk_path(1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExfaceFileError, match="chunk 1") as err:
        LatentBank(bank.root).load()
    assert "chunk_00001.pt" in str(err.value) and "exface fit" in str(err.value)
    again = _build(tmp_path / "bank", parts)  # the next build says so and redoes it
    assert "chunk 1" in capsys.readouterr().err
    assert torch.equal(again.load(("z", "w", "embedding"))["w"], good["w"])


def test_chunk_copied_into_another_slot_is_detected(tmp_path, parts, capsys):
    bank = _build(tmp_path / "bank", parts)
    shutil.copy(bank.chunk_path(0), bank.chunk_path(1))
    (bank.root / "chunk_00001.sha256").unlink()  # even without its checksum, its stored index gives it away
    reopened = LatentBank(bank.root)
    reopened.manifest.pop("checksums", None)
    assert "latents 0..15, not 16..31" in reopened.chunk_problem(1)
    with pytest.raises(ExfaceFileError, match="chunk 1"):
        reopened.get([20])


def test_same_weights_at_another_path_is_the_same_bank(tmp_path):
    from exface.generators.stylegan import StyleGAN2
    from exface.testing import make_stylegan2_pickle

    pkl = make_stylegan2_pickle(tmp_path / "g.pkl", resolution=16, z_dim=8, w_dim=8)
    other_home = tmp_path / "elsewhere"
    other_home.mkdir()
    link = other_home / "g.pkl"
    os.symlink(pkl, link)
    a, e = ResizeAligner((16, 16)), TinyEmbedder()
    args = dict(num_latents=8, chunk_size=8, seed=0, accelerator="cpu")
    LatentBank.build(tmp_path / "bank", StyleGAN2(str(pkl)), a, e, max_chunks=0, **args)
    LatentBank.build(tmp_path / "bank", StyleGAN2(str(link)), a, e, **args)  # accepted: same sha256
    other = make_stylegan2_pickle(tmp_path / "h.pkl", resolution=16, z_dim=8, w_dim=8, seed=1)
    with pytest.raises(ValueError, match="other weights"):
        LatentBank.build(tmp_path / "bank", StyleGAN2(str(other)), a, e, **args)


def test_partial_files_of_a_dead_process_are_cleaned(tmp_path, parts):
    bank = _build(tmp_path / "bank", parts, max_chunks=1)
    dead = 2**22 + 12345  # no such process
    stale = bank.root / f".partial-{dead}-chunk_00001.pt"
    stale.write_bytes(b"half a chunk")
    _build(tmp_path / "bank", parts)
    assert not stale.exists()


def test_disk_full_says_so_and_keeps_written_chunks(tmp_path, parts, monkeypatch):
    import exface.exfacegan.run_files as rf

    bank = _build(tmp_path / "bank", parts, max_chunks=1)
    real = rf.os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rf.os, "replace", full)
    with pytest.raises(ExfaceFileError, match="disk is full"):
        _build(tmp_path / "bank", parts)
    monkeypatch.setattr(rf.os, "replace", real)
    assert not list(bank.root.glob(".partial-*"))
    assert bank.chunk_problem(0) is None
    assert _build(tmp_path / "bank", parts).is_complete
