"""The quality report compares like with like: the baselines get the dataset's face check, the dataset
side is measured on lossless frames as the baselines are, and what stays unlike is named in the verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from exface.alignment import FixedCropAligner, LandmarkAligner
from exface.alignment.templates import ArcFaceTemplate
from exface.errors import ExfaceError
from exface.exfacegan.crops import aligned_crops
from exface.exfacegan.report import candidate_draw, quality_report, render_checked_set, render_set
from exface.exfacegan.samplers import ExFaceGANSampler, RandomSampler
from exface.exfacegan.synthesis import synthesize_dataset
from exface.testing.tiny import TinyEmbedder
from tests.test_synthesis import make_tiny_bank
from tests.test_synthesis_crops import TEMPLATE, _HalfFaceLandmarks


class _DarkFaceLandmarks(_HalfFaceLandmarks):
    """The template's points, scrambled ("no face") where an image's own red mean is below -0.8:
    about a third of the tiny generator's images, decided per image (not relative to its batch)."""

    def forward(self, images, boxes=None):
        n, _, h, _ = images.shape
        pts = (TEMPLATE.points.float() * h / 112).expand(n, 5, 2).clone()
        bad = images[:, 0].mean((1, 2)) < -0.8
        pts[bad] = pts[bad][:, [3, 0, 2, 4, 1]]
        return pts


def _synth(root, crop_aligner=None, **kw):
    gan, aligner, emb, bnd, refs = make_tiny_bank(root)
    args = dict(images_per_identity=6, num_identities=2, sampler=ExFaceGANSampler(0.0, 2.0), batch_size=6,
                accelerator="cpu", progress=False, crop_aligner=crop_aligner,
                extra_settings={"bank": str(root / "bank"), "boundaries": str(root / "boundaries.pt")})
    args.update(kw)
    stats = synthesize_dataset(gan, aligner, emb, bnd, refs, root / "ds", **args)
    return stats, (gan, aligner, emb, bnd, refs)


def _crop():
    return LandmarkAligner(TEMPLATE, _DarkFaceLandmarks())


def test_render_checked_set_resamples_drops_and_keeps_only_faces(tmp_path):
    gan, aligner, emb, bnd, refs = make_tiny_bank(tmp_path)
    crop = _crop()
    draw = candidate_draw(RandomSampler(), bnd, refs["w"], [(j, 1) for j in range(3)], gan, 0, 1)

    imgs, (e,), lats, owner, counts = render_checked_set(gan, [(aligner, emb)], draw, 3, 8, "w", 5, None,
                                                         (crop, 0.35, 1))
    assert counts["face_check_failed"] > 0 and counts["dropped"] == counts["face_check_failed"]
    assert len(imgs) == len(e) == len(lats) == len(owner) == 24 - counts["dropped"]
    assert list(owner) == sorted(owner)
    assert aligned_crops(crop, torch.from_numpy(imgs), 0.35)[1].all()  # 16-px frames are not shrunk
    # embeddings and images are of the latents' renders
    again, (e2,) = render_set(gan, [(aligner, emb)], lats, "w", 64)
    assert np.array_equal(again, imgs) and np.allclose(e2, e, atol=1e-5)
    # more rounds resample the failures: fewer drops (round 0 draws the same candidates)
    *_, more = render_checked_set(gan, [(aligner, emb)], draw, 3, 8, "w", 5, None, (crop, 0.35, 8))
    assert more["dropped"] < counts["dropped"] and more["face_check_failed"] > counts["face_check_failed"]
    # without a check it is render_set of the same draws, one identity per forward pass
    imgs3, (e3,), lats3, owner3, c3 = render_checked_set(gan, [(aligner, emb)], draw, 3, 8, "w", 8)
    lat_ref = torch.stack([draw(j, i, 0) for j in range(3) for i in range(8)])
    ref = [render_set(gan, [(aligner, emb)], lat_ref[8 * j:8 * j + 8], "w", 8) for j in range(3)]
    assert c3 == {"face_check_failed": 0, "dropped": 0} and torch.equal(lats3, lat_ref)
    assert np.array_equal(imgs3, np.concatenate([r[0] for r in ref]))
    assert np.array_equal(e3, np.concatenate([r[1][0] for r in ref])) and list(owner3) == [0] * 8 + [1] * 8 + [2] * 8


