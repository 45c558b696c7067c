"""The k-fold verification protocol and the threshold-free metrics."""

from __future__ import annotations

import json
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from exface.evaluation.verification import (
    contiguous_folds,
    cosine_scores,
    equal_error_rate,
    evaluate_verification,
    kfold_accuracy,
    kfold_accuracy_loop,
    roc_auc,
    roc_curve,
    stratified_folds,
    tar_at_far,
    threshold_candidates,
)


def _pairs(n: int, sep: float, seed: int = 0, ties: bool = False):
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    scores = rng.normal(size=n) + sep * issame
    if ties:
        scores = np.round(scores, 1)  # many exactly equal scores
    return scores, issame


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorized_equals_loop_on_all_candidates(seed, ties):
    scores, issame = _pairs(400, 1.0, seed, ties)
    folds = contiguous_folds(len(scores), 10)
    acc_v, thr_v = kfold_accuracy(scores, issame, folds)
    acc_l, thr_l = kfold_accuracy_loop(scores, issame, folds)
    np.testing.assert_array_equal(acc_v, acc_l)
    np.testing.assert_array_equal(thr_v, thr_l)


def test_vectorized_equals_loop_on_a_fixed_grid_with_uneven_folds():
    scores, issame = _pairs(257, 0.7, seed=5)
    grid = np.arange(-4, 4, 0.01)
    folds = np.random.default_rng(3).integers(0, 7, size=len(scores))
    acc_v, thr_v = kfold_accuracy(scores, issame, folds, grid)
    acc_l, thr_l = kfold_accuracy_loop(scores, issame, folds, grid)
    np.testing.assert_array_equal(acc_v, acc_l)
    np.testing.assert_array_equal(thr_v, thr_l)
    # A grid point equal to a score: "same" means strictly above the threshold.
    s = np.array([0.0, 0.5, 0.5, 1.0])
    y = np.array([False, False, True, True])
    f = np.array([0, 1, 0, 1])
    g = np.array([0.0, 0.5, 1.0])
    np.testing.assert_array_equal(kfold_accuracy(s, y, f, g)[0], kfold_accuracy_loop(s, y, f, g)[0])


