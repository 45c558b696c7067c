"""What a synthetic dataset, its report and its boundaries record, and the resumes/reports they refuse.

jpeg quality and the crop aligner (weights, landmark source, detector, options) are content
settings of a dataset; the standalone report checks its parts and the bank/boundaries it
reloads; an evaluator that is the labeler is no independent judge; sklearn learners' stored
validation metrics are those of the saved boundaries; boundaries record how the bank was
labeled; and ExFaceGAN's truncation toward the origin (``truncation_center="zero"``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from exface.alignment import LandmarkAligner, ResizeAligner
from exface.alignment.templates import ArcFaceTemplate
from exface.boundaries.base import Boundaries
from exface.errors import ExfaceError, ExfaceStateError
from exface.exfacegan import synthesis as syn
from exface.exfacegan.samplers import ExFaceGANSampler
from exface.alignment.landmarks import LandmarkSource
from exface.testing.tiny import TinyDetector, TinyEmbedder
from torch import Tensor
from tests.test_synthesis import make_tiny_bank


@pytest.fixture()
def tiny(tmp_path):
    return (tmp_path, *make_tiny_bank(tmp_path))


def _run(root, gan, aligner, emb, bnd, refs, **kw):
    args = dict(images_per_identity=3, num_identities=1, batch_size=3, accelerator="cpu", progress=False,
                sampler=ExFaceGANSampler(0.0, 2.0),
                extra_settings={"bank": str(root / "bank"), "boundaries": str(root / "boundaries.pt")})
    args.update(kw)
    return syn.synthesize_dataset(gan, aligner, emb, bnd, refs, root / "ds", **args)


# ---------------------------------------------------------------- 1. jpeg quality


def test_jpeg_quality_is_recorded_and_a_resume_with_another_is_refused(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    st = _run(root, gan, aligner, emb, bnd, refs, image_format="jpeg", jpeg_quality=90)
    assert st["jpeg_quality"] == 90 and json.loads((root / "ds" / "synthesis.json").read_text())["jpeg_quality"] == 90
    with pytest.raises(ExfaceStateError, match="jpeg_quality: the dataset has 90, this run 80"):
        _run(root, gan, aligner, emb, bnd, refs, image_format="jpeg", jpeg_quality=80)
    assert _run(root, gan, aligner, emb, bnd, refs, image_format="jpeg", jpeg_quality=90)["redone_items"] == 0
    # PNG is lossless: no quality is recorded, and the (unused) jpeg_quality does not matter
    png = _run(root / "png", gan, aligner, emb, bnd, refs)
    assert png["jpeg_quality"] is None
    assert _run(root / "png", gan, aligner, emb, bnd, refs, jpeg_quality=50)["redone_items"] == 0
    with pytest.raises(ExfaceError, match="jpeg_quality must be in 1..100"):
        _run(root / "bad", gan, aligner, emb, bnd, refs, image_format="jpeg", jpeg_quality=0)


def test_an_older_jpeg_dataset_without_its_quality_is_refused(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    _run(root, gan, aligner, emb, bnd, refs, image_format="jpeg")
    path = root / "ds" / "synthesis.json"
    old = json.loads(path.read_text())
    del old["jpeg_quality"]
    path.write_text(json.dumps(old))
    with pytest.raises(ExfaceStateError, match="jpeg_quality: the dataset has 'not recorded', this run 95"):
        _run(root, gan, aligner, emb, bnd, refs, image_format="jpeg")


# ---------------------------------------------------------------- 2. the crop aligner's fingerprint


class _SeededLandmarks(LandmarkSource):
    """Test source with weights: the template's points in the face box, nudged by a seeded layer."""

    scheme = "insightface5"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self.nudge = torch.nn.Linear(3, 10)
        torch.nn.init.normal_(self.nudge.weight, std=0.01, generator=torch.Generator().manual_seed(seed))
        torch.nn.init.zeros_(self.nudge.bias)

    def forward(self, images: Tensor, boxes: Tensor | None = None) -> Tensor:
        boxes = self.default_boxes(images) if boxes is None else boxes
        unit = TEMPLATE.points.float() / 112
        size = (boxes[:, 2:] - boxes[:, :2])[:, None]
        pts = boxes[:, None, :2] + unit[None] * size
        return pts + self.nudge(images.mean((2, 3))).view(-1, 5, 2)


TEMPLATE = ArcFaceTemplate((112, 112), 8.0)


def _crop(seed: int = 0, min_mean: float = -0.9, antialias: bool = True) -> LandmarkAligner:
    return LandmarkAligner(TEMPLATE, _SeededLandmarks(seed), detector=TinyDetector(min_mean=min_mean),
                           antialias=antialias)


