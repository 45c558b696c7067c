"""exface synthesize: sampler geometry, dataset layout, resume, identity filter, bank checks, recipe run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exface.alignment import ResizeAligner
from exface.boundaries.base import Boundaries
from exface.exfacegan.samplers import DistanceSampler, ExFaceGANSampler, NoiseSampler, anchor_latent
from exface.exfacegan.synthesis import load_bank_references, synthesize_dataset
from exface.testing.tiny import TinyEmbedder, TinyGenerator

R = 4  # boundaries / references


def make_tiny_bank(root: Path, space: str = "w", seed: int = 0, generator_class: str = "TinyGenerator"):
    """A bank folder per the pipeline spec (manifest.json + references.pt) and boundaries.pt."""
    gan, aligner, emb = TinyGenerator(z_dim=8, resolution=16), ResizeAligner((16, 16)), TinyEmbedder()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(R, 8, generator=g)
    with torch.no_grad():
        w = gan.to_w(z)
        e = emb(aligner(gan.synthesize(w, "w")))
    bank = root / "bank"
    bank.mkdir(parents=True)
    (bank / "manifest.json").write_text(json.dumps({
        "format": "exface-latent-bank", "version": 1, "num_latents": R, "chunk_size": R, "seed": seed,
        "truncation_psi": 1.0, "dims": {"z": 8, "w": 8, "embedding": 8},
        "parts": {"generator": {"class": generator_class, "args": {}}, "embedder": {"class": "TinyEmbedder", "args": {}},
                  "aligner": {"class": "ResizeAligner", "args": {}}},
        "stored": ["z", "w", "embedding"],
    }))
    torch.save({"indices": torch.arange(R), "z": z, "w": w, "embedding": e}, bank / "references.pt")
    lat = w if space == "w" else z
    normals = torch.nn.functional.normalize(torch.randn(R, 8, generator=g), dim=1)
    offsets = 0.5 - (lat * normals).sum(1)  # every reference sits at signed distance +0.5
    bnd = Boundaries(normals, offsets, space, torch.ones(R), torch.ones(R))
    bnd.save(root / "boundaries.pt")
    return gan, aligner, emb, bnd, torch.load(bank / "references.pt", weights_only=True)


@pytest.fixture()
def tiny(tmp_path):
    return (tmp_path, *make_tiny_bank(tmp_path))


def test_distance_sampler_lands_exactly_on_requested_distance(tiny):
    _, gan, _, _, bnd, refs = tiny
    rng = torch.Generator().manual_seed(0)
    for side in (1, -1):
        x = DistanceSampler(distance=2.5).sample(bnd, 1, side, refs["w"][1], 50, rng, gan)
        assert torch.allclose(bnd.signed_distance(x, 1), torch.full((50,), 2.5 * side), atol=1e-5)
    x = DistanceSampler(distance=2.0, jitter=0.3).sample(bnd, 2, 1, refs["w"][2], 400, rng, gan)
    s = bnd.signed_distance(x, 2)
    assert abs(s.mean() - 2.0) < 0.08 and 0.2 < s.std() < 0.4


def test_exfacegan_sampler_sides_and_offsets(tiny):
    _, gan, _, _, bnd, refs = tiny
    rng = torch.Generator().manual_seed(0)
    sam = ExFaceGANSampler(min_offset=1.0, max_offset=3.0)
    ref = refs["w"][0]
    s_ref = float(bnd.signed_distance(ref[None], 0))
    pos = sam.sample(bnd, 0, 1, ref, 200, rng, gan)
    neg = sam.sample(bnd, 0, -1, ref, 200, rng, gan)
    # the move along the normal is sum_j o_j n_j^2, inside [min_offset, max_offset]
    dpos = bnd.signed_distance(pos, 0) - s_ref
    dneg = s_ref - bnd.signed_distance(neg, 0)
    assert (dpos >= 1.0 - 1e-5).all() and (dpos <= 3.0 + 1e-5).all()
    assert (dneg >= 1.0 - 1e-5).all() and (dneg <= 3.0 + 1e-5).all()
    assert (bnd.signed_distance(pos, 0) > 0).all() and (bnd.signed_distance(neg, 0) < 0).all()
    # per-dimension offsets: samples also differ off the normal
    perp = pos - ref - (dpos[:, None] * bnd.normals[0])
    assert perp.norm(dim=1).mean() > 0.1
    # z space: rescaled onto the sqrt(d) sphere, as ExFaceGAN does
    zb = Boundaries(bnd.normals, torch.zeros(R), "z", bnd.val_auc, bnd.val_auc)
    z = sam.sample(zb, 0, 1, refs["z"][0], 20, rng, gan)
    assert torch.allclose(z.norm(dim=1), torch.full((20,), 8 ** 0.5), atol=1e-4)


def test_anchor_and_noise_sampler(tiny):
    _, gan, _, _, bnd, refs = tiny
    a = anchor_latent(bnd, 3, -1, refs["w"][3])
    assert torch.allclose(bnd.signed_distance(a[None], 3), torch.tensor([-0.5]), atol=1e-5)
    x = NoiseSampler(0.0).sample(bnd, 3, 1, refs["w"][3], 3, torch.Generator(), gan)
    assert torch.allclose(x, refs["w"][3].expand(3, -1))
    from exface.registry import get_registry

    assert {"ExFaceGANSampler", "DistanceSampler", "NoiseSampler", "RandomSampler"} <= set(get_registry("samplers"))


def _run(root, gan, aligner, emb, bnd, refs, **kw):
    kw.setdefault("images_per_identity", 5)
    kw.setdefault("batch_size", 4)
    return synthesize_dataset(gan, aligner, emb, bnd, refs, root / "ds", accelerator="cpu", progress=False,
                              sampler=kw.pop("sampler", ExFaceGANSampler(0.0, 2.0)), **kw)


def test_dataset_layout_manifest_and_resume(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    stats = _run(root, gan, aligner, emb, bnd, refs, num_identities=3, both_sides=True)
    ds = root / "ds"
    rows = [json.loads(ln) for ln in (ds / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2 * 5 == stats["images"]
    assert sorted({r["identity"] for r in rows}) == ["000000", "000000_neg", "000001", "000001_neg", "000002",
                                                     "000002_neg"]
    for r in rows:
        assert (ds / r["file"]).is_file() and r["side"] in (1, -1)
        assert set(r) >= {"identity", "boundary", "side", "file", "signed_distance", "similarity_to_reference"}
    from PIL import Image

    img = Image.open(ds / rows[0]["file"])
    assert img.size == (16, 16) and img.mode == "RGB"
    lat, e = np.load(ds / "latents.npy"), np.load(ds / "embeddings.npy")
    assert lat.shape == (30, 8) and e.shape == (30, 8)
    # the manifest's signed distances are the latents'
    sd = bnd.signed_distance(torch.from_numpy(lat), None)[torch.arange(30), torch.tensor([r["boundary"] for r in rows])]
    assert np.allclose(sd.numpy(), [r["signed_distance"] for r in rows], atol=1e-4)
    # positive-side similarities are cosines to the reference embedding
    assert np.allclose(e[0] @ refs["embedding"][0].numpy(), rows[0]["similarity_to_reference"], atol=1e-4)

    before = {f: f.read_bytes() for f in ds.glob("*/*.png")}
    victims = [ds / "000001" / "4.png", ds / "000002_neg" / "0.png"]
    for v in victims:
        v.unlink()
    untouched = ds / "000000" / "1.png"
    mtime = untouched.stat().st_mtime_ns
    stats2 = _run(root, gan, aligner, emb, bnd, refs, num_identities=3, both_sides=True)
    assert stats2["redone_items"] == 2 and stats2["total_items"] == 12
    assert untouched.stat().st_mtime_ns == mtime
    assert {f: f.read_bytes() for f in ds.glob("*/*.png")} == before
    assert (ds / "manifest.jsonl").read_text().splitlines() == [json.dumps(r) for r in rows]
    # a complete dataset re-runs nothing; other settings in the same folder are refused
    assert _run(root, gan, aligner, emb, bnd, refs, num_identities=3, both_sides=True)["redone_items"] == 0
    with pytest.raises(ValueError, match="other settings"):
        _run(root, gan, aligner, emb, bnd, refs, num_identities=3, both_sides=True, seed=1)


def test_results_do_not_depend_on_batching(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    _run(root, gan, aligner, emb, bnd, refs, num_identities=2, batch_size=10)
    a = np.load(root / "ds" / "latents.npy")
    b_root = root / "other"
    b_root.mkdir()
    synthesize_dataset(gan, aligner, emb, bnd, refs, b_root / "ds", images_per_identity=5, num_identities=2,
                       batch_size=10 + 3, accelerator="cpu", progress=False, sampler=ExFaceGANSampler(0.0, 2.0))
    assert np.array_equal(a, np.load(b_root / "ds" / "latents.npy"))


@pytest.mark.parametrize("cores", [1, 64])
def test_files_do_not_depend_on_where_encoding_runs(tiny, monkeypatch, cores):
    """No spare core: batches are encoded in the main thread; a spare one: in the writer thread."""
    import exface.exfacegan.synthesis as synthesis

    root, gan, aligner, emb, bnd, refs = tiny
    _run(root, gan, aligner, emb, bnd, refs, num_identities=2, both_sides=True)
    before = {f.relative_to(root / "ds"): f.read_bytes() for f in (root / "ds").glob("*/*.png")}
    used = []
    real_encoded = synthesis.DatasetImageWriter._encoded
    monkeypatch.setattr(synthesis.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(synthesis.DatasetImageWriter, "_encoded",
                        lambda self, pred, map_fn=map, parts=1: used.append(map_fn is map)
                        or real_encoded(self, pred, map_fn, parts))
    other = root / "other"
    other.mkdir()
    synthesize_dataset(gan, aligner, emb, bnd, refs, other / "ds", images_per_identity=5, num_identities=2,
                       both_sides=True, batch_size=4, accelerator="cpu", progress=False,
                       sampler=ExFaceGANSampler(0.0, 2.0))
    assert used and all(u == (cores > torch.get_num_threads()) for u in used)
    assert {f.relative_to(other / "ds"): f.read_bytes() for f in (other / "ds").glob("*/*.png")} == before
    assert (other / "ds" / "manifest.jsonl").read_text() == (root / "ds" / "manifest.jsonl").read_text()


def test_identity_filter_rejects_and_reports_acceptance(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    free = _run(root, gan, aligner, emb, bnd, refs, num_identities=2, sampler=ExFaceGANSampler(0.0, 6.0))
    sims = [json.loads(ln)["similarity_to_reference"] for ln in (root / "ds" / "manifest.jsonl").read_text().splitlines()]
    thr = float(np.quantile(sims, 0.5))
    f_root = root / "filtered"
    f_root.mkdir()
    st = synthesize_dataset(gan, aligner, emb, bnd, refs, f_root / "ds", images_per_identity=5, num_identities=2,
                            batch_size=4, accelerator="cpu", progress=False, sampler=ExFaceGANSampler(0.0, 6.0),
                            identity_filter=thr, filter_rounds=20)
    rows = [json.loads(ln) for ln in (f_root / "ds" / "manifest.jsonl").read_text().splitlines()]
    assert free["acceptance_rate"] == 1.0
    assert 0 < st["acceptance_rate"] < 1 and st["candidates_drawn"] > st["images"]
    passed = [r for r in rows if r["passed_filter"]]
    assert all(r["similarity_to_reference"] >= thr for r in passed)
    assert len(passed) == st["passed_filter"] >= len(rows) - 2


def test_bank_part_mismatch_is_an_error(tmp_path):
    make_tiny_bank(tmp_path, generator_class="DCGANDigiFace")
    with pytest.raises(ValueError, match="generator.*DCGANDigiFace.*given TinyGenerator"):
        load_bank_references(tmp_path / "bank", TinyGenerator(z_dim=8, resolution=16), TinyEmbedder())
    with pytest.raises(FileNotFoundError, match="build the bank first"):
        load_bank_references(tmp_path / "nowhere")


def test_synthesize_recipe_runs_in_process(tmp_path):
    from exface.cli import main

    make_tiny_bank(tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "dcgan_faceapi_synthesize.yaml"
    main([
        "synthesize", "--config", str(recipe),
        "--bank", str(tmp_path / "bank"), "--boundaries", str(tmp_path / "boundaries.pt"),
        "--generator", "exface.testing.tiny.TinyGenerator", "--generator.z_dim", "8", "--generator.resolution", "16",
        "--aligner", "ResizeAligner", "--aligner.output_size", "[16, 16]",
        "--embedder", "exface.testing.tiny.TinyEmbedder",
        "--output_dir", str(tmp_path / "run" / "dataset"), "--report_dir", str(tmp_path / "run" / "report"), "--images_per_identity", "4", "--num_identities", "3",
        "--sampler.init_args.max_offset", "2.0", "--accelerator", "cpu",
    ])
    ds = tmp_path / "run" / "dataset"
    assert len((ds / "manifest.jsonl").read_text().splitlines()) == 3 * 4 * (2 if json.loads(
        (ds / "synthesis.json").read_text())["both_sides"] else 1)
    rep = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert set(rep["sets"]) == {"boundary", "random", "noise", "noise_equal_diversity"}


@pytest.mark.parametrize("name", ["dcgan_faceapi_synthesize.yaml", "stylegan2_arcface_synthesize.yaml"])
def test_synthesize_recipes_parse(name, capsys):
    from exface.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / name
    with pytest.raises(SystemExit) as exit_info:
        main(["synthesize", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "ExFaceGANSampler" in out and "max_offset" in out and "images_per_identity" in out
