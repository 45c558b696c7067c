"""Issue 9, points 1-5 and 10: synthesize's provenance, resume, lock, and one-screen errors (tiny parts)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from exface.boundaries.base import Boundaries
from exface.errors import ExfaceError, ExfaceFileError, ExfaceStateError
from exface.exfacegan.run_files import FolderLock
from exface.exfacegan.samplers import ExFaceGANSampler
from exface.exfacegan import synthesis as syn
from tests.test_synthesis import make_tiny_bank


@pytest.fixture()
def tiny(tmp_path):
    return (tmp_path, *make_tiny_bank(tmp_path))


def _run(root, gan, aligner, emb, bnd, refs, **kw):
    args = dict(images_per_identity=4, num_identities=2, batch_size=4, accelerator="cpu", progress=False,
                sampler=ExFaceGANSampler(0.0, 2.0))
    args.update(kw)
    return syn.synthesize_dataset(gan, aligner, emb, bnd, refs, root / "ds", **args)


class _Killed(Exception):
    pass


def _kill_after_first_item(monkeypatch):
    real = syn.DatasetImageWriter.write_on_batch_end
    calls = []

    def write_then_die(self, *a, **k):
        if calls:
            raise _Killed()
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(syn.DatasetImageWriter, "write_on_batch_end", write_then_die)


def test_resume_with_other_settings_is_refused_naming_each_difference(tiny, monkeypatch):
    root, gan, aligner, emb, bnd, refs = tiny
    _kill_after_first_item(monkeypatch)
    with pytest.raises(_Killed):
        _run(root, gan, aligner, emb, bnd, refs)
    monkeypatch.undo()
    written = json.loads((root / "ds" / "synthesis.json").read_text())  # settings are on disk before the images
    assert written["status"] == "running" and written["seed"] == 0 and written["settings_key"]
    with pytest.raises(ExfaceStateError) as err:
        _run(root, gan, aligner, emb, bnd, refs, seed=7, sampler=ExFaceGANSampler(0.0, 5.0))
    msg = str(err.value)
    assert "seed: the dataset has 0, this run 7" in msg and "sampler" in msg and "max_offset" in msg
    assert "new output_dir" in msg
    # the same settings finish it, identical to an uninterrupted run
    done = _run(root, gan, aligner, emb, bnd, refs)
    assert done["status"] == "complete" and done["redone_items"] == done["total_items"] - 1
    other = tmp = root / "clean"
    tmp.mkdir()
    ref = _run(other, gan, aligner, emb, bnd, refs)
    assert (root / "ds" / "manifest.jsonl").read_text() == (other / "ds" / "manifest.jsonl").read_text()


def test_records_of_other_settings_are_not_reused(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    _run(root, gan, aligner, emb, bnd, refs)
    rec_path = root / "ds" / ".work" / "000000" / "c0000.pt"
    rec = torch.load(rec_path, weights_only=True)
    rec["settings_key"] = "something else"
    torch.save(rec, rec_path)
    assert _run(root, gan, aligner, emb, bnd, refs)["redone_items"] == 1


def test_second_run_into_a_locked_folder_stops_with_a_message(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    (root / "ds").mkdir()
    with FolderLock(root / "ds"):
        with pytest.raises(ExfaceStateError, match="another exface synthesize is writing into") as err:
            _run(root, gan, aligner, emb, bnd, refs)
    assert f"pid" in str(err.value)
    assert _run(root, gan, aligner, emb, bnd, refs)["status"] == "complete"  # the lock went with its holder


def test_two_concurrent_runs_never_mix(tiny):
    """Two processes into one folder: one stops with the lock message, the other's manifest matches the disk."""
    root = tiny[0]
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(root.parent)!r})
        from tests.test_synthesis import make_tiny_bank
        from exface.exfacegan.synthesis import synthesize_dataset, load_boundaries
        from exface.exfacegan.samplers import ExFaceGANSampler
        from exface.alignment import ResizeAligner
        from exface.testing.tiny import TinyEmbedder, TinyGenerator
        refs = torch.load({str(root / 'bank' / 'references.pt')!r}, weights_only=True)
        bnd = load_boundaries({str(root / 'boundaries.pt')!r})
        seed = int(sys.argv[1])
        try:
            synthesize_dataset(TinyGenerator(z_dim=8, resolution=16), ResizeAligner((16, 16)), TinyEmbedder(), bnd, refs,
                               {str(root / 'ds')!r}, images_per_identity=12, num_identities=2, batch_size=4,
                               seed=seed, accelerator="cpu", progress=False, sampler=ExFaceGANSampler(0.0, 2.0))
            print("DONE")
        except Exception as err:
            print("REFUSED", type(err).__name__, err)
    """)
    import os
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(s)], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=Path(__file__).resolve().parents[1]) for s in (0, 5)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    done = [o for o in outs if "DONE" in o]
    assert len(done) >= 1, outs
    for o in outs:
        if "DONE" not in o:
            assert "ExfaceStateError" in o and ("another exface synthesize" in o or "other settings" in o), o
    rows = [json.loads(ln) for ln in (root / "ds" / "manifest.jsonl").read_text().splitlines()]
    settings = json.loads((root / "ds" / "synthesis.json").read_text())
    assert len(rows) == 2 * 12 and all((root / "ds" / r["file"]).is_file() for r in rows)
    # every image on disk is the one its record describes: re-embedding the PNGs gives embeddings.npy
    import numpy as np
    from PIL import Image

    from exface.alignment import ResizeAligner
    from exface.testing.tiny import TinyEmbedder

    assert settings["status"] == "complete" and settings["seed"] in (0, 5)
    imgs = torch.stack([torch.from_numpy(np.array(Image.open(root / "ds" / r["file"]))).permute(2, 0, 1) for r in rows])
    again = syn.embed_images(ResizeAligner((16, 16)), TinyEmbedder(), imgs)
    assert torch.allclose(again, torch.from_numpy(np.load(root / "ds" / "embeddings.npy")), atol=1e-5)


def test_refit_boundaries_into_a_complete_dataset_is_refused(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    _run(root, gan, aligner, emb, bnd, refs)
    refit = Boundaries(torch.nn.functional.normalize(bnd.normals + 0.1, dim=1), bnd.offsets, bnd.space,
                       bnd.val_balanced_accuracy, bnd.val_auc)
    with pytest.raises(ExfaceStateError, match="boundaries_sha256"):
        _run(root, gan, aligner, emb, refit, refs)


def test_boundaries_of_another_bank_are_refused(tmp_path):
    from exface.exfacegan.latent_bank import references_digest

    _, _, _, bnd, refs = make_tiny_bank(tmp_path / "a", seed=0)
    _, _, _, _, other_refs = make_tiny_bank(tmp_path / "b", seed=1)
    bnd.meta = {"bank": "a/bank", "bank_references_sha256": references_digest(refs)}
    syn.check_boundaries_bank(bnd, refs)  # its own bank: fine
    with pytest.raises(ExfaceError, match="fit on another bank"):
        syn.check_boundaries_bank(bnd, other_refs, where="b.pt")


def test_fewer_identities_than_on_disk_is_refused(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    _run(root, gan, aligner, emb, bnd, refs, num_identities=3)
    with pytest.raises(ExfaceStateError, match="out of its manifest"):
        _run(root, gan, aligner, emb, bnd, refs, num_identities=2)
    assert _run(root, gan, aligner, emb, bnd, refs, num_identities=4)["redone_items"] == 1  # growing is fine
    idents = sorted(p.name for p in (root / "ds").iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = {json.loads(ln)["identity"] for ln in (root / "ds" / "manifest.jsonl").read_text().splitlines()}
    assert set(idents) == rows


def test_foreign_folder_is_refused(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    (root / "ds" / "someone").mkdir(parents=True)
    with pytest.raises(ExfaceStateError, match="not empty"):
        _run(root, gan, aligner, emb, bnd, refs)


def test_bad_inputs_are_named(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    with pytest.raises(ExfaceError, match="images_per_identity must be >= 1"):
        _run(root, gan, aligner, emb, bnd, refs, images_per_identity=0)
    with pytest.raises(ExfaceFileError, match="references.pt"):
        syn.load_boundaries(root / "bank" / "references.pt")
    (root / "empty.pt").write_bytes(b"")
    with pytest.raises(ExfaceFileError, match="cannot read the boundaries file") as err:
        syn.load_boundaries(root / "empty.pt")
    assert "empty.pt" in str(err.value)


# ---- points 14, 15, 18: truncation at render time, samplers as parts, parts from the bank's manifest


def test_stored_latent_rerenders_the_embedded_image(tmp_path):
    """psi 0.7 on the first 2 of the w+ layers (ExFaceGAN truncates the first 8): stored w re-renders its image."""
    from exface.alignment import ResizeAligner
    from exface.exfacegan.latent_bank import LatentBank
    from exface.exfacegan.samplers import render_latents
    from exface.generators.stylegan import StyleGAN2
    from exface.tensors import to_uint8
    from exface.testing import make_stylegan2_pickle
    from exface.testing.tiny import TinyEmbedder

    pkl = make_stylegan2_pickle(tmp_path / "g.pkl", resolution=16, z_dim=8, w_dim=8)
    gan = StyleGAN2(str(pkl), truncation_psi=0.7, truncation_cutoff=2)
    bank = LatentBank.build(tmp_path / "bank", gan, ResizeAligner((16, 16)), TinyEmbedder(), num_latents=6,
                            chunk_size=6, accelerator="cpu", store_images=True)
    m = bank.manifest
    assert m["version"] == 2 and m["truncation_psi"] == 0.7 and m["truncation_cutoff"] == 2
    data = bank.get(range(6), ("z", "w", "image"))
    assert torch.allclose(data["w"], gan.to_w(data["z"], truncation_psi=1.0))  # untruncated, as ExFaceGAN stores w
    again = to_uint8(render_latents(gan, data["w"], "w", m["truncation_psi"], m["truncation_cutoff"]))
    assert (again.int() - data["image"].int()).abs().max() <= 1


def test_every_latent_can_be_a_reference(tmp_path):
    from exface.alignment import ResizeAligner
    from exface.exfacegan.datamodule import IdentityBankDataModule
    from exface.testing.tiny import TinyEmbedder, TinyGenerator

    dm = IdentityBankDataModule(TinyGenerator(), TinyEmbedder(), ResizeAligner((16, 16)), str(tmp_path / "bank"),
                                num_latents=20, chunk_size=20, num_references=20, space="w", accelerator="cpu")
    dm.setup("fit")
    assert dm.labels.shape == (20, 20)
    assert (dm.labels[torch.arange(20), torch.arange(20)] == -1).all()  # leave-one-out: no reference labels itself


def test_synthesize_takes_parts_from_the_bank_and_a_sampler_part(tmp_path, capsys):
    import yaml

    from exface.alignment import ResizeAligner
    from exface.cli import main
    from exface.exfacegan.datamodule import IdentityBankDataModule
    from exface.exfacegan.latent_bank import references_digest
    from exface.testing.tiny import TinyEmbedder, TinyGenerator

    dm = IdentityBankDataModule(TinyGenerator(truncation_psi=0.7), TinyEmbedder(), ResizeAligner((16, 16)),
                                str(tmp_path / "bank"), num_latents=24, chunk_size=12, num_references=3, space="w",
                                accelerator="cpu")
    dm.setup("fit")
    refs = dm.bank.references()
    g = torch.Generator().manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    bnd = Boundaries(normals, 0.5 - (refs["w"] * normals).sum(1), "w", torch.ones(3), torch.ones(3),
                     {"bank_references_sha256": references_digest(refs)})
    bnd.save(tmp_path / "b.pt")
    recipe = tmp_path / "s.yaml"
    recipe.write_text(yaml.safe_dump({
        "bank": str(tmp_path / "bank"), "boundaries": str(tmp_path / "b.pt"), "output_dir": str(tmp_path / "ds"),
        "sampler": {"class_path": "ExFaceGANSampler", "init_args": {"max_offset": 2.0}},
        "images_per_identity": 3, "report": False, "accelerator": "cpu",
    }))
    main(["synthesize", "--config", str(recipe)])
    st = json.loads((tmp_path / "ds" / "synthesis.json").read_text())
    assert st["sampler"]["class"] == "ExFaceGANSampler" and st["sampler"]["max_offset"] == 2.0
    assert st["parts"]["generator"]["class"] == "TinyGenerator" and st["truncation_psi"] == 0.7
    assert st["both_sides"] is True and st["images"] == 3 * 2 * 3  # ExFaceGAN's default: both sides


def test_linearsvc_their_scaled_normal_option():
    """normal='scaled' keeps ExFaceGAN's scaled-space unit coefficients; 'raw' is the same hyperplane in raw space."""
    from exface.boundaries.sklearn_learners import LinearSVCBoundary

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g) * torch.tensor([1.0, 5.0, 0.2, 1.0, 3.0, 1.0])
    y = torch.stack([(x[:, 0] + 0.3 * x[:, 1] > 0), (x[:, 2] - x[:, 4] > 0)]).to(torch.int8)
    kw = dict(minmax_scale=True, balanced_split=True)
    raw, theirs = LinearSVCBoundary(**kw).fit(x, y), LinearSVCBoundary(normal="scaled", **kw).fit(x, y)
    lo, hi = x.min(0).values, x.max(0).values
    scale = 2.0 / (hi - lo)
    # folding their scaled-space normal back to raw space gives exface's normal
    assert torch.allclose(torch.nn.functional.normalize(theirs.normals * scale, dim=1), raw.normals, atol=1e-4)
    assert not torch.allclose(theirs.normals, raw.normals, atol=1e-2)
    foot = -raw.offsets[:, None] * raw.normals  # both signed distances are zero at the hyperplane's foot point
    assert torch.allclose(theirs.signed_distance(foot)[torch.arange(2), torch.arange(2)], torch.zeros(2), atol=1e-4)
    assert theirs.meta["normal"] == "scaled" and theirs.meta["balanced_split"]