def test_crop_aligner_is_fingerprinted_and_a_resume_with_another_is_refused(tiny):
    root, gan, aligner, emb, bnd, refs = tiny
    st = _run(root, gan, aligner, emb, bnd, refs, crop_aligner=_crop(), face_check=None)
    parts = st["parts"]
    assert parts["crop_aligner"]["class"] == "LandmarkAligner" and parts["crop_aligner"]["weights_sha256"]
    assert parts["crop_aligner.source"] == {"class": "_SeededLandmarks", "args": {"seed": 0},
                                            "weights_sha256": parts["crop_aligner.source"]["weights_sha256"]}
    assert parts["crop_aligner.detector"]["class"] == "TinyDetector"
    assert parts["crop_aligner.detector"]["args"] == {"boxes": [[0.25, 0.25, 0.75, 0.75]], "min_mean": -0.9}
    cases = {
        "another landmark model": (_crop(seed=1), ["parts.crop_aligner.weights", "parts.crop_aligner.source.seed"]),
        "another detector setting": (_crop(min_mean=-0.5), ["parts.crop_aligner.detector.min_mean"]),
        "another option": (_crop(antialias=False), ["parts.crop_aligner.antialias: recorded True, given False"]),
    }
    for what, (crop, expected) in cases.items():
        with pytest.raises(ExfaceStateError) as err:
            _run(root, gan, aligner, emb, bnd, refs, crop_aligner=crop, face_check=None)
        for e in expected:
            assert e in str(err.value), (what, str(err.value))
    no_detector = LandmarkAligner(TEMPLATE, _SeededLandmarks(0))
    with pytest.raises(ExfaceStateError, match="parts.crop_aligner.detector: recorded TinyDetector, given None"):
        _run(root, gan, aligner, emb, bnd, refs, crop_aligner=no_detector, face_check=None)
    # the same crop aligner (a new instance) finishes nothing twice
    assert _run(root, gan, aligner, emb, bnd, refs, crop_aligner=_crop(), face_check=None)["redone_items"] == 0


# ---------------------------------------------------------------- 3, 4. the standalone report


def test_report_refuses_other_parts_and_a_changed_bank_or_boundaries(tiny):
    from exface.exfacegan.report import quality_report

    root, gan, aligner, emb, bnd, refs = tiny
    _run(root, gan, aligner, emb, bnd, refs, num_identities=2)
    kw = dict(batch_size=6, independent_evaluator=False)
    with pytest.raises(ExfaceError, match=r"other parts than the dataset(.|\n)*embedder.weights") as err:
        quality_report(root / "ds", root / "rep", gan, aligner, TinyEmbedder(seed=5), **kw)
    assert "synthesis.json" in str(err.value)
    with pytest.raises(ExfaceError, match="aligner: recorded ResizeAligner, given LandmarkAligner"):
        quality_report(root / "ds", root / "rep", gan, _crop(), emb, **kw)
    # the boundaries refit at the same path since the dataset was made
    refit = Boundaries(torch.nn.functional.normalize(bnd.normals + 0.2, dim=1), bnd.offsets, bnd.space,
                       bnd.val_balanced_accuracy, bnd.val_auc)
    refit.save(root / "boundaries.pt")
    with pytest.raises(ExfaceError, match="boundaries_sha256: the dataset was made from boundaries") as err:
        quality_report(root / "ds", root / "rep", gan, aligner, emb, **kw)
    assert "restore the bank and boundaries" in str(err.value)
    bnd.save(root / "boundaries.pt")
    # the bank's references rewritten
    other = dict(refs, embedding=torch.nn.functional.normalize(refs["embedding"] + 0.1, dim=1))
    torch.save(other, root / "bank" / "references.pt")
    with pytest.raises(ExfaceError, match="bank_references_sha256"):
        quality_report(root / "ds", root / "rep", gan, aligner, emb, **kw)
    torch.save(refs, root / "bank" / "references.pt")
    assert quality_report(root / "ds", root / "rep", gan, aligner, emb, **kw)["sets"]["boundary"]["num_images"] == 6


