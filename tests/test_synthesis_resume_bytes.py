"""A killed synthesize run resumes to the same bytes, wherever it was interrupted (tiny parts).

Forward passes are built from fixed groups of the whole work plan, so which images share a
batch never depends on what a resume still has to do. The generator here adds a term that
depends on the whole batch (as batch-size dependent conv algorithms on CPU or GPU can), so
any change of batch composition would change bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exface.exfacegan import synthesis as syn
from exface.exfacegan.samplers import ExFaceGANSampler
from exface.testing.tiny import TinyGenerator
from tests.test_synthesis import make_tiny_bank


class _BatchSensitiveGenerator(TinyGenerator):
    """TinyGenerator whose images depend (slightly) on the rest of their batch."""

    def synthesize(self, latent, space="z", **kwargs):
        x = super().synthesize(latent, space, **kwargs)
        return (x + 0.05 * x.mean(0, keepdim=True)).clamp(-1, 1)


class _Killed(Exception):
    pass


def _run(root: Path, gan, aligner, emb, bnd, refs, **kw):
    # 2 images per identity and 6 per forward pass: groups of 3 work items; 6 identities -> 2 groups
    args = dict(images_per_identity=2, num_identities=3, both_sides=True, batch_size=6, accelerator="cpu",
                progress=False, sampler=ExFaceGANSampler(0.0, 2.0), identity_filter=0.995, filter_rounds=3)
    args.update(kw)
    return syn.synthesize_dataset(gan, aligner, emb, bnd, refs, root / "ds", **args)


def _contents(ds: Path) -> dict:
    out = {str(p.relative_to(ds)): p.read_bytes() for p in ds.rglob("*")
           if p.is_file() and syn.WORK not in p.relative_to(ds).parts and p.name not in (syn.SETTINGS, ".lock")}
    settings = json.loads((ds / syn.SETTINGS).read_text())
    for key in ("redone_items", "rendered_items"):
        settings.pop(key, None)
    out[syn.SETTINGS] = settings
    return out


@pytest.fixture()
def parts(tmp_path):
    _, aligner, emb, bnd, refs = make_tiny_bank(tmp_path / "bank_parts")
    return _BatchSensitiveGenerator(z_dim=8, resolution=16), aligner, emb, bnd, refs


@pytest.fixture()
def reference(tmp_path, parts):
    stats = _run(tmp_path / "whole", *parts)
    assert stats["passed_filter"] < stats["candidates_drawn"]  # the filter resampled: later rounds are batched too
    return _contents(tmp_path / "whole" / "ds")


def test_the_batch_sensitive_generator_is_batch_sensitive(parts):
    gan = parts[0]
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.equal(gan.synthesize(z[:2], "z"), gan.synthesize(z, "z")[:2])


def _run_killed_after(root, parts, records: int, monkeypatch) -> None:
    """Run synthesis in ``root`` and kill it (an exception) when it would write record number ``records + 1``."""
    real_save = syn.atomic_torch_save
    saved = []

    def save_then_die(obj, path):
        if len(saved) >= records:
            raise _Killed()
        saved.append(path)
        real_save(obj, path)

    monkeypatch.setattr(syn, "atomic_torch_save", save_then_die)
    with pytest.raises(_Killed):
        _run(root, *parts)
    monkeypatch.undo()


@pytest.mark.parametrize("records_before_kill", [1, 2, 3, 4])
def test_killed_run_resumes_to_the_same_bytes(tmp_path, parts, reference, monkeypatch, records_before_kill):
    """Killed after n item records (1, 2, 4: inside a forward batch; 3: between two), then resumed."""
    _run_killed_after(tmp_path / "killed", parts, records_before_kill, monkeypatch)
    ds = tmp_path / "killed" / "ds"
    assert len(list((ds / syn.WORK).rglob("*.pt"))) == records_before_kill
    stats = _run(tmp_path / "killed", *parts)
    assert stats["redone_items"] == stats["total_items"] - records_before_kill
    assert _contents(ds) == reference


def test_lost_files_inside_a_batch_are_rewritten_to_the_same_bytes(tmp_path, parts, reference):
    """A partly done forward batch (one item's image and another's record lost) is rendered whole again,
    and only its incomplete items are written."""
    _run(tmp_path / "again", *parts)
    ds = tmp_path / "again" / "ds"
    (ds / "000000_neg" / "1.png").unlink()
    (ds / syn.WORK / "000002" / "c0000.pt").unlink()
    kept = ds / "000001" / "0.png"  # an item of the same group that stays complete
    mtime = kept.stat().st_mtime_ns
    stats = _run(tmp_path / "again", *parts)
    assert stats["redone_items"] == 2
    assert kept.stat().st_mtime_ns == mtime
    assert _contents(ds) == reference


def test_a_resume_with_another_batch_size_keeps_the_datasets_groups(tmp_path, parts, reference, monkeypatch):
    """batch_size is no content setting; the groups are the dataset's (synthesis.json forward_items)."""
    _run_killed_after(tmp_path / "b", parts, 1, monkeypatch)
    ds = tmp_path / "b" / "ds"
    assert json.loads((ds / syn.SETTINGS).read_text())["forward_items"] == 3
    with pytest.warns(UserWarning, match="the dataset's 3 work items per forward pass"):
        stats = _run(tmp_path / "b", *parts, batch_size=4)
    assert stats["forward_items"] == 3 and stats["redone_items"] == 5
    assert _contents(ds) == reference


def test_groups_are_fixed_slices_of_the_plan():
    assert [list(g) for g in syn.plan_groups(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [list(g) for g in syn.plan_groups(2, 0)] == [[0], [1]]
