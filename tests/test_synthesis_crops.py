"""exface synthesize stores the crop FR trains on: crop size/format, frames, face check, report."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from exface.alignment import FixedCropAligner, LandmarkAligner
from exface.alignment.landmarks import LandmarkSource
from exface.alignment.templates import ArcFaceTemplate
from exface.exfacegan.crops import plausible_faces
from exface.exfacegan.samplers import ExFaceGANSampler
from exface.exfacegan.synthesis import synthesize_dataset
from tests.test_synthesis import make_tiny_bank

TEMPLATE = ArcFaceTemplate((112, 112), 8.0)


class _HalfFaceLandmarks(LandmarkSource):
    """Test source: the template's points scaled to the frame, scrambled where the red mean is low.

    Roughly half of the tiny generator's images then "have no face" (the scrambled points fit
    no similarity of the template).
    """

    scheme = "insightface5"

    def forward(self, images: Tensor, boxes: Tensor | None = None) -> Tensor:
        n, _, h, _ = images.shape
        pts = (TEMPLATE.points.float() * h / 112).expand(n, 5, 2).clone()
        bad = images[:, 0].mean((1, 2)) < images[:, 0].mean()
        pts[bad] = pts[bad][:, [3, 0, 2, 4, 1]]  # eyes and mouth corners swapped: no face
        return pts


def test_plausible_faces_accepts_template_rejects_scrambled_and_outside():
    good = TEMPLATE.points.float()[None] * 0.5 + 3.0  # a similarity of the template
    flipped = good[:, [3, 4, 2, 0, 1]]  # mouth above the eyes: a reflection, no similarity fits
    on_side = good[:, [3, 0, 2, 4, 1]]  # the face turned by 90 degrees
    outside = good + 100.0
    tiny = good * 0.01
    ok = plausible_faces(torch.cat([good, flipped, on_side, outside, tiny]), TEMPLATE.points, 64, 64)
    assert ok.tolist() == [True, False, False, False, False]


def _synth(tmp_path, crop_aligner, **kw):
    gan, aligner, emb, bnd, refs = make_tiny_bank(tmp_path)
    return synthesize_dataset(gan, aligner, emb, bnd, refs, tmp_path / "ds", images_per_identity=6, num_identities=2,
                              sampler=ExFaceGANSampler(0.0, 2.0), batch_size=6, accelerator="cpu", progress=False,
                              crop_aligner=crop_aligner, **kw), (gan, aligner, emb)


def test_fixed_crop_as_jpeg_with_frames(tmp_path):
    stats, _ = _synth(tmp_path, FixedCropAligner((0.1, 0.1, 0.9, 0.9), (24, 20)), image_format="jpeg",
                      save_frames=True)
    ds = tmp_path / "ds"
    rows = [json.loads(ln) for ln in (ds / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and stats["dropped"] == 0 and stats["face_check_failed"] == 0
    assert stats["crop"]["class"] == "FixedCropAligner" and stats["crop"]["output_size"] == [24, 20]
    for r in rows:
        assert r["file"].endswith(".jpg") and Image.open(ds / r["file"]).size == (20, 24)
        assert Image.open(ds / r["frame"]).size == (16, 16) and r["frame"].startswith("frames/")
    assert stats["bytes_on_disk"] == sum(p.stat().st_size for p in ds.rglob("*") if p.is_file() and ".work" not in str(p)
                                           and p.name != "synthesis.json")


def test_face_check_resamples_then_drops_and_counts(tmp_path):
    crop = LandmarkAligner(TEMPLATE, _HalfFaceLandmarks())
    stats, (gan, aligner, emb) = _synth(tmp_path, crop, filter_rounds=1)
    ds = tmp_path / "ds"
    rows = [json.loads(ln) for ln in (ds / "manifest.jsonl").read_text().splitlines()]
    # one round: failures are dropped, and every kept image passed the check
    assert stats["face_check_failed"] > 0 and stats["dropped"] == stats["face_check_failed"]
    assert len(rows) == 12 - stats["dropped"] == len(np.load(ds / "latents.npy"))
    assert all(Image.open(ds / r["file"]).size == (112, 112) for r in rows)
    # with more rounds the failures are resampled: fewer (or no) images are dropped
    more, _ = _synth(tmp_path / "b", crop, filter_rounds=8)
    assert more["dropped"] < stats["dropped"] and more["face_check_failed"] >= more["dropped"]


def test_report_measures_frames_of_a_crop_dataset(tmp_path):
    from exface.exfacegan.report import quality_report

    stats, (gan, aligner, emb) = _synth(tmp_path, FixedCropAligner((0.2, 0.2, 0.8, 0.8), (32, 32)))
    res = quality_report(tmp_path / "ds", tmp_path / "rep", gan, aligner, emb, batch_size=6, baselines=False)
    stats2, _ = _synth(tmp_path / "frames", None)
    res2 = quality_report(tmp_path / "frames" / "ds", tmp_path / "rep2", gan, aligner, emb, batch_size=6,
                          baselines=False)
    # the same latents: the crop dataset's pixel diversity is that of its (re-rendered) frames
    assert abs(res["sets"]["boundary"]["pixel_diversity"] - res2["sets"]["boundary"]["pixel_diversity"]) < 2e-3
    assert res["face_check"]["crop"]["output_size"] == [32, 32]


def test_encode_images_is_lossless_png_and_independent_of_parts():
    """PNG files decode to the input pixels; splitting a batch over encoders changes no byte."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    from exface.exfacegan.crops import encode_image, encode_images

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (5, 3, 12, 9), dtype=torch.uint8, generator=g)
    one = encode_images(imgs, "png")
    with ThreadPoolExecutor(2) as pool:
        assert encode_images(imgs, "png", map_fn=pool.map, parts=2) == one
    assert [encode_image(im) for im in imgs] == one
    for im, data in zip(imgs, one):
        back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(back, im.permute(1, 2, 0).numpy())
    jpgs = encode_images(imgs, "jpeg", 90)
    assert len(jpgs) == 5 and all(d[:2] == b"\xff\xd8" for d in jpgs)