def test_an_evaluator_that_is_the_labeler_is_not_called_independent(tiny):
    from exface.exfacegan.evaluator import is_same_network
    from exface.exfacegan.report import quality_report

    root, gan, aligner, emb, bnd, refs = tiny
    _run(root, gan, aligner, emb, bnd, refs, num_identities=2)
    assert is_same_network(TinyEmbedder(), emb) and not is_same_network(TinyEmbedder(seed=1), emb)
    res = quality_report(root / "ds", root / "rep", gan, aligner, emb, batch_size=6, evaluator=TinyEmbedder())
    assert res["evaluator"] is None and "evaluator_sets" not in res
    assert "labeler itself" in res["evaluator_choice"]
    assert "not an independent check" in res["verdict"]
    md = (root / "rep" / "report.md").read_text()
    assert "no independent evaluator" in md and "## Judged by the evaluator" not in md
    # another network stays the independent judge
    res2 = quality_report(root / "ds", root / "rep2", gan, aligner, emb, batch_size=6, evaluator=TinyEmbedder(seed=1))
    assert res2["evaluator"] == "TinyEmbedder" and "judged by the independent evaluator" in res2["verdict"]


# ---------------------------------------------------------------- 5. sklearn learners' stored metrics


@pytest.mark.parametrize("normal", ["scaled", "raw"])
@pytest.mark.parametrize("learner", ["LinearSVCBoundary", "LogisticBoundary"])
def test_sklearn_validation_metrics_are_those_of_the_saved_boundaries(learner, normal):
    from exface.boundaries import sklearn_learners
    from exface.boundaries.base import latent_split
    from exface.boundaries.metrics import balanced_accuracy, roc_auc

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g) * torch.tensor([1.0, 8.0, 0.2, 1.0, 4.0, 1.0]) + 3.0
    y = torch.stack([(x[:, 0] + 0.3 * x[:, 1] > 3.9), (x[:, 2] - 0.1 * x[:, 4] > 2.7),
                     (x[:, 1] + x[:, 4] > 11.0)]).to(torch.int8)
    est = getattr(sklearn_learners, learner)(minmax_scale=True, balanced_split=True, normal=normal)
    b = est.fit(x, y)
    train, val = (t.numpy() for t in latent_split(400, est.val_fraction, est.seed))
    for r in range(3):
        _, va = est._indices(y[r].numpy(), r, train, val)
        s = b.signed_distance(x[torch.from_numpy(va)], r)[None]
        lab = y[r][torch.from_numpy(va)][None]
        assert torch.equal(balanced_accuracy(s, lab)[0], b.val_balanced_accuracy[r])
        assert torch.equal(roc_auc(s, lab)[0], b.val_auc[r])
    if normal == "scaled" and learner == "LinearSVCBoundary":
        # ExFaceGAN's scaled-space normal is not the fitted hyperplane: the saved boundary is
        # measurably worse than the classifier here, and that is what gets recorded
        raw = getattr(sklearn_learners, learner)(minmax_scale=True, balanced_split=True).fit(x, y)
        assert (b.val_balanced_accuracy < raw.val_balanced_accuracy - 0.01).any()


# ---------------------------------------------------------------- 6. boundaries' labeling provenance


def test_boundaries_record_how_the_bank_was_labeled(tmp_path):
    from exface.boundaries.learner_module import BoundaryLearnerModule
    from exface.boundaries.sklearn_learners import LinearSVCBoundary
    from exface.exfacegan.datamodule import IdentityBankDataModule
    from exface.testing.tiny import TinyGenerator
    import lightning.pytorch as pl

    dm = IdentityBankDataModule(TinyGenerator(), TinyEmbedder(), ResizeAligner((16, 16)), str(tmp_path / "bank"),
                                num_latents=40, chunk_size=20, num_references=3, space="w", label_rule="topk",
                                top_k=5, leave_one_out=False, balance=True, seed=3, accelerator="cpu")
    model = BoundaryLearnerModule(LinearSVCBoundary(), save_path=str(tmp_path / "b.pt"))
    pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(model, datamodule=dm)
    meta = Boundaries.load(tmp_path / "b.pt").meta
    assert {k: meta[k] for k in ("num_references", "label_rule", "top_k", "threshold", "leave_one_out", "balance",
                                 "label_seed")} == {"num_references": 3, "label_rule": "topk", "top_k": 5,
                                                    "threshold": None, "leave_one_out": False, "balance": True,
                                                    "label_seed": 3}
    assert meta["bank_references_sha256"] and meta["learner"] == "LinearSVCBoundary"


# ---------------------------------------------------------------- 8. ExFaceGAN's truncation toward the origin


@pytest.fixture()
def stylegan(tmp_path):
    from exface.generators.stylegan import StyleGAN2
    from exface.testing import make_stylegan2_pickle

    pkl = make_stylegan2_pickle(tmp_path / "g.pkl", resolution=16, z_dim=8, w_dim=8)
    return StyleGAN2(str(pkl), truncation_psi=0.7, truncation_cutoff=2)


