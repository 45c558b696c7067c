"""The face-verification protocol (LFW's k-fold "unrestricted" evaluation) on pair scores.

Given one similarity score per pair (cosine of identity embeddings; higher = more alike)
and whether the pair is the same person, the protocol splits the pairs into k folds; for
each fold it picks the threshold that maximizes accuracy on the other k-1 folds and scores
the held-out fold with it. Reported: mean and (population) std of the k held-out
accuracies, the per-fold thresholds, and threshold-free figures on all pairs: ROC AUC, EER
and TAR at fixed FARs.

Two implementations of the fold/threshold search give identical numbers:

- :func:`kfold_accuracy` is vectorized: every score is binned into the threshold grid once
  (``searchsorted``), per-fold counts come from one ``bincount`` and a reversed cumulative
  sum, so all thresholds of all folds are scored at once in O(P log T + k T).
- :func:`kfold_accuracy_loop` is the plain per-fold, per-threshold loop that insightface's
  ``calculate_roc`` uses; it is kept as the reference and the benchmark baseline.

A pair is predicted "same" when ``score > threshold``; ties in accuracy resolve to the
lowest threshold (the first maximum), in both implementations. With no explicit grid the
candidates of a fold are the midpoints between the *training* folds' distinct scores (see
:func:`threshold_candidates`), so the held-out fold's scores never shape its threshold, and
a perfectly separated training set gets the max-margin threshold half-way between its
classes (a grid built from all scores would put it just above the highest training
negative, where a held-out negative can fall on the wrong side). An explicit grid (e.g.
insightface's ``np.arange(0, 4, 0.01)`` on distances) is searched as given.

**insightface parity.** Mapping insightface onto the score convention above (score =
-distance) reproduces its numbers except when a distance equals a grid threshold
exactly, where ``>`` and insightface's ``distance < threshold`` disagree. For results
that equal insightface's ``calculate_roc`` in every case, :func:`insightface_distances`
computes their distances from the embeddings (sklearn-style float32 L2 normalization,
float32 squared differences) and :func:`kfold_accuracy_insightface` searches their grid
(:data:`INSIGHTFACE_THRESHOLDS`) with their rule: "same" iff ``distance < threshold``,
accuracy ``(TP + TN) / n`` per training set, ties to the first (smallest) threshold by
``np.argmax``, contiguous ``KFold(shuffle=False)`` folds.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "VerificationResult",
    "contiguous_folds",
    "stratified_folds",
    "threshold_candidates",
    "kfold_accuracy",
    "kfold_accuracy_loop",
    "INSIGHTFACE_THRESHOLDS",
    "insightface_distances",
    "kfold_accuracy_insightface",
    "kfold_accuracy_insightface_loop",
    "roc_curve",
    "roc_auc",
    "equal_error_rate",
    "tar_at_far",
    "cosine_scores",
    "evaluate_verification",
]


@dataclass
class VerificationResult:
    """What :func:`evaluate_verification` reports (all rates are fractions in [0, 1])."""

    accuracy: float  #: mean held-out accuracy over folds
    accuracy_std: float  #: population std of the held-out accuracies (as insightface reports)
    fold_accuracies: list[float]
    fold_thresholds: list[float]  #: threshold chosen on the other folds, per held-out fold
    threshold: float  #: mean of ``fold_thresholds``
    auc: float  #: ROC AUC over all pairs (NaN when a class is missing)
    eer: float  #: equal error rate over all pairs (NaN when a class is missing)
    tar_at_far: dict[str, float] = field(default_factory=dict)  #: "1e-03" -> TAR, over all pairs
    num_pairs: int = 0
    num_same: int = 0
    num_folds: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- folds & grid


def contiguous_folds(num_pairs: int, num_folds: int = 10) -> np.ndarray:
    """Fold id per pair for consecutive, near-equal chunks (sklearn ``KFold(shuffle=False)``).

    This is insightface's split; on the official LFW ``pairs.txt`` order (each 600-pair
    block is one official fold) it reproduces the official 10 folds.
    """
    if num_folds < 2 or num_folds > num_pairs:
        raise ValueError(f"need 2 <= num_folds <= num_pairs, got num_folds={num_folds} for {num_pairs} pairs")
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[: num_pairs % num_folds] += 1
    return np.repeat(np.arange(num_folds), sizes)


def stratified_folds(issame: np.ndarray, num_folds: int = 10) -> np.ndarray:
    """Fold id per pair such that each fold gets a consecutive, near-equal share of each class.

    Use this when the pairs are ordered by class (LFW lists a fold's matched pairs, then its
    mismatched ones): contiguous chunks of one official fold would hold a single class each.
    Deterministic (no shuffling), so runs are comparable.
    """
    issame = np.asarray(issame, dtype=bool)
    folds = np.empty(len(issame), dtype=np.int64)
    for cls in (True, False):
        idx = np.flatnonzero(issame == cls)
        if len(idx) == 0:
            continue
        n = min(num_folds, len(idx))
        folds[idx] = contiguous_folds(len(idx), n) if n >= 2 else 0
    return folds


def threshold_candidates(scores: np.ndarray) -> np.ndarray:
    """Every distinct decision on these scores: midpoints between sorted distinct scores,
    plus one threshold below all and one above all. Searching these finds the exact optimum."""
    u = np.unique(np.asarray(scores, dtype=np.float64))
    if len(u) == 0:
        raise ValueError("no scores")
    mids = (u[1:] + u[:-1]) / 2
    return np.concatenate([[u[0] - 1.0], mids, [u[-1] + 1.0]])


def _check(scores: np.ndarray, issame: np.ndarray, folds: np.ndarray | None = None):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    issame = np.asarray(issame).ravel()
    if issame.dtype != bool:
        if not np.isin(issame, (0, 1)).all():
            raise ValueError("issame must be booleans (or 0/1)")
        issame = issame.astype(bool)
    if len(scores) != len(issame):
        raise ValueError(f"{len(scores)} scores but {len(issame)} issame labels; give one of each per pair")
    if len(scores) == 0:
        raise ValueError("no pairs to evaluate")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf; check the embeddings (a zero embedding has no cosine)")
    if folds is not None:
        folds = np.asarray(folds).ravel()
        if len(folds) != len(scores):
            raise ValueError(f"{len(folds)} fold ids for {len(scores)} pairs")
        if not np.issubdtype(folds.dtype, np.integer) or folds.min() < 0:
            raise ValueError("fold ids must be non-negative integers")
    return scores, issame, folds


# --------------------------------------------------------------------------- k-fold accuracy


def kfold_accuracy(
    scores: np.ndarray, issame: np.ndarray, folds: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out accuracy and chosen threshold per fold, all thresholds of all folds at once.

    ``folds`` gives each pair's fold id (0..k-1); ``thresholds`` the candidate grid (default:
    each fold's :func:`threshold_candidates` of its training scores). Returns
    ``(accuracies [k], thresholds [k])``.
    """
    scores, issame, folds = _check(scores, issame, folds)
    exact = thresholds is None
    thr = threshold_candidates(scores) if exact else np.asarray(thresholds, dtype=np.float64)
    if thr.ndim != 1 or len(thr) == 0 or np.any(np.diff(thr) < 0):
        raise ValueError("thresholds must be a non-empty increasing 1-D grid")
    k = int(folds.max()) + 1
    nt = len(thr)
    # pos[i] = number of thresholds strictly below score i  =>  score > thr[j]  iff  j < pos[i]
    pos = np.searchsorted(thr, scores, side="left")
    cls = issame.astype(np.int64)
    # hist[f, c, p]: pairs of fold f, class c, with pos == p
    hist = np.bincount((folds * 2 + cls) * (nt + 1) + pos, minlength=k * 2 * (nt + 1)).reshape(k, 2, nt + 1)
    # above[f, c, j] = #{score > thr[j]} = sum_{p > j} hist[f, c, p]
    above = np.cumsum(hist[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]
    n_fc = hist.sum(axis=2)  # [k, 2]
    tp = above[:, 1, :]  # same pairs predicted same
    tn = n_fc[:, 0:1] - above[:, 0, :]  # different pairs predicted different
    correct = tp + tn  # [k, T] per fold
    n_f = n_fc.sum(axis=1)
    if np.any(n_f == 0):
        raise ValueError(f"fold ids must be 0..{k - 1} with every fold non-empty")
    if k < 2:
        raise ValueError("a fold holds every pair; use at least two non-empty folds")
    train_correct = correct.sum(axis=0, keepdims=True) - correct
    best = np.argmax(train_correct, axis=1)  # first maximum = lowest threshold (one divisor per fold)
    if not exact:
        return correct[np.arange(k), best] / n_f, thr[best]
    # The all-scores grid holds every training decision of every fold; the first maximum lies
    # between two consecutive *training* scores, and the training-only candidate for the same
    # decisions is their midpoint (or 1 beyond the end): what searching the training-only
    # candidates would pick, as the loop does.
    t = thr[best][:, None]  # [k, 1]; never equal to a score
    train = folds[None, :] != np.arange(k)[:, None]  # [k, P]
    below = np.where(train & (scores[None, :] < t), scores[None, :], -np.inf).max(axis=1)
    over = np.where(train & (scores[None, :] > t), scores[None, :], np.inf).min(axis=1)
    chosen = np.where(
        np.isinf(below), over - 1.0, np.where(np.isinf(over), below + 1.0, (below + over) / 2)
    )
    hits = (scores > chosen[folds]) == issame
    return np.bincount(folds, weights=hits, minlength=k) / n_f, chosen


def kfold_accuracy_loop(
    scores: np.ndarray, issame: np.ndarray, folds: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation of :func:`kfold_accuracy`: for each fold, for each threshold,
    count correct decisions on the training folds (insightface's ``calculate_roc`` loop)."""
    scores, issame, folds = _check(scores, issame, folds)
    k = int(folds.max()) + 1
    accs, chosen = np.zeros(k), np.zeros(k)
    for f in range(k):
        train, test = folds != f, folds == f
        if not train.any() or not test.any():
            raise ValueError(f"fold {f} is empty or holds every pair; use at least two non-empty folds")
        s_tr, y_tr = scores[train], issame[train]
        thr = threshold_candidates(s_tr) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        train_acc = np.zeros(len(thr))
        for j, t in enumerate(thr):
            pred = s_tr > t
            train_acc[j] = np.count_nonzero(pred == y_tr) / len(y_tr)
        best = int(np.argmax(train_acc))
        chosen[f] = thr[best]
        accs[f] = np.count_nonzero((scores[test] > thr[best]) == issame[test]) / np.count_nonzero(test)
    return accs, chosen


# --------------------------------------------------------------------------- insightface

#: insightface's threshold grid on squared L2 distances of unit embeddings (``calculate_roc``).
INSIGHTFACE_THRESHOLDS = np.arange(0, 4, 0.01)


def insightface_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared L2 distances of L2-normalized embedding pairs, computed as insightface does.

    insightface normalizes the embeddings with ``sklearn.preprocessing.normalize`` (each row
    divided by its norm, in the input's float32) and takes ``np.sum(np.square(e1 - e2), 1)``.
    The same operations in the same dtype give the same float32 distances.
    """
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a)
    b = np.asarray(b.detach().cpu() if hasattr(b, "detach") else b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two [P, D] arrays of one shape, got {a.shape} and {b.shape}")
    out = []
    for e in (a, b):
        e = e.astype(np.float32, copy=True) if e.dtype != np.float64 else e.copy()
        norms = np.sqrt(np.einsum("ij,ij->i", e, e))
        if np.any(norms == 0):
            raise ValueError("a zero embedding has no direction; insightface would divide by zero")
        e /= norms[:, None]
        out.append(e)
    return np.sum(np.square(np.subtract(out[0], out[1])), 1)


def kfold_accuracy_insightface(
    distances: np.ndarray, issame: np.ndarray, num_folds: int = 10, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """insightface's ``calculate_roc`` accuracy search, vectorized, with their exact rule.

    ``distances`` are squared L2 distances (:func:`insightface_distances`), folds are
    contiguous (``KFold(n_splits, shuffle=False)``), a pair is "same" iff
    ``distance < threshold``, and each fold takes the first threshold of maximal training
    accuracy (``np.argmax``). Returns ``(accuracies [k], thresholds [k])``, equal to their
    loop's. One ``searchsorted`` of the distances into the grid and per-fold cumulative
    counts replace the fold x threshold loop.
    """
    dist = np.asarray(distances).ravel()
    _, issame, _ = _check(dist.astype(np.float64), issame)
    thr = INSIGHTFACE_THRESHOLDS if thresholds is None else np.asarray(thresholds)
    if thr.ndim != 1 or len(thr) == 0:
        raise ValueError("thresholds must be a non-empty 1-D grid")
    folds = contiguous_folds(len(dist), num_folds)
    k, nt = num_folds, len(thr)
    # "same" at threshold j iff dist < thr[j]; numpy compares float32 with the float64 grid
    # in float64, so do the same here. For an unsorted grid, sort it and map back.
    order = np.argsort(thr, kind="stable")
    thr_sorted = thr[order].astype(np.float64)
    # pos = #thresholds <= dist: dist < thr_sorted[j] iff j >= pos
    pos = np.searchsorted(thr_sorted, dist.astype(np.float64), side="right")
    cls = issame.astype(np.int64)
    hist = np.bincount((folds * 2 + cls) * (nt + 1) + pos, minlength=k * 2 * (nt + 1)).reshape(k, 2, nt + 1)
    below = np.cumsum(hist, axis=2)[:, :, :nt]  # below[f, c, j] = #{pos <= j} = #{dist < thr_sorted[j]}
    n_fc = hist.sum(axis=2)
    tp = below[:, 1, :]  # same pairs predicted same
    tn = n_fc[:, 0:1] - below[:, 0, :]  # different pairs predicted different
    correct_sorted = tp + tn
    correct = np.empty_like(correct_sorted)
    correct[:, order] = correct_sorted  # back to the grid's own order (argmax ties: first in it)
    train_correct = correct.sum(axis=0, keepdims=True) - correct
    n_f = n_fc.sum(axis=1)
    # insightface takes argmax of counts / n_train; n_train is one number per fold
    best = np.argmax(train_correct, axis=1)
    return correct[np.arange(k), best] / n_f, thr[best].astype(np.float64)


def _insightface_accuracy(threshold: float, dist: np.ndarray, same: np.ndarray) -> float:
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, same))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(same)))
    return float(tp + tn) / dist.size


def kfold_accuracy_insightface_loop(
    distances: np.ndarray, issame: np.ndarray, num_folds: int = 10, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """insightface's ``calculate_roc`` accuracy search as they wrote it: for each fold, for
    each threshold, their ``calculate_accuracy`` (``np.less(dist, threshold)``, TP and TN by
    ``np.sum(np.logical_and(...))``, ``(tp + tn) / n``) on the training pairs; ``np.argmax``.
    (Their function also computes TPR/FPR of every threshold on the test fold for the ROC;
    that part is left out.) The reference and benchmark baseline of
    :func:`kfold_accuracy_insightface`."""
    dist = np.asarray(distances).ravel()
    _, issame, _ = _check(dist.astype(np.float64), issame)
    thr = INSIGHTFACE_THRESHOLDS if thresholds is None else np.asarray(thresholds)
    folds = contiguous_folds(len(dist), num_folds)
    accs, chosen = np.zeros(num_folds), np.zeros(num_folds)
    for f in range(num_folds):
        train, test = folds != f, folds == f
        acc_train = np.zeros(len(thr))
        for j, t in enumerate(thr):
            acc_train[j] = _insightface_accuracy(t, dist[train], issame[train])
        best = int(np.argmax(acc_train))
        chosen[f] = thr[best]
        accs[f] = _insightface_accuracy(thr[best], dist[test], issame[test])
    return accs, chosen


# --------------------------------------------------------------------------- threshold-free


def roc_curve(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` over all distinct thresholds, from (0, 0) to (1, 1).

    Point i predicts "same" for ``score >= thresholds[i]`` (thresholds[0] = +inf).
    """
    scores, issame, _ = _check(scores, issame)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], issame[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(len(last) + 1, np.nan)
        fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(len(last) + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(scores: np.ndarray, issame: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half): P(score_same > score_diff)."""
    fpr, tpr, _ = roc_curve(scores, issame)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def equal_error_rate(scores: np.ndarray, issame: np.ndarray) -> float:
    """The rate where false accepts equal false rejects (FPR = 1 - TPR), linearly interpolated."""
    fpr, tpr, _ = roc_curve(scores, issame)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    fnr = 1.0 - tpr
    d = fpr - fnr  # increasing from -1 to +1
    i = int(np.searchsorted(d, 0.0, side="left"))
    if i == 0:
        return float(fpr[0])
    d0, d1 = d[i - 1], d[i]
    w = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def tar_at_far(scores: np.ndarray, issame: np.ndarray, fars: tuple[float, ...] = (1e-3, 1e-2, 1e-1)) -> dict[str, float]:
    """Highest true-accept rate whose false-accept rate is <= each target FAR.

    With n different-person pairs a FAR below 1/n cannot be measured beyond "zero false
    accepts", so such targets report the TAR at zero false accepts.
    """
    fpr, tpr, _ = roc_curve(scores, issame)
    out = {}
    for far in fars:
        if np.isnan(fpr).any() or np.isnan(tpr).any():
            out[f"{far:.0e}"] = math.nan
            continue
        ok = fpr <= far + 1e-12
        out[f"{far:.0e}"] = float(tpr[ok].max())
    return out


# --------------------------------------------------------------------------- all together


def cosine_scores(a: np.ndarray, b: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Row-wise cosine similarity ``float32 [P]`` of two ``[P, D]`` embedding arrays (numpy or torch).

    Float32 in chunks of ``chunk`` pairs: the embeddings are float32 already, float64
    over whole arrays costs two full-size copies and several times the time, and chunks
    bound the float32 copies of float64 or torch inputs. Every cosine is within a few
    float32 ulps of the float64 value.
    """
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    b = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two [P, D] arrays of one shape, got {a.shape} and {b.shape}")
    out = np.empty(a.shape[0], dtype=np.float32)
    for s in range(0, a.shape[0], chunk):
        ca = np.asarray(a[s : s + chunk], dtype=np.float32)
        cb = np.asarray(b[s : s + chunk], dtype=np.float32)
        na2 = np.einsum("pd,pd->p", ca, ca)
        nb2 = np.einsum("pd,pd->p", cb, cb)
        if np.any(na2 == 0) or np.any(nb2 == 0) or not (np.isfinite(na2).all() and np.isfinite(nb2).all()):
            raise ValueError("a zero embedding (or a non-finite one) has no cosine similarity")
        np.divide(np.einsum("pd,pd->p", ca, cb), np.sqrt(na2) * np.sqrt(nb2), out=out[s : s + chunk])
    return out


def evaluate_verification(
    scores: np.ndarray,
    issame: np.ndarray,
    folds: np.ndarray | int = 10,
    thresholds: np.ndarray | None = None,
    fars: tuple[float, ...] = (1e-3, 1e-2, 1e-1),
) -> VerificationResult:
    """Run the k-fold protocol and the threshold-free metrics on pair similarity scores.

    ``folds`` is either a number of folds (pairs are split into contiguous chunks, as
    insightface does) or an explicit fold id per pair (e.g. LFW's official folds, or
    :func:`stratified_folds`). ``thresholds`` defaults to every distinct decision.
    """
    scores, issame, _ = _check(scores, issame)
    fold_ids = contiguous_folds(len(scores), int(folds)) if np.isscalar(folds) else np.asarray(folds)
    accs, thr = kfold_accuracy(scores, issame, fold_ids, thresholds)
    n_same = int(issame.sum())
    if n_same in (0, len(issame)):
        warnings.warn(
            "all pairs belong to one class: accuracy is trivial and AUC/EER/TAR@FAR are undefined (NaN)",
            stacklevel=2,
        )
    return VerificationResult(
        accuracy=float(accs.mean()),
        accuracy_std=float(accs.std()),
        fold_accuracies=[float(a) for a in accs],
        fold_thresholds=[float(t) for t in thr],
        threshold=float(thr.mean()),
        auc=roc_auc(scores, issame),
        eer=equal_error_rate(scores, issame),
        tar_at_far=tar_at_far(scores, issame, fars),
        num_pairs=len(scores),
        num_same=n_same,
        num_folds=len(accs),
    )