def test_progress_names_the_stage_not_the_dataloader(tiny, capfd):
    """Point 19: synthesize's bar says what it counts ("synthesizing ... work items")."""
    root, gan, aligner, emb, bnd, refs = tiny
    _run(root, gan, aligner, emb, bnd, refs, progress=True)
    cap = capfd.readouterr()
    err = cap.out + cap.err  # Lightning's tqdm bars write to stdout
    assert "synthesizing 2 work items" in err, err[-800:]
    assert "Predicting" not in err and "DataLoader 0" not in err


@pytest.mark.parametrize("have_syncfs", [True, False])
def test_files_are_synced_before_their_records(tiny, monkeypatch, have_syncfs):
    """Each batch's images are made durable (syncfs, or a fsync each where there is none)
    before any record that vouches for them is written."""
    import exface.exfacegan.run_files as rf
    import exface.exfacegan.synthesis as synthesis

    root, gan, aligner, emb, bnd, refs = tiny
    events = []
    real_sync, real_save, real_fsync = rf.sync_files, synthesis.atomic_torch_save, rf.os.fsync
    if not have_syncfs:
        monkeypatch.setattr(rf, "_syncfs", None)
        monkeypatch.setattr(rf.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))

    def sync(root_, paths):
        assert all(p.is_file() for p in paths)
        events.append(("sync", len(paths)))
        real_sync(root_, paths)

    monkeypatch.setattr(synthesis, "sync_files", sync)
    monkeypatch.setattr(synthesis, "atomic_torch_save", lambda obj, path: events.append("record") or real_save(obj, path))
    _run(root, gan, aligner, emb, bnd, refs, num_identities=2)
    syncs = [e for e in events if isinstance(e, tuple)]
    assert sum(n for _, n in syncs) == 8  # every image, once
    first_record = events.index("record")
    assert isinstance(events[first_record - 1], tuple) or events[first_record - 1] == "fsync"
    if not have_syncfs:
        assert events.count("fsync") >= 8
