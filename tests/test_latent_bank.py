"""Latent bank: build, resume after a kill, manifest checks, chunking independence; the bank DataModule."""

from __future__ import annotations

import json

import pytest
import torch

from exface.alignment import ResizeAligner
from exface.exfacegan.datamodule import IdentityBankDataModule
from exface.exfacegan.latent_bank import BankMismatchError, LatentBank
from exface.testing.tiny import TinyEmbedder, TinyGenerator


@pytest.fixture(scope="module")
def parts():
    return TinyGenerator(truncation_psi=0.7), ResizeAligner((16, 16)), TinyEmbedder()


def _build(root, parts, **kw):
    g, a, e = parts
    args = dict(num_latents=50, chunk_size=16, seed=3, accelerator="cpu", batch_size=7)
    args.update(kw)
    return LatentBank.build(root, g, a, e, **args)


def test_build_contents(tmp_path, parts):
    g, a, e = parts
    bank = _build(tmp_path / "bank", parts)
    assert bank.num_chunks == 4 and bank.is_complete
    d = bank.load(("z", "w", "embedding"))
    assert d["z"].shape == (50, 8) and d["w"].shape == (50, 8) and d["embedding"].shape == (50, 8)
    assert torch.allclose(d["embedding"].norm(dim=1), torch.ones(50), atol=1e-5)
    # w is the generator's untruncated mapping of z (bank format 2, as ExFaceGAN stores it:
    # truncation is applied at render time), the embedding that of the aligned truncated image
    assert torch.allclose(d["w"], g.to_w(d["z"], truncation_psi=1.0), atol=1e-6)
    with torch.no_grad():
        emb = e(a(g.synthesize(d["z"][:5])))
    assert torch.allclose(d["embedding"][:5], emb, atol=1e-5)
    chunks = list(bank.iter_chunks(["z"]))
    assert [c["index"][0].item() for c in chunks] == [0, 16, 32, 48] and chunks[-1]["z"].shape[0] == 2
    m = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert m["parts"]["generator"]["class"] == "TinyGenerator" and m["truncation_psi"] == 0.7
    assert m["dims"] == {"z": 8, "w": 8, "embedding": 8}
    with pytest.raises(ValueError, match="iter_chunks"):
        bank.load(("image",))