def test_truncation_center_zero_scales_w_on_the_cutoff_layers(stylegan):
    from exface.exfacegan.samplers import render_latents

    gan = stylegan
    assert gan.w_avg.abs().max() > 0.1  # else the two centres could not be told apart
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    w = gan.to_w(z, truncation_psi=1.0)
    ws = w[:, None].repeat(1, gan.num_ws, 1)
    ws[:, :2] = 0.7 * ws[:, :2]  # their TruncationModule: w_avg = 0, so w_avg + 0.7 (w - w_avg) = 0.7 w
    theirs = gan.synthesize(ws, space="w+")
    assert torch.allclose(render_latents(gan, w, "w", 0.7, 2, "zero"), theirs, atol=1e-5)
    assert torch.allclose(render_latents(gan, z, "z", 0.7, 2, "zero"), theirs, atol=1e-5)  # z: mapped untruncated
    default = render_latents(gan, w, "w", 0.7, 2)
    assert torch.allclose(default, gan.synthesize(z, space="z"), atol=1e-5)  # w_avg: the generator's own truncation
    assert (default - theirs).abs().max() > 1e-2
    assert torch.allclose(render_latents(gan, w, "w", 1.0, 2, "zero"), gan.synthesize(w, space="w"))  # psi 1: none
    with pytest.raises(ValueError, match="truncation_center"):
        render_latents(gan, w, "w", 0.7, 2, "origin")


def test_truncation_center_is_recorded_by_bank_and_dataset_and_checked_on_resume(tmp_path, stylegan):
    from exface.exfacegan.latent_bank import BankMismatchError, LatentBank
    from exface.exfacegan.samplers import render_latents
    from exface.tensors import to_uint8

    gan, al, emb = stylegan, ResizeAligner((16, 16)), TinyEmbedder()
    kw = dict(num_latents=6, chunk_size=6, accelerator="cpu", store_images=True)
    bank = LatentBank.build(tmp_path / "bank", gan, al, emb, truncation_center="zero", **kw)
    assert bank.manifest["truncation_center"] == "zero"
    data = bank.get(range(6), ("z", "w", "image"))
    again = to_uint8(render_latents(gan, data["w"], "w", 0.7, 2, "zero"))
    assert (again.int() - data["image"].int()).abs().max() <= 1  # a stored w re-renders its embedded image
    plain = LatentBank.build(tmp_path / "plain", gan, al, emb, **kw)
    assert plain.manifest["truncation_center"] == "w_avg"
    assert (plain.get(range(6), ("image",))["image"].int() - data["image"].int()).abs().max() > 10
    with pytest.raises(BankMismatchError, match="truncation_center: bank has 'zero', requested 'w_avg'"):
        LatentBank.build(tmp_path / "bank", gan, al, emb, **kw)
    # a bank built before the option existed was rendered toward w_avg, and resumes as such
    m = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    del m["truncation_center"]
    (tmp_path / "plain" / "manifest.json").write_text(json.dumps(m))
    LatentBank.build(tmp_path / "plain", gan, al, emb, **kw)

    # synthesize: recorded in synthesis.json, part of what a resume must match
    refs = bank.write_references(torch.arange(2))
    normals = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    bnd = Boundaries(normals, 0.5 - (refs["w"] * normals).sum(1), "w", torch.ones(2), torch.ones(2))
    args = dict(images_per_identity=2, batch_size=2, accelerator="cpu", progress=False,
                sampler=ExFaceGANSampler(0.0, 1.0), truncation_psi=0.7, truncation_cutoff=2)
    st = syn.synthesize_dataset(gan, al, emb, bnd, refs, tmp_path / "ds", truncation_center="zero", **args)
    assert st["truncation_center"] == "zero"
    lat = torch.from_numpy(np.load(tmp_path / "ds" / "latents.npy"))
    e = syn.embed_images(al, emb, to_uint8(render_latents(gan, lat, "w", 0.7, 2, "zero")).cpu())
    assert torch.allclose(e, torch.from_numpy(np.load(tmp_path / "ds" / "embeddings.npy")), atol=1e-4)
    with pytest.raises(ExfaceStateError, match="truncation_center: the dataset has 'zero', this run 'w_avg'"):
        syn.synthesize_dataset(gan, al, emb, bnd, refs, tmp_path / "ds", **args)


def test_paper_recipes_truncate_toward_the_origin():
    from pathlib import Path

    import yaml

    for gen in (2, 3):
        path = Path(__file__).resolve().parents[1] / "recipes" / f"exfacegan_paper_stylegan{gen}.yaml"
        cfg = yaml.safe_load(path.read_text())["data"]["init_args"]
        assert cfg["truncation_center"] == "zero" and cfg["generator"]["init_args"]["truncation_psi"] == 0.7
        assert "TruncationModule" in path.read_text()
