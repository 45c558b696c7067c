"""The report's baselines: the same for any eval batch size, and filtered by the dataset's identity filter.

Every baseline candidate (identity, image slot, round) draws from its own seeded stream and is
rendered, face-checked and embedded in a forward pass of its own identity's candidates, so the
report must not change with ``batch_size`` (at least ``images_per_identity``) nor with the
other identities. A dataset made with ``identity_filter`` has its baselines filtered alike:
same threshold, the labeler's embedding, synthesize's anchors, ``filter_rounds`` rounds, and the
most similar rejects kept where the rounds run out, as synthesize keeps them.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from exface.exfacegan.report import anchor_embeddings, candidate_draw, quality_report, render_checked_set
from exface.exfacegan.samplers import NoiseSampler
from exface.testing.tiny import TinyEmbedder
from tests.test_report_like_for_like import _crop, _synth
from tests.test_synthesis import make_tiny_bank


def test_report_is_the_same_for_any_eval_batch_size(tmp_path):
    """Face check, identity filter, calibration and every set's metrics: byte-identical reports."""
    stats, (gan, aligner, emb, *_) = _synth(tmp_path, _crop(), identity_filter=0.98, filter_rounds=3,
                                            num_identities=2, both_sides=True)
    assert stats["face_check_failed"] > 0
    # A generator whose every image depends on the whole forward pass (as batch-size-dependent GPU
    # kernels or a batch statistic would make it): the reports agree only if each pass holds the
    # same candidates whatever the batch size.
    plain, passes = gan.synthesize, []

    def batch_dependent(lat, *a, **k):
        passes.append(len(lat))
        return plain(lat, *a, **k) + 0.05 * lat.float().mean()

    gan.synthesize = batch_dependent
    reports = [quality_report(tmp_path / "ds", tmp_path / f"rep{bs}", gan, aligner, emb, batch_size=bs, seed=0,
                              crop_aligner=_crop(), evaluator=TinyEmbedder(seed=123))
               for bs in (6, 9, 64)]  # 6 = images_per_identity, 9 = not a multiple of it, 64 = all at once
    a, b, c = (json.dumps(r, sort_keys=True) for r in reports)
    assert a == b == c
    gan.synthesize = plain
    assert passes and max(passes) <= 6  # the wrapper rendered, one identity's candidates per pass
    res = reports[0]
    # the decisions the batch size could have changed were taken
    assert sum(c["face_check_failed"] for c in res["baseline_face_check"]["sets"].values()) > 0
    assert sum(c["identity_filter_failed"] for c in res["baseline_identity_filter"]["sets"].values()) > 0
    assert set(res["evaluator_sets"]) == {"boundary", "random", "noise", "noise_equal_diversity"}


def test_a_candidate_depends_on_its_identity_alone(tmp_path):
    """An identity's images and decisions are the same whichever other identities are rendered beside it."""
    gan, aligner, emb, bnd, refs = make_tiny_bank(tmp_path)
    idents = [(0, 1), (1, -1), (2, 1)]
    judge = (aligner, emb)
    anchors = anchor_embeddings(gan, judge, bnd, refs["w"], refs["embedding"], idents, "w")
    sam = NoiseSampler(0.8, normalize_z=False)

    def run(ids, anc, bs):
        draw = candidate_draw(sam, bnd, refs["w"], ids, gan, 0, 2)
        return render_checked_set(gan, [judge], draw, len(ids), 5, "w", bs, None, (_crop(), 0.35, 3),
                                  (judge, 0.98, anc, 3))

    imgs, (e,), lats, owner, counts = run(idents, anchors, 5)
    alone = run(idents[2:], anchors[2:], 64)
    assert counts["face_check_failed"] > 0 and counts["identity_filter_failed"] > 0
    last = owner == 2
    assert np.array_equal(alone[0], imgs[last]) and np.array_equal(alone[1][0], e[last])
    assert torch.equal(alone[2], lats[last])