def test_perfect_separation_is_100_percent_with_a_separating_threshold():
    scores, issame = _pairs(600, 0.0, seed=1)
    scores = np.where(issame, 0.6 + 0.3 * np.abs(scores) / 4, 0.4 - 0.3 * np.abs(scores) / 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both classes present: no warning
        res = evaluate_verification(scores, issame, folds=10)
    assert res.accuracy == 1.0 and res.accuracy_std == 0.0
    assert res.fold_accuracies == [1.0] * 10
    assert all(0.4 <= t < 0.6 for t in res.fold_thresholds)
    assert res.auc == 1.0 and res.eer == 0.0
    assert res.tar_at_far["1e-03"] == 1.0
    assert (res.num_pairs, res.num_same, res.num_folds) == (600, int(issame.sum()), 10)


def test_held_out_scores_do_not_move_their_fold_threshold():
    scores, issame = _pairs(300, 1.5, seed=8)
    folds = contiguous_folds(300, 5)
    _, thr = kfold_accuracy(scores, issame, folds)
    moved = scores.copy()
    moved[folds == 2] += np.random.default_rng(9).normal(size=(folds == 2).sum())
    _, thr_moved = kfold_accuracy(moved, issame, folds)
    assert thr_moved[2] == thr[2]


def test_chance_scores_sit_near_half():
    scores, issame = _pairs(4000, 0.0, seed=2)
    res = evaluate_verification(scores, issame, folds=10)
    assert abs(res.auc - 0.5) < 0.04
    assert abs(res.eer - 0.5) < 0.04
    assert 0.45 < res.accuracy < 0.56


def test_auc_matches_pairwise_probability_and_sklearn():
    from sklearn.metrics import roc_auc_score, roc_curve as sk_roc

    scores, issame = _pairs(500, 1.0, seed=3, ties=True)
    auc = roc_auc(scores, issame)
    pos, neg = scores[issame], scores[~issame]
    mann_whitney = ((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
    assert auc == pytest.approx(mann_whitney, abs=1e-12)
    assert auc == pytest.approx(roc_auc_score(issame, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(scores, issame)
    sk_fpr, sk_tpr, _ = sk_roc(issame, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_eer_is_where_false_accepts_equal_false_rejects():
    # Gaussian classes at +-d/2, unit variance: EER = Phi(-d/2).
    rng = np.random.default_rng(4)
    n, d = 20000, 2.0
    issame = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    scores = np.r_[rng.normal(d / 2, 1, n), rng.normal(-d / 2, 1, n)]
    expected = 0.5 * math.erfc((d / 2) / math.sqrt(2))  # Phi(-1) = 0.1587
    assert equal_error_rate(scores, issame) == pytest.approx(expected, abs=0.01)
    # At the EER threshold FPR and FNR agree.
    fpr, tpr, _ = roc_curve(scores, issame)
    i = np.argmin(np.abs(fpr - (1 - tpr)))
    assert abs(fpr[i] - equal_error_rate(scores, issame)) < 1e-3


def test_tar_at_far_reads_the_roc():
    # 1000 different pairs: FAR 1e-3 allows exactly one false accept.
    neg = np.linspace(0, 1, 1000)
    pos = np.r_[np.full(50, 0.9995), np.full(50, 0.5)]
    scores = np.r_[pos, neg]
    issame = np.r_[np.ones(100, bool), np.zeros(1000, bool)]
    tar = tar_at_far(scores, issame, fars=(1e-3, 0.6))
    assert tar["1e-03"] == pytest.approx(0.5)  # 0.9995 beats all negatives but the top one
    assert tar["6e-01"] == pytest.approx(1.0)
    # Below 1/n: TAR at zero false accepts.
    assert tar_at_far(scores, issame, fars=(1e-6,))["1e-06"] == pytest.approx(0.0)


def test_one_class_gives_nan_metrics_and_a_warning():
    scores = np.linspace(0.3, 0.9, 10)
    issame = np.ones(10, bool)
    with pytest.warns(UserWarning, match="one class"):
        res = evaluate_verification(scores, issame, folds=5)
    assert res.accuracy == 1.0
    assert math.isnan(res.auc) and math.isnan(res.eer) and math.isnan(res.tar_at_far["1e-02"])


def test_contiguous_folds_match_sklearn_kfold():
    from sklearn.model_selection import KFold

    for n, k in [(6000, 10), (605, 10), (11, 3)]:
        folds = contiguous_folds(n, k)
        for f, (_, test) in enumerate(KFold(k, shuffle=False).split(np.arange(n))):
            np.testing.assert_array_equal(np.flatnonzero(folds == f), test)
    with pytest.raises(ValueError, match="num_folds"):
        contiguous_folds(5, 10)
    with pytest.raises(ValueError, match="num_folds"):
        contiguous_folds(50, 1)


def test_stratified_folds_balance_class_ordered_pairs():
    issame = np.r_[np.ones(300, bool), np.zeros(300, bool)]  # LFW's order within a fold
    folds = stratified_folds(issame, 10)
    for f in range(10):
        assert (folds == f).sum() == 60 and issame[folds == f].sum() == 30
    # Contiguous chunks of the same pairs would give single-class folds.
    assert set(issame[contiguous_folds(600, 10) == 0]) == {True}


def test_explicit_folds_are_used_as_given():
    scores, issame = _pairs(300, 1.0, seed=6)
    folds = np.arange(300) % 3
    res = evaluate_verification(scores, issame, folds=folds)
    acc, thr = kfold_accuracy_loop(scores, issame, folds)
    assert res.num_folds == 3
    np.testing.assert_array_equal(res.fold_accuracies, acc)
    np.testing.assert_array_equal(res.fold_thresholds, thr)
    assert res.accuracy == pytest.approx(acc.mean()) and res.accuracy_std == pytest.approx(acc.std())


def test_threshold_candidates_cover_every_decision():
    thr = threshold_candidates(np.array([0.5, 0.1, 0.5, 0.9]))
    np.testing.assert_allclose(thr, [-0.9, 0.3, 0.7, 1.9])


def test_cosine_scores():
    a = np.array([[1.0, 0.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [-3.0, -4.0]])
    np.testing.assert_allclose(cosine_scores(a, b), [1.0, -1.0])
    with pytest.raises(ValueError, match="zero embedding"):
        cosine_scores(np.zeros((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="one shape"):
        cosine_scores(np.ones((2, 3)), np.ones((2, 4)))


def test_bad_input_errors():
    s, y = _pairs(40, 1.0)
    f = contiguous_folds(40, 4)
    with pytest.raises(ValueError, match="40 scores but 39 issame"):
        kfold_accuracy(s, y[:-1], f)
    with pytest.raises(ValueError, match="NaN"):
        kfold_accuracy(np.r_[s[:-1], np.nan], y, f)
    with pytest.raises(ValueError, match="booleans"):
        kfold_accuracy(s, np.full(40, 2), f)
    with pytest.raises(ValueError, match="fold ids"):
        kfold_accuracy(s, y, f[:-1])
    with pytest.raises(ValueError, match="non-negative integers"):
        kfold_accuracy(s, y, f - 1)
    with pytest.raises(ValueError, match="non-negative integers"):
        kfold_accuracy(s, y, f.astype(float))
    with pytest.raises(ValueError, match="every pair"):
        kfold_accuracy(s, y, np.zeros(40, int))
    with pytest.raises(ValueError, match="every fold non-empty"):
        kfold_accuracy(s, y, np.where(f == 1, 2, f))
    with pytest.raises(ValueError, match="increasing"):
        kfold_accuracy(s, y, f, np.array([0.5, 0.1]))
    with pytest.raises(ValueError, match="no pairs"):
        evaluate_verification(np.array([]), np.array([], bool))


# --------------------------------------------------------------------------- exface benchmark


def _small_lfw(shared_data) -> Path:
    path = shared_data / "insightface-bin" / "small_lfw.bin"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.mark.slow
def test_benchmark_command_on_a_one_class_bin(shared_data, tmp_path, capsys):
    from exface.cli import main

    out = tmp_path / "bench"
    main(["benchmark", "--datasets", str(_small_lfw(shared_data)), "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert "small_lfw" in printed and "n/a" in printed and "undefined" in printed
    payload = json.loads((out / "results.json").read_text())  # strict JSON: no NaN
    assert payload["settings"]["embedder"] == "FaceApiResNet34"
    (r,) = payload["results"]
    assert r["dataset"] == "small_lfw" and r["num_pairs"] == 10 and r["num_same"] == 10
    assert r["accuracy"] == 1.0 and r["auc"] is None and r["eer"] is None
    assert r["tar_at_far"] == {"1e-03": None, "1e-02": None}
    assert r["aligner"].startswith("TemplateMapAligner(output_size=(150, 150), mapping='arcface->dlib'")
    assert r["flip"] and r["flip_is_paper_default"]  # the .bin sets' papers flip
    assert any("all 10 pairs are matched" in n for n in r["notes"])
    # Matched LFW pairs of a working embedder are far more alike than chance.
    assert r["score_mean_same"] > 0.5
    report = (out / "report.md").read_text()
    assert "| small_lfw | 10 | yes | 100.00 ± 0.00 |" in report and "undefined" in report
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries


def _two_class_bin(shared_data, tmp_path) -> Path:
    """small_lfw's 10 matched pairs plus 10 mismatched ones (pair i's first face, pair i+1's second)."""
    with _small_lfw(shared_data).open("rb") as f:
        bins, _ = pickle.load(f, encoding="bytes")
    mixed = list(bins) + [x for i in range(10) for x in (bins[2 * i], bins[2 * ((i + 1) % 10) + 1])]
    path = tmp_path / "two_class.bin"
    path.write_bytes(pickle.dumps((mixed, [True] * 10 + [False] * 10), protocol=2))
    return path


@pytest.mark.slow
def test_benchmark_two_classes_with_flip_and_explicit_parts(shared_data, tmp_path, capsys):
    from exface.cli import main

    path = _two_class_bin(shared_data, tmp_path)
    out = tmp_path / "bench"
    main([
        "benchmark", "--datasets", f"[{path},{path}]", "--embedder", "FaceApiResNet34",
        "--aligner", "ResizeAligner", "--aligner.output_size", "[150, 150]",
        "--flip", "true", "--folds", "5", "--batch_size", "7", "--output_dir", str(out),
    ])
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["dataset"] for r in results] == ["two_class", "two_class#2"]
    r = results[0]
    assert r["flip"] and r["num_folds"] == 5 and r["folds"].startswith("5 contiguous")
    # ArcFace 112x112 crops stretched to 150x150 are far from the dlib chips this net expects, so
    # only a weak ordering is asserted (AUC ~0.77 on these 20 pairs; see the benchmark report).
    assert r["auc"] is not None and r["auc"] > 0.6
    assert r["score_mean_same"] > r["score_mean_diff"]
    assert 0.0 <= r["eer"] <= 0.5 and 0.0 <= r["accuracy"] <= 1.0
    assert results[1]["accuracy"] == r["accuracy"]  # deterministic
    assert "TAR@FAR=1e-3" in capsys.readouterr().out


def test_benchmark_errors(shared_data, tmp_path):
    from exface.embedders import FaceApiResNet34
    from exface.alignment import ResizeAligner
    from exface.evaluation.benchmark import run_benchmark

    emb = FaceApiResNet34()
    with pytest.raises(ValueError, match="at least one dataset"):
        run_benchmark([], emb)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_benchmark([tmp_path / "missing.bin"], emb)
    with pytest.raises(ValueError, match=r"makes \(112, 112\) crops but FaceApiResNet34 takes \(150, 150\)"):
        run_benchmark([_small_lfw(shared_data)], emb, ResizeAligner((112, 112)))
    with pytest.raises(ValueError, match="folds must be >= 2"):
        run_benchmark([_small_lfw(shared_data)], emb, folds=1)


# --------------------------------------------------------------------------- insightface parity


def _insightface_calculate_roc_accuracy(thresholds, dist, actual_issame, nrof_folds=10):
    """insightface's calculate_roc accuracy search, transcribed as they wrote it (their
    calculate_accuracy: predict_issame = dist < threshold, acc = (tp + tn) / dist.size;
    best_threshold_index = np.argmax(acc_train); KFold(shuffle=False))."""
    from sklearn.model_selection import KFold

    def calculate_accuracy(threshold, d, same):
        predict_issame = np.less(d, threshold)
        tp = np.sum(np.logical_and(predict_issame, same))
        tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(same)))
        return float(tp + tn) / d.size

    k_fold = KFold(n_splits=nrof_folds, shuffle=False)
    accuracy = np.zeros(nrof_folds)
    best = np.zeros(nrof_folds)
    indices = np.arange(len(dist))
    for fold_idx, (train_set, test_set) in enumerate(k_fold.split(indices)):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            acc_train[threshold_idx] = calculate_accuracy(threshold, dist[train_set], actual_issame[train_set])
        best_threshold_index = np.argmax(acc_train)
        best[fold_idx] = thresholds[best_threshold_index]
        accuracy[fold_idx] = calculate_accuracy(thresholds[best_threshold_index], dist[test_set], actual_issame[test_set])
    return accuracy, best


def _tie_cases():
    from exface.evaluation.verification import INSIGHTFACE_THRESHOLDS as grid

    rng = np.random.default_rng(11)
    cases = []
    # distances exactly on grid thresholds (where "<" and ">" disagree), few distinct values
    for n in (60, 61, 203):
        issame = rng.random(n) < 0.5
        d = grid[rng.integers(80, 200, n)].astype(np.float32)
        d[issame] -= np.float32(0.3) * (rng.random(issame.sum()) < 0.7)
        cases.append((np.clip(d, 0, 4), issame))
    # separable classes: a whole range of thresholds ties at 100% training accuracy
    issame = np.arange(100) % 2 == 0
    cases.append((np.where(issame, 0.4, 1.6).astype(np.float32), issame))
    # one class only, and LFW-sized continuous scores
    cases.append((rng.random(40).astype(np.float32) * 4, np.ones(40, bool)))
    issame = np.arange(1200) % 2 == 0
    cos = np.where(issame, rng.normal(0.55, 0.15, 1200), rng.normal(0.05, 0.12, 1200)).astype(np.float32)
    cases.append((np.clip(2 - 2 * cos, 0, 4).astype(np.float32), issame))
    return cases


@pytest.mark.parametrize("case", range(6))
def test_kfold_accuracy_insightface_equals_their_loop_on_tie_cases(case):
    from exface.evaluation.verification import INSIGHTFACE_THRESHOLDS, kfold_accuracy_insightface

    dist, issame = _tie_cases()[case]
    from exface.evaluation.verification import kfold_accuracy_insightface_loop

    acc, thr = kfold_accuracy_insightface(dist, issame, 10)
    ref_acc, ref_thr = _insightface_calculate_roc_accuracy(INSIGHTFACE_THRESHOLDS, dist, issame, 10)
    np.testing.assert_array_equal(acc, ref_acc)
    np.testing.assert_array_equal(thr, ref_thr)
    loop_acc, loop_thr = kfold_accuracy_insightface_loop(dist, issame, 10)  # the benchmark's baseline
    np.testing.assert_array_equal(loop_acc, ref_acc)
    np.testing.assert_array_equal(loop_thr, ref_thr)


def test_score_mapping_differs_from_insightface_only_where_a_distance_is_on_the_grid():
    """Why the option exists: score = -distance with the ">" rule breaks exact ties the other way."""
    from exface.evaluation.verification import INSIGHTFACE_THRESHOLDS as grid, kfold_accuracy_insightface

    differs = 0
    for dist, issame in _tie_cases()[:3]:
        folds = contiguous_folds(len(dist), 10)
        acc_map, _ = kfold_accuracy(-dist.astype(np.float64), issame, folds, -grid[::-1].copy())
        acc_if, _ = kfold_accuracy_insightface(dist, issame, 10)
        differs += int(np.any(acc_map != acc_if))
    assert differs > 0


def test_insightface_distances_follow_their_normalization():
    from exface.evaluation.verification import insightface_distances

    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((50, 16)).astype(np.float32), rng.standard_normal((50, 16)).astype(np.float32)
    from sklearn.preprocessing import normalize

    expect = np.sum(np.square(np.subtract(normalize(a), normalize(b))), 1)
    got = insightface_distances(a, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, 2 - 2 * cosine_scores(a, b), atol=1e-5)


def test_cosine_scores_float32_chunks_keep_accuracy_and_auc():
    rng = np.random.default_rng(13)
    issame = np.arange(3000) % 2 == 0
    base = rng.standard_normal((3000, 128)).astype(np.float32)
    other = np.where(issame[:, None], base + 0.9 * rng.standard_normal((3000, 128)), rng.standard_normal((3000, 128)))
    other = other.astype(np.float32)
    s32 = cosine_scores(base, other, chunk=257)
    assert s32.dtype == np.float32
    a64, b64 = base.astype(np.float64), other.astype(np.float64)
    s64 = np.einsum("pd,pd->p", a64, b64) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    np.testing.assert_allclose(s32, s64, atol=2e-6)
    r32, r64 = evaluate_verification(s32, issame), evaluate_verification(s64, issame)
    assert r32.accuracy == r64.accuracy
    assert abs(r32.auc - r64.auc) < 1e-6
    np.testing.assert_array_equal(cosine_scores(torch.from_numpy(base), torch.from_numpy(other)), cosine_scores(base, other))


# --------------------------------------------------------------------------- flip and insightface's rule


def _tiny_bin_set(n_pairs: int = 40, seed: int = 0):
    """A synthetic aligned set (as a .bin loads): random 16x16 faces, pairs (2i, 2i + 1),
    matched pairs made of one face and a noisy copy of it."""
    from exface.evaluation.datasets import VerificationSet

    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (2 * n_pairs, 16, 16, 3)).astype(np.uint8)
    issame = np.arange(n_pairs) % 2 == 0
    for i in np.flatnonzero(issame):
        imgs[2 * i + 1] = np.clip(imgs[2 * i].astype(int) + rng.integers(-40, 41, (16, 16, 3)), 0, 255)
    pairs = np.arange(2 * n_pairs).reshape(-1, 2)
    return VerificationSet(name="tiny", pairs=pairs, issame=issame, images=imgs, aligned=True)


def _raw_embeddings(vs, emb, mirror: bool) -> np.ndarray:
    x = torch.from_numpy(vs.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if mirror:
        x = x.flip(-1)
    with torch.no_grad():
        return emb.embed_raw(emb.preprocess(x)).float().numpy()


def test_flip_sums_raw_embeddings_then_normalizes_as_insightface():
    """insightface's verification.py: embeddings_list[0] + embeddings_list[1] (raw backbone
    outputs of the image and its mirror), then sklearn normalize; not a sum of unit vectors."""
    from exface.alignment import ResizeAligner
    from exface.evaluation.benchmark import compute_embeddings, score_set
    from exface.testing.tiny import TinyEmbedder

    vs, emb = _tiny_bin_set(), TinyEmbedder().eval()
    raw, raw_m = _raw_embeddings(vs, emb, False), _raw_embeddings(vs, emb, True)
    want = raw + raw_m
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    e = compute_embeddings(vs, emb, ResizeAligner((16, 16)), batch_size=7, with_flip=True)
    np.testing.assert_allclose(e.combined(True), want, atol=2e-6)
    np.testing.assert_allclose(e.summed(True), raw + raw_m, rtol=1e-5, atol=1e-6)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(e.plain, unit(raw), atol=1e-6)
    old = unit(unit(raw) + unit(raw_m))  # the sum of unit embeddings this replaces differs
    assert np.abs(old - want).max() > 1e-3
    # The non-flip path is forward()'s output (to float rounding: the kernels may differ with the
    # batch split and the threads); the scores are cosines of `want`.
    x = torch.from_numpy(vs.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        direct = torch.cat([emb(x[i:i + 7]) for i in range(0, len(x), 7)]).numpy()
    np.testing.assert_allclose(e.combined(False), direct, rtol=0, atol=1e-6)
    r, _, scores = score_set(vs, emb, ResizeAligner((16, 16)), folds=5, flip=True)
    np.testing.assert_allclose(scores, np.sum(want[0::2] * want[1::2], axis=1), atol=1e-5)
    with pytest.raises(ValueError, match="raw norms"):
        type(e)(e.plain, e.flipped).combined(True)


def test_bin_sets_report_insightface_protocol_accuracy(tmp_path):
    """The .bin accuracy by insightface's rule equals kfold_accuracy_insightface on their
    distances (and their calculate_roc loop); exface's own accuracy stays beside it."""
    from exface.alignment import ResizeAligner
    from exface.evaluation.benchmark import format_table, papers_table, run_benchmark, score_set
    from exface.evaluation.datasets import write_insightface_bin
    from exface.evaluation.verification import INSIGHTFACE_THRESHOLDS, insightface_distances, kfold_accuracy_insightface
    from exface.testing.tiny import TinyEmbedder

    vs, emb = _tiny_bin_set(60, seed=2), TinyEmbedder().eval()
    for flip in (True, False):
        r, _, _ = score_set(vs, emb, ResizeAligner((16, 16)), folds=10, flip=flip)
        e = _raw_embeddings(vs, emb, False) + (_raw_embeddings(vs, emb, True) if flip else 0)
        dist = insightface_distances(e[0::2], e[1::2])
        accs, thr = kfold_accuracy_insightface(dist, vs.issame, 10)
        ins = r["insightface_protocol"]
        assert ins["accuracy"] == float(accs.mean()) and ins["fold_accuracies"] == [float(a) for a in accs]
        assert ins["fold_thresholds"] == [float(t) for t in thr] and ins["accuracy_std"] == float(accs.std())
        loop, _ = _insightface_calculate_roc_accuracy(INSIGHTFACE_THRESHOLDS, dist, vs.issame)
        assert ins["accuracy"] == float(loop.mean())
        assert "np.arange(0, 4, 0.01)" in ins["rule"] and "KFold(10, shuffle=False)" in ins["rule"]
        assert 0.0 <= r["accuracy"] <= 1.0  # exface's own figure is still there
    # Through run_benchmark: a .bin file named like a standard set; table, papers row, results.json.
    path = tmp_path / "agedb_30.bin"
    write_insightface_bin(path, list(vs.images), vs.issame.tolist(), quality=100)
    out = tmp_path / "bench"
    (r,) = run_benchmark([path], emb, ResizeAligner((16, 16)), folds=10, output_dir=out, roc=False)
    saved = json.loads((out / "results.json").read_text())["results"][0]
    assert saved["insightface_protocol"] == r["insightface_protocol"] and "accuracy" in saved
    table = format_table([r])
    assert "accuracy (insightface protocol) %" in table
    assert f"{100 * r['insightface_protocol']['accuracy']:.2f} ± " in table
    papers = papers_table([r], "TinyEmbedder")
    assert f"{100 * r['insightface_protocol']['accuracy']:.2f}" in papers.splitlines()[1]
    assert "insightface protocol" in (out / "report.md").read_text()
    # Sets without insightface's protocol (LFW pairs.txt has official folds) get no column.
    lfw = {k: v for k, v in r.items() if k != "insightface_protocol"}
    assert "insightface protocol" not in format_table([lfw])


def test_saved_embeddings_without_raw_norms_are_embedded_again_for_flip(tmp_path):
    from exface.alignment import ResizeAligner
    from exface.evaluation.benchmark import run_benchmark
    from exface.evaluation.datasets import write_insightface_bin
    from exface.testing.tiny import TinyEmbedder

    vs, emb = _tiny_bin_set(20, seed=4), TinyEmbedder().eval()
    path = tmp_path / "tiny.bin"
    write_insightface_bin(path, list(vs.images), vs.issame.tolist())
    out = tmp_path / "bench"
    kw = dict(folds=5, output_dir=out, roc=False, save_embeddings=True)
    (first,) = run_benchmark([path], emb, ResizeAligner((16, 16)), **kw)
    assert first["embedded"] and (out / "tiny.embeddings_flip_norm.npy").is_file()
    (again,) = run_benchmark([path], emb, ResizeAligner((16, 16)), **kw)
    assert not again["embedded"] and again["insightface_protocol"] == first["insightface_protocol"]
    assert again["accuracy"] == first["accuracy"]
    for name in ("tiny.embeddings_norm.npy", "tiny.embeddings_flip_norm.npy"):  # as an older exface left them
        (out / name).unlink()
    (plain,) = run_benchmark([path], emb, ResizeAligner((16, 16)), flip=False, **kw)
    assert not plain["embedded"]  # no flip: the unit embeddings are all it needs
    (third,) = run_benchmark([path], emb, ResizeAligner((16, 16)), **kw)
    assert third["embedded"] and "raw-embedding norms" in third["saved_embeddings"]
    assert third["insightface_protocol"] == first["insightface_protocol"]
