"""Speed of the k-fold verification protocol: vectorized ``kfold_accuracy`` vs the loop.

6000 pairs (LFW's size), 10 contiguous folds, two threshold searches:

- ``insightface grid``: insightface's ``np.arange(0, 4, 0.01)`` on squared L2 distances of
  unit embeddings (400 thresholds; a pair is "same" when distance < threshold, i.e.
  ``-distance > -threshold``).
- ``all decisions``: every distinct decision (the default; ~5400 candidates per fold).

The two implementations must return identical accuracies and thresholds (asserted); the
script prints both timings and the speed ratio. Target: vectorized >= 10x faster.

Run: ``.venv/bin/python benchmarks/verification_protocol.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from exface.evaluation.verification import contiguous_folds, kfold_accuracy, kfold_accuracy_loop


def _time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    issame = np.arange(args.pairs) % 2 == 0
    cosine = np.where(issame, rng.normal(0.55, 0.15, args.pairs), rng.normal(0.05, 0.12, args.pairs))
    cosine = np.clip(cosine, -1, 1).astype(np.float32).astype(np.float64)  # float32 embeddings' ties
    distance = 2.0 - 2.0 * cosine  # squared L2 of unit vectors, in [0, 4]
    folds = contiguous_folds(args.pairs, args.folds)
    grid = np.arange(0, 4, 0.01)
    searches = {
        "insightface grid (400 thr)": (-distance, -grid[::-1].copy()),
        "all decisions (default)": (cosine, None),
    }
    print(f"{args.pairs} pairs, {args.folds} folds")
    worst = float("inf")
    for name, (scores, thr) in searches.items():
        t_vec, (acc_v, thr_v) = _time(lambda: kfold_accuracy(scores, issame, folds, thr), 5)
        t_loop, (acc_l, thr_l) = _time(lambda: kfold_accuracy_loop(scores, issame, folds, thr), 1)
        np.testing.assert_array_equal(acc_v, acc_l)
        np.testing.assert_array_equal(thr_v, thr_l)
        ratio = t_loop / t_vec
        worst = min(worst, ratio)
        print(f"  {name:28s} accuracy {100 * acc_v.mean():.2f}% (identical)  "
              f"vectorized {1e3 * t_vec:8.2f} ms  loop {1e3 * t_loop:9.1f} ms  speed-up {ratio:7.1f}x")
    print(f"smallest speed-up {worst:.1f}x ({'meets' if worst >= 10 else 'MISSES'} the 10x target)")
    return 0 if worst >= 10 else 2


if __name__ == "__main__":
    raise SystemExit(main())