def test_resume_after_kill_is_identical(tmp_path, parts):
    full = _build(tmp_path / "full", parts).load(("z", "w", "embedding"))
    # a run killed after two chunks (plus a half-written temporary file) ...
    part = _build(tmp_path / "part", parts, max_chunks=2)
    assert part.missing_chunks() == [2, 3]
    (tmp_path / "part" / ".partial-123-chunk_00002.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="incomplete"):
        part.load()
    # ... and a lost chunk: the next build fills exactly the gaps
    (tmp_path / "part" / "chunk_00000.pt").unlink()
    resumed = _build(tmp_path / "part", parts)
    got = resumed.load(("z", "w", "embedding"))
    for k in full:
        assert torch.equal(full[k], got[k]), k
    assert len(resumed.manifest["build"]["runs"]) == 2


def test_chunking_does_not_change_latents(tmp_path, parts):
    a = _build(tmp_path / "a", parts).load(("z",))["z"]
    # same chunks computed in another order / by other workers give the same bank
    g, al, e = parts
    from exface.exfacegan.latent_bank import compute_chunk

    c3 = compute_chunk(3, g, al, e, num_latents=50, chunk_size=16, seed=3, batch_size=50)
    assert torch.equal(c3["z"], a[48:50])
    other_seed = _build(tmp_path / "b", parts, seed=4).load(("z",))["z"]
    assert not torch.equal(a, other_seed)


def test_manifest_mismatch_names_each_difference(tmp_path, parts):
    _build(tmp_path / "bank", parts, max_chunks=1)
    with pytest.raises(BankMismatchError) as err:
        _build(tmp_path / "bank", parts, num_latents=60, seed=5)
    msg = str(err.value)
    assert "num_latents" in msg and "seed" in msg and "chunk_size" not in msg
    assert "new bank_dir" in msg and "delete" in msg
    g, a, _ = parts
    with pytest.raises(BankMismatchError, match="parts.embedder.embedding_dim"):
        LatentBank.build(tmp_path / "bank", g, a, TinyEmbedder(embedding_dim=4), num_latents=50, chunk_size=16,
                         seed=3, accelerator="cpu")


def test_store_images_and_get(tmp_path, parts):
    bank = _build(tmp_path / "bank", parts, store_images=True)
    imgs = torch.cat([c["image"] for c in bank.iter_chunks(["image"])])
    assert imgs.dtype == torch.uint8 and imgs.shape == (50, 3, 16, 16)
    sel = bank.get([1, 17, 49], ("z", "image"))
    assert torch.equal(sel["image"][1], imgs[17])
    refs = bank.write_references([0, 2])
    assert torch.equal(bank.references()["indices"], torch.tensor([0, 2])) and refs["w"].shape == (2, 8)


def test_datamodule_batches(tmp_path, parts):
    g, a, e = parts
    dm = IdentityBankDataModule(g, e, a, bank_dir=str(tmp_path / "bank"), num_latents=60, chunk_size=16,
                                num_references=5, space="w", val_fraction=0.25, accelerator="cpu")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.latent_dim == 8 and dm.num_references == 5
    (tb,) = list(dm.train_dataloader())
    (vb,) = list(dm.val_dataloader())
    assert tb["x"].shape == (45, 8) and tb["x"].dtype == torch.float32
    assert tb["y"].shape == (45, 5) and tb["y"].dtype == torch.int8 and vb["x"].shape == (15, 8)
    # leave-one-out: reference r is latent r and is ignored for itself
    assert (dm.labels[torch.arange(5), torch.arange(5)] == -1).all()
    refs = LatentBank(tmp_path / "bank").references()
    assert torch.equal(refs["indices"], torch.arange(5))
    dm2 = IdentityBankDataModule(g, e, a, bank_dir=str(tmp_path / "bank"), num_latents=60, chunk_size=16,
                                 num_references=5, batch_size=10, accelerator="cpu")
    dm2.setup("fit")
    assert len(list(dm2.train_dataloader())) == 5


def test_datamodule_rejects_missing_space(tmp_path, parts):
    z_only = TinyGenerator()
    z_only.latent_spaces = ("z",)  # like DCGANDigiFace
    _, a, e = parts
    with pytest.raises(ValueError, match=r"latent spaces \['z'\].*space= one of \['z'\]"):
        IdentityBankDataModule(z_only, e, a, bank_dir=str(tmp_path), space="w")


def test_two_processes_build_the_same_bank(tmp_path, parts):
    """Chunks shared over 2 DDP workers (CPU, ddp_spawn) give the single-process bank.

    Latents are drawn from per-chunk seeds, so they are bit-identical. Embeddings agree to
    float32 rounding only: a spawned worker may run its convolutions with another intra-op
    thread count than the parent (seen under load), which changes the summation order.
    """
    one = _build(tmp_path / "one", parts).load(("z", "w", "embedding"))
    two_bank = _build(tmp_path / "two", parts, devices=2)
    assert two_bank.manifest["build"]["runs"][0]["devices"] == 2
    two = two_bank.load(("z", "w", "embedding"))
    assert torch.equal(one["z"], two["z"]) and torch.equal(one["w"], two["w"])
    torch.testing.assert_close(one["embedding"], two["embedding"], rtol=0, atol=1e-6)


def test_attribute_scores(tmp_path, parts):
    from exface.zoo import is_cached

    if not is_cached("faceapi-age-gender"):
        pytest.skip("zoo weights faceapi-age-gender are not cached; run `exface zoo fetch` (needs network)")
    from exface.attributes import FaceApiAgeGender

    pred = FaceApiAgeGender().eval()
    bank = _build(tmp_path / "bank", parts, num_latents=10, chunk_size=4, attribute_predictors=[pred])
    attrs = bank.load(("attributes",))["attributes"]
    assert set(attrs) == set(pred.attribute_names) and all(v.shape == (10,) for v in attrs.values())
    assert bank.manifest["parts"]["attributes"][0]["class"] == "FaceApiAgeGender"