def test_baselines_get_the_datasets_face_check(tmp_path):
    stats, (gan, aligner, emb, *_) = _synth(tmp_path, _crop(), filter_rounds=2, num_identities=4)
    assert stats["face_check_failed"] > 0
    res = quality_report(tmp_path / "ds", tmp_path / "rep", gan, aligner, emb, batch_size=6, seed=0,
                         crop_aligner=_crop())
    fc = res["baseline_face_check"]
    assert fc["status"] == "same" and fc["face_check"] == 0.35 and fc["rounds"] == 2
    assert set(fc["sets"]) == {"random", "noise", "noise_equal_diversity"}
    assert sum(c["face_check_failed"] for c in fc["sets"].values()) > 0
    for name, c in fc["sets"].items():
        assert res["sets"][name]["num_images"] == 24 - c["dropped"]
    assert "not face-checked" not in res["verdict"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "The baselines got the same face check (max error 0.35, 2 rounds)" in md


def test_without_the_crop_aligner_the_verdict_names_the_unchecked_baselines(tmp_path):
    stats, (gan, aligner, emb, *_) = _synth(tmp_path, _crop(), filter_rounds=1, num_identities=4)
    assert stats["dropped"] > 0
    with pytest.warns(UserWarning, match="not face-checked"):
        res = quality_report(tmp_path / "ds", tmp_path / "rep", gan, aligner, emb, batch_size=6, seed=0)
    assert res["baseline_face_check"]["status"] == "not applied"
    assert "not like for like" in res["verdict"] and "the baselines' were not face-checked" in res["verdict"]
    assert f"{stats['dropped']} dropped" in res["verdict"]
    assert f"image counts differ (boundary {24 - stats['dropped']}, random 24" in res["verdict"]
    with pytest.raises(ExfaceError, match="another crop_aligner"):
        quality_report(tmp_path / "ds", tmp_path / "rep", gan, aligner, emb, batch_size=6, seed=0,
                       crop_aligner=LandmarkAligner(ArcFaceTemplate((96, 96), 8.0), _DarkFaceLandmarks()))


def test_a_crop_without_landmarks_and_the_identity_filter(tmp_path):
    """A fixed crop has no face check to share (nothing is unlike); the baselines pass the dataset's identity filter."""
    _, (gan, aligner, emb, *_) = _synth(tmp_path, FixedCropAligner((0.1, 0.1, 0.9, 0.9), (16, 16)))
    res = quality_report(tmp_path / "ds", tmp_path / "rep", gan, aligner, emb, batch_size=6, seed=0)
    assert res["baseline_face_check"]["status"] == "none" and "not like for like" not in res["verdict"]
    assert res["baseline_identity_filter"] == {"status": "none", "identity_filter": None, "sets": {}}
    _, (gan, aligner, emb, *_) = _synth(tmp_path / "f", identity_filter=0.99, filter_rounds=3)
    res = quality_report(tmp_path / "f" / "ds", tmp_path / "f" / "rep", gan, aligner, emb, batch_size=6, seed=0)
    assert "identity filter" not in res["verdict"]
    bif = res["baseline_identity_filter"]
    assert bif["status"] == "same" and bif["identity_filter"] == 0.99 and bif["rounds"] == 3
    assert set(bif["sets"]) == {"noise", "noise_equal_diversity"}
    assert sum(c["identity_filter_failed"] for c in bif["sets"].values()) > 0
    for name, c in bif["sets"].items():
        assert res["sets"][name]["num_images"] == c["passed_filter"] + c["kept_below_filter"] == 12
    md = (tmp_path / "f" / "rep" / "report.md").read_text()
    assert "The baselines got the dataset's identity filter (cosine >= 0.99" in md


def test_a_jpeg_dataset_is_measured_on_lossless_frames_like_its_baselines(tmp_path):
    _, (gan, aligner, emb, *_) = _synth(tmp_path / "png")
    _synth(tmp_path / "jpg", image_format="jpeg", jpeg_quality=20)
    judge = TinyEmbedder(seed=123)
    png = quality_report(tmp_path / "png" / "ds", tmp_path / "png" / "rep", gan, aligner, emb, batch_size=6,
                         baselines=False, evaluator=judge)
    jpg = quality_report(tmp_path / "jpg" / "ds", tmp_path / "jpg" / "rep", gan, aligner, emb, batch_size=6,
                         baselines=False, evaluator=judge)
    assert png["dataset_measured_on"] == "stored frames" and jpg["dataset_measured_on"] == "re-rendered frames"
    for key in ("sets", "evaluator_sets"):
        a, b = png[key]["boundary"], jpg[key]["boundary"]
        assert abs(a["pixel_diversity"] - b["pixel_diversity"]) < 1e-3 * a["pixel_diversity"]
        assert abs(a["genuine_mean"] - b["genuine_mean"]) < 1e-4 and abs(a["eer"] - b["eer"]) < 1e-6
    md = (tmp_path / "jpg" / "rep" / "report.md").read_text()
    assert "measured on lossless frames re-rendered from its latents" in md