def test_baselines_pass_the_identity_filter_and_count_it(tmp_path):
    """Kept images pass the filter, except the counted best rejects kept where the rounds ran out."""
    gan, aligner, emb, bnd, refs = make_tiny_bank(tmp_path)
    idents = [(j, s) for j in range(4) for s in (1, -1)]
    judge = (aligner, emb)
    anchors = anchor_embeddings(gan, judge, bnd, refs["w"], refs["embedding"], idents, "w")
    draw = candidate_draw(NoiseSampler(0.6, normalize_z=False), bnd, refs["w"], idents, gan, 0, 2)
    k, t = 6, 0.97

    def check(rounds):
        imgs, (e,), lats, owner, c = render_checked_set(gan, [judge], draw, len(idents), k, "w", 64, None,
                                                        (_crop(), 0.35, rounds), (judge, t, anchors, rounds))
        sims = (torch.from_numpy(e) * anchors[torch.from_numpy(owner)]).sum(1).numpy()
        assert len(imgs) == len(idents) * k - c["dropped"] == c["passed_filter"] + c["kept_below_filter"]
        assert int((sims < t).sum()) == c["kept_below_filter"]
        assert c["candidates_drawn"] == c["passed_filter"] + c["identity_filter_failed"] + c["face_check_failed"]
        for j in range(len(idents)):  # an identity's passing images first, then its rejects, most similar first
            sj = sims[owner == j]
            below = sj[sj < t]
            assert (sj[:len(sj) - len(below)] >= t).all() and (np.diff(below) <= 0).all()
        return c

    one = check(1)  # no second round: every reject that passed the face check is kept
    assert one["identity_filter_failed"] > 0 and one["kept_below_filter"] == one["identity_filter_failed"]
    check(2)
    many = check(12)  # enough rounds: every image kept passed the filter (and passed the face check)
    assert many["identity_filter_failed"] > one["identity_filter_failed"] and many["kept_below_filter"] == 0
    assert many["dropped"] == 0 and many["passed_filter"] == len(idents) * k


def test_anchors_are_synthesizes(tmp_path):
    """The filter's anchors reproduce the similarities synthesize recorded for its images (both sides)."""
    _, (gan, aligner, emb, bnd, refs) = _synth(tmp_path, identity_filter=0.98, filter_rounds=2, num_identities=2,
                                               both_sides=True)
    settings = json.loads((tmp_path / "ds" / "synthesis.json").read_text())
    rows = [json.loads(ln) for ln in (tmp_path / "ds" / "manifest.jsonl").read_text().splitlines()]
    idents = [(b, s) for _, b, s in settings["identities"]]
    index = {n: q for q, (n, _, _) in enumerate(settings["identities"])}
    anchors = anchor_embeddings(gan, (aligner, emb), bnd, refs["w"].float(), refs["embedding"], idents, "w")
    e = torch.from_numpy(np.load(tmp_path / "ds" / "embeddings.npy"))
    sims = (e * anchors[[index[r["identity"]] for r in rows]]).sum(1)
    assert {s for _, s in idents} == {1, -1}
    assert np.allclose(sims.numpy(), [r["similarity_to_reference"] for r in rows], atol=1e-5)


def test_filter_anchors_must_match_the_identities_and_a_split_pass_is_warned(tmp_path, caplog):
    import pytest

    gan, aligner, emb, bnd, refs = make_tiny_bank(tmp_path)
    idents = [(0, 1), (1, -1)]
    judge = (aligner, emb)
    anchors = anchor_embeddings(gan, judge, bnd, refs["w"], refs["embedding"], idents, "w")
    draw = candidate_draw(NoiseSampler(0.8, normalize_z=False), bnd, refs["w"], idents, gan, 0, 2)
    with pytest.raises(ValueError, match="1 anchors for 2 identities"):
        render_checked_set(gan, [judge], draw, len(idents), 3, "w", 8, None, None, (judge, 0.9, anchors[:1], 2))
    _, (gan, aligner, emb, *_) = _synth(tmp_path / "s")
    with caplog.at_level("WARNING", logger="exface.exfacegan.report"):
        quality_report(tmp_path / "s" / "ds", tmp_path / "s" / "rep", gan, aligner, emb, batch_size=2, seed=0)
    assert any("splits each identity's baseline pass" in r.getMessage() for r in caplog.records)
