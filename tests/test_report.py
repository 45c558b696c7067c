"""Quality report: metrics on constructed embeddings, files written, baseline noise calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from exface.boundaries.base import Boundaries
from exface.exfacegan.report import REPORT_SIZE, calibrate_noise_sigma, quality_report, set_metrics, shrink


def _clustered(num_ids: int, k: int, spread: float, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_ids, dim))
    emb = np.repeat(centers, k, 0) + spread * rng.standard_normal((num_ids * k, dim))
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), np.repeat(np.arange(num_ids), k)


def test_strong_identity_has_eer_near_zero_and_random_near_half():
    emb, lab = _clustered(30, 8, spread=0.05)
    strong = set_metrics(emb, lab)
    assert strong["eer"] < 0.01 and strong["fdr"] > 10
    assert strong["genuine_mean"] > 0.95 and abs(strong["impostor_mean"]) < 0.2
    assert len(strong["per_identity_genuine_mean"]) == 30
    assert strong["num_genuine_pairs"] == 30 * 8 * 7 // 2
    assert np.isclose(strong["feature_diversity"], 1 - strong["genuine_mean"], atol=1e-6)
    rnd = np.random.default_rng(1).standard_normal((240, 32))
    rand = set_metrics(rnd / np.linalg.norm(rnd, axis=1, keepdims=True), lab)
    assert 0.4 < rand["eer"] < 0.6 and rand["fdr"] < 0.05


def test_pixel_diversity_zero_for_identical_images():
    emb, lab = _clustered(4, 5, spread=0.1)
    imgs = np.repeat(np.random.default_rng(0).integers(0, 256, (4, 1, 3, 8, 8), dtype=np.uint8), 5, 1).reshape(20, 3, 8, 8)
    assert set_metrics(emb, lab, imgs)["pixel_diversity"] == 0.0
    noisy = np.random.default_rng(1).integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    # uniform [0, 1] pixels: E|a - b|^2 = 1/6, so RMS distance ~ 0.408
    assert abs(set_metrics(emb, lab, noisy)["pixel_diversity"] - 6 ** -0.5) < 0.03


def test_shrink_bounds_size_and_keeps_small_images_exact():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (3, 3, REPORT_SIZE, REPORT_SIZE // 2), dtype=np.uint8)
    assert np.array_equal(shrink(small), small)
    big = np.repeat(np.repeat(small, 4, axis=2), 4, axis=3)  # each pixel a 4x4 block
    out = shrink(big)
    assert out.dtype == np.uint8 and out.shape == small.shape  # longer side back to REPORT_SIZE
    assert np.array_equal(out, small)  # area averaging of constant blocks is exact
    # pixel diversity is scale-free: the same images at 4x size measure (almost) the same
    emb, lab = _clustered(1, 3, spread=0.1)
    assert abs(set_metrics(emb, lab, shrink(big))["pixel_diversity"] - set_metrics(emb, lab, small)["pixel_diversity"]) < 1e-9


@pytest.mark.parametrize("space, normalize", [("w", False), ("z", True)])
def test_noise_sigma_matches_spread(space, normalize):
    d = 16
    refs = torch.randn(5, d)
    bnd = Boundaries(torch.nn.functional.normalize(torch.randn(5, d), dim=1), torch.zeros(5), space,
                     torch.ones(5), torch.ones(5))
    sigma = calibrate_noise_sigma(bnd, refs, [(i, 1) for i in range(5)], 1.5, normalize, samples=64)
    x = refs[:, None] + sigma * torch.randn(5, 2000, d)
    if normalize:
        x = x / x.norm(dim=-1, keepdim=True) * d ** 0.5
    spread = (x - refs[:, None]).norm(dim=-1).mean()  # measured from the anchor latent itself
    assert abs(float(spread) - 1.5) < 0.08


def test_quality_report_files_and_verdict(tmp_path):
    from tests.test_synthesis import make_tiny_bank
    from exface.exfacegan.samplers import ExFaceGANSampler
    from exface.exfacegan.synthesis import synthesize_dataset

    gan, aligner, emb, bnd, refs = make_tiny_bank(tmp_path)
    synthesize_dataset(gan, aligner, emb, bnd, refs, tmp_path / "ds", images_per_identity=6, num_identities=4,
                       batch_size=12, accelerator="cpu", progress=False, sampler=ExFaceGANSampler(0.0, 1.0),
                       extra_settings={"bank": str(tmp_path / "bank"), "boundaries": str(tmp_path / "boundaries.pt")})
    res = quality_report(tmp_path / "ds", tmp_path / "rep", gan, aligner, emb, seed=0)
    for f in ("report.md", "report.json", "similarity_hist.png", "grid.png", "grid_random.png", "grid_noise.png"):
        assert (tmp_path / "rep" / f).is_file(), f
    md = (tmp_path / "rep" / "report.md").read_text().splitlines()
    assert md[0].startswith(("**Yes: the boundary sampler beats", "**No: the boundary sampler does not beat"))
    assert "sigma =" in "\n".join(md)
    js = json.loads((tmp_path / "rep" / "report.json").read_text())
    for name in ("boundary", "random", "noise"):
        m = js["sets"][name]
        assert 0 <= m["eer"] <= 1 and m["num_images"] == 24 and m["num_identities"] == 4
        assert m["pixel_diversity"] > 0
    # the noise baseline's latent spread matches the boundary sampler's
    assert abs(js["sets"]["noise"]["latent_spread"] - js["matched_latent_spread"]) < 0.1 * js["matched_latent_spread"]
    assert res["verdict"] == md[0]


def test_equal_diversity_noise_matches_the_boundary_samplers_pixel_diversity(tmp_path):
    """The verdict's comparison set: noise calibrated to the boundary sampler's pixel diversity."""
    from tests.test_synthesis import make_tiny_bank
    from exface.exfacegan.report import calibrate_sigma_to_diversity
    from exface.exfacegan.samplers import ExFaceGANSampler
    from exface.exfacegan.synthesis import synthesize_dataset

    gan, aligner, emb, bnd, refs = make_tiny_bank(tmp_path)
    synthesize_dataset(gan, aligner, emb, bnd, refs, tmp_path / "ds", images_per_identity=6, num_identities=4,
                       batch_size=12, accelerator="cpu", progress=False, sampler=ExFaceGANSampler(0.0, 1.0),
                       extra_settings={"bank": str(tmp_path / "bank"), "boundaries": str(tmp_path / "boundaries.pt")})
    js = quality_report(tmp_path / "ds", tmp_path / "rep", gan, aligner, emb, seed=0)
    target = js["sets"]["boundary"]["pixel_diversity"]
    reached = js["sets"]["noise_equal_diversity"]["pixel_diversity"]
    assert abs(reached - target) < 0.15 * target
    assert (tmp_path / "rep" / "grid_noise_equal_diversity.png").is_file()
    assert "noise_equal_diversity" in (tmp_path / "rep" / "report.md").read_text()
    # diversity grows with sigma, and the calibration lands on the target
    space = js["space"]
    references = refs[space].float() if isinstance(refs, dict) else refs
    idents = [(0, 1), (1, 1)]
    sigma, d = calibrate_sigma_to_diversity(gan, bnd, references, idents, 6, space, 0.05, 0.1, False, None,
                                            steps=10)
    sigma2, d2 = calibrate_sigma_to_diversity(gan, bnd, references, idents, 6, space, 0.1, 0.1, False, None,
                                              steps=10)
    assert sigma2 > sigma and abs(d - 0.05) < 0.01 and abs(d2 - 0.1) < 0.02


def test_report_verdict_uses_the_independent_evaluator(tmp_path):
    """With an evaluator the verdict uses its figures and the report shows both networks' tables."""
    from tests.test_synthesis import make_tiny_bank
    from exface.exfacegan.samplers import ExFaceGANSampler
    from exface.exfacegan.synthesis import synthesize_dataset
    from exface.testing.tiny import TinyEmbedder

    gan, aligner, emb, bnd, refs = make_tiny_bank(tmp_path)
    synthesize_dataset(gan, aligner, emb, bnd, refs, tmp_path / "ds", images_per_identity=6, num_identities=4,
                       batch_size=12, accelerator="cpu", progress=False, sampler=ExFaceGANSampler(0.0, 1.0),
                       extra_settings={"bank": str(tmp_path / "bank"), "boundaries": str(tmp_path / "boundaries.pt")})
    judge = TinyEmbedder(seed=123)  # other weights: a different network than the labeler
    js = quality_report(tmp_path / "ds", tmp_path / "rep", gan, aligner, emb, seed=0, evaluator=judge)
    assert js["evaluator"] == "TinyEmbedder" and set(js["evaluator_sets"]) == set(js["sets"])
    ev, lab = js["evaluator_sets"], js["sets"]
    assert ev["boundary"]["eer"] != lab["boundary"]["eer"] or ev["boundary"]["genuine_mean"] != lab["boundary"]["genuine_mean"]
    assert ev["boundary"]["pixel_diversity"] == lab["boundary"]["pixel_diversity"]  # same images
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "judged by the independent evaluator TinyEmbedder" in md.splitlines()[0]
    assert f"{ev['boundary']['eer']:.4f} vs {ev['noise_equal_diversity']['eer']:.4f}" in md.splitlines()[0]
    assert "## Judged by the evaluator" in md and "## Judged by the labeler" in md
    # without an evaluator the verdict says the labeler judged its own labels
    js2 = quality_report(tmp_path / "ds", tmp_path / "rep2", gan, aligner, emb, seed=0, independent_evaluator=False)
    assert "evaluator_sets" not in js2 and "not an independent check" in js2["verdict"]


def test_default_evaluator_is_another_network_with_the_labelers_crop():
    from exface.alignment import FixedCropAligner, ResizeAligner
    from exface.exfacegan.evaluator import EVALUATOR_FOR, default_evaluator, evaluator_aligner
    from exface.testing.tiny import TinyEmbedder

    assert EVALUATOR_FOR["FaceApiResNet34"] == "HSEFaceRes" and EVALUATOR_FOR["IResNetEmbedder"] == "FaceApiResNet34"
    ev, why = default_evaluator(TinyEmbedder())
    assert ev is None and "no default evaluator" in why

    def big():
        return TinyEmbedder(input_size=(224, 224))

    crop = evaluator_aligner(FixedCropAligner((0.1, 0.2, 0.9, 1.0), (150, 150)), big())
    assert isinstance(crop, FixedCropAligner) and crop.box == (0.1, 0.2, 0.9, 1.0) and crop.output_size == (224, 224)
    assert evaluator_aligner(ResizeAligner((150, 150)), big()).output_size == (224, 224)
