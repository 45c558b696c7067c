"""Speed of the verification protocol: exface vs insightface's algorithm and a sort + cumsum search.

LFW-sized synthetic pair scores (``--pairs`` 6000, 10 contiguous folds) from float32 unit
embeddings (``--dim`` 512), so distances and cosines carry float32 ties as real ones do.
Sides, alternated in one process, ``--repeats`` times (medians of process and wall time):

Protocol on insightface's grid (``np.arange(0, 4, 0.01)`` on squared L2 distances,
"same" iff distance < threshold, first best threshold):

- ``insightface loop``: their ``calculate_roc`` search as written (fold x threshold loop,
  :func:`kfold_accuracy_insightface_loop`).
- ``sort + cumsum``: per fold, sort the training distances once and read every threshold's
  counts with ``searchsorted`` on cumulative sums (a competent vectorized baseline).
- ``exface insightface option``: :func:`kfold_accuracy_insightface` (one ``searchsorted``
  + per-fold ``bincount`` for all folds).
- ``exface exact protocol``: :func:`kfold_accuracy` over every distinct decision (the
  default; a different grid, so different numbers, timed for context).

Scores (``--score-pairs`` 60000 pairs): :func:`cosine_scores` (float32 chunks) vs the
previous float64 whole-array version and a float32 whole-array ``einsum``.

All insightface-grid sides must return identical accuracies and thresholds (asserted).

Run: ``python benchmarks/verification_protocol.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import alternate, machine_line, table  # noqa: E402

from exface.evaluation.verification import (  # noqa: E402
    INSIGHTFACE_THRESHOLDS,
    contiguous_folds,
    cosine_scores,
    evaluate_verification,
    insightface_distances,
    kfold_accuracy,
    kfold_accuracy_insightface,
    kfold_accuracy_insightface_loop,
)


def sort_cumsum_search(dist: np.ndarray, issame: np.ndarray, num_folds: int, thr: np.ndarray):
    folds = contiguous_folds(len(dist), num_folds)
    accs, chosen = np.zeros(num_folds), np.zeros(num_folds)
    d64 = dist.astype(np.float64)
    for f in range(num_folds):
        tr = folds != f
        order = np.argsort(d64[tr], kind="stable")
        d_sorted, same_sorted = d64[tr][order], issame[tr][order]
        cum_same = np.concatenate([[0], np.cumsum(same_sorted)])
        below = np.searchsorted(d_sorted, thr, side="left")  # #{dist < thr}
        tp = cum_same[below]
        tn = (len(d_sorted) - below) - (cum_same[-1] - tp)
        best = int(np.argmax(tp + tn))
        chosen[f] = thr[best]
        te = ~tr
        accs[f] = np.count_nonzero((d64[te] < thr[best]) == issame[te]) / np.count_nonzero(te)
    return accs, chosen


def cosine_float64_whole(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.einsum("pd,pd->p", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def cosine_float32_whole(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("pd,pd->p", a, b) / np.sqrt(np.einsum("pd,pd->p", a, a) * np.einsum("pd,pd->p", b, b))


def pairs(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    issame = np.arange(n) % 2 == 0
    a = rng.standard_normal((n, dim)).astype(np.float32)
    noise = rng.standard_normal((n, dim)).astype(np.float32)
    b = np.where(issame[:, None], a + 6.0 * noise, noise).astype(np.float32)  # ~97% accuracy
    return a, b, issame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--score-pairs", type=int, default=60000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):
        run(args)


def run(args) -> None:
    a, b, issame = pairs(args.pairs, args.dim, args.seed)
    dist = insightface_distances(a, b)
    cos = cosine_scores(a, b)
    grid = INSIGHTFACE_THRESHOLDS
    k = args.folds
    folds = contiguous_folds(args.pairs, k)
    print(f"{args.pairs} pairs, {k} folds, {len(grid)} grid thresholds; {machine_line(args.threads)}")
    t = alternate({
        "insightface loop (as written)": lambda: kfold_accuracy_insightface_loop(dist, issame, k),
        "sort + cumsum search": lambda: sort_cumsum_search(dist, issame, k, grid),
        "exface insightface option": lambda: kfold_accuracy_insightface(dist, issame, k),
        "exface exact protocol (all decisions)": lambda: kfold_accuracy(cos, issame, folds),
    }, repeats=args.repeats)
    ref = t["insightface loop (as written)"].result
    for name in ("sort + cumsum search", "exface insightface option"):
        np.testing.assert_array_equal(t[name].result[0], ref[0])
        np.testing.assert_array_equal(t[name].result[1], ref[1])
    print(f"\nprotocol, medians over {args.repeats} alternated repetitions; {machine_line(args.threads)}")
    table(t, bound="exface insightface option")
    print(f"  insightface-grid accuracy {100 * ref[0].mean():.2f}% (identical on all three); "
          f"exact protocol {100 * t['exface exact protocol (all decisions)'].result[0].mean():.2f}%")

    sa, sb, s_same = pairs(args.score_pairs, args.dim, args.seed + 1)
    scores = cosine_scores(sa, sb)
    t2 = alternate({
        "float64 whole arrays (previous)": lambda: cosine_float64_whole(sa, sb),
        "float32 whole-array einsum": lambda: cosine_float32_whole(sa, sb),
        "exface cosine_scores (float32 chunks)": lambda: cosine_scores(sa, sb),
        "protocol on those scores (evaluate_verification)": lambda: evaluate_verification(scores, s_same),
    }, repeats=args.repeats)
    print(f"\nscores for {args.score_pairs} pairs x {args.dim}-D, medians; {machine_line(args.threads)}")
    table(t2, bound="exface cosine_scores (float32 chunks)")
    r64 = evaluate_verification(t2["float64 whole arrays (previous)"].result, s_same)
    r32 = evaluate_verification(t2["exface cosine_scores (float32 chunks)"].result, s_same)
    print(f"  accuracy float64 {100 * r64.accuracy:.4f}% vs float32 chunks {100 * r32.accuracy:.4f}%; "
          f"AUC {r64.auc:.8f} vs {r32.auc:.8f}; max |cosine difference| "
          f"{np.abs(t2['float64 whole arrays (previous)'].result - t2['exface cosine_scores (float32 chunks)'].result).max():.2e}")


if __name__ == "__main__":
    main()
