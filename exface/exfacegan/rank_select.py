"""Exact per-row order statistics of a streamed similarity matrix, fused with its labelling.

:func:`~exface.exfacegan.labeling.label_identities` needs, for every reference row of the
``[R, N]`` cosine-similarity matrix, one or two exact order statistics (the median, or the
k-th largest) and then a label per entry. Selecting them over whole rows (``np.partition``)
costs more than the GEMM that makes the rows. The kernels here make the selection nearly
free, in one pass over each GEMM tile while it is still in cache:

1. **Bracket from a sample.** The similarities of each row to ``m`` seeded random bank
   columns (one small GEMM, ``m / N`` of the full one) give, per row, two sample order
   statistics ``lo < hi`` whose ranks are ``z`` binomial standard deviations either side
   of the wanted rank, so the wanted order statistics fall inside ``(lo, hi]`` with high
   probability (``z = 3``: ~99.7% of rows).
2. **One fused pass per tile** (:func:`scan_tile`): for every entry write the provisional
   label ``x > lo``, count the entries ``<= lo``, and store the entries inside
   ``(lo, hi]`` (value and column) in a per-row band buffer (~``z N / sqrt(m)`` of them).
3. **Select inside the band** (:func:`select_band`): with ``c`` entries ``<= lo``, rank
   ``q`` of the row is rank ``q - c`` of the band. A row whose ranks are not inside its
   band (the bracket missed, ties at ``lo``, or a full buffer) is flagged, and the caller
   redoes it exactly with ``lo = -inf, hi = +inf`` (the whole row is then the band).
4. **Fix the band's labels** (:func:`fix_band`): entries ``<= lo`` are below the cut and
   entries ``> hi`` above it, so only band entries can change; ties at a top-k cut go to
   the lowest bank indices.

Results are exact (the same order statistics as a full sort); the sample only decides how
much work the band costs. Entries to leave out of a row (the reference's own latent) are
NaN in the tile: NaN compares false, so it is neither counted nor stored.

The kernels are numba-compiled (``nogil``, so row blocks run on worker threads) and cached
on disk after the first call.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["bracket", "scan_tile", "select_band", "fix_band"]


@numba.njit(nogil=True, cache=True)
def _two_order_stats(row: np.ndarray, a: int, b: int) -> tuple[float, float]:
    """Values of ascending ranks ``a <= b`` of ``row`` (``a`` and ``b`` in range)."""
    p = np.partition(row, a)
    va = p[a]
    if b == a:
        return va, va
    if b == a + 1:
        return va, p[a + 1 :].min()
    q = np.partition(p[a + 1 :], b - a - 1)
    return va, q[b - a - 1]


@numba.njit(nogil=True, cache=True)
def _bracket_rows(sample: np.ndarray, a: int, b: int, lo: np.ndarray, hi: np.ndarray) -> None:
    m = sample.shape[1]
    for i in range(sample.shape[0]):
        va, vb = _two_order_stats(sample[i].copy(), max(a, 0), min(b, m - 1))
        lo[i] = va if a >= 0 else -np.inf
        hi[i] = vb if b < m else np.inf


def bracket(sample: np.ndarray, rank_lo: int, rank_hi: int, n: int, z: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ``(lo, hi)`` bracketing ranks ``rank_lo..rank_hi`` of rows of length ``n``.

    ``sample`` is ``float32 [rows, m]``: each row's values at ``m`` random columns. The
    sample rank of a row's rank-``q`` value is about Binomial(m, q / n); the bracket
    takes ``z`` standard deviations (plus one rank) either side. ``lo = -inf`` /
    ``hi = +inf`` where that runs off the sample.
    """
    m = sample.shape[1]
    p_lo, p_hi = rank_lo / n, (rank_hi + 1) / n
    a = math.floor(m * p_lo - z * math.sqrt(m * p_lo * (1 - p_lo))) - 1
    b = math.ceil(m * p_hi + z * math.sqrt(m * p_hi * (1 - p_hi))) + 1
    lo = np.empty(sample.shape[0], np.float32)
    hi = np.empty(sample.shape[0], np.float32)
    if a < 0 and b >= m:
        lo.fill(-np.inf)
        hi.fill(np.inf)
    else:
        _bracket_rows(sample, a, b, lo, hi)
    return lo, hi


@numba.njit(nogil=True, cache=True)
def scan_tile(tile, c0, lo, hi, out, n_le, band_v, band_i, band_n) -> None:
    """One fused pass over a GEMM tile ``float32 [rows, cols]`` holding columns ``c0..``.

    Writes ``out[i, c0 + j] = tile[i, j] > lo[i]`` (int8), adds the count of entries
    ``<= lo[i]`` to ``n_le[i]`` and appends the entries in ``(lo[i], hi[i]]`` to row
    ``i``'s band buffer (``band_v`` values, ``band_i`` columns, ``band_n`` counts; counts
    keep growing past the buffer's capacity so that overflow is detectable).
    """
    rows, cols = tile.shape
    cap = band_v.shape[1]
    for i in range(rows):
        lo_i = lo[i]
        hi_i = hi[i]
        cnt = 0
        for j in range(cols):
            x = tile[i, j]
            out[i, c0 + j] = 1 if x > lo_i else 0
            cnt += 1 if x <= lo_i else 0
        n_le[i] += cnt
        nb = band_n[i]
        for j in range(cols):
            x = tile[i, j]
            if x > lo_i and x <= hi_i:
                if nb < cap:
                    band_v[i, nb] = x
                    band_i[i, nb] = c0 + j
                nb += 1
        band_n[i] = nb


@numba.njit(nogil=True, cache=True)
def select_band(band_v, band_n, n_le, rank_lo, rank_hi, lower, upper, ok) -> None:
    """Order statistics of ranks ``rank_lo[i] <= rank_hi[i]`` of each row from its band.

    Sets ``lower[i]``, ``upper[i]`` and ``ok[i] = True`` when both ranks lie inside the
    band (``n_le[i] <= rank_lo[i]`` and ``rank_hi[i] < n_le[i] + band_n[i]``, buffer not
    overflowed); otherwise ``ok[i] = False`` and the row must be redone.
    """
    cap = band_v.shape[1]
    for i in range(band_n.shape[0]):
        nb = band_n[i]
        a = rank_lo[i] - n_le[i]
        b = rank_hi[i] - n_le[i]
        if nb > cap or a < 0 or b >= nb:
            ok[i] = False
            continue
        va, vb = _two_order_stats(band_v[i, :nb].copy(), a, b)
        lower[i] = va
        upper[i] = vb
        ok[i] = True


@numba.njit(nogil=True, cache=True)
def fix_band(out, band_v, band_i, band_n, cut, k, n_above) -> None:
    """Final labels of band entries: ``x > cut[i]``; with ``k[i] >= 0`` (top-k) also the
    first ``k[i] - #(x > cut)`` entries equal to the cut, in column order, so that exactly
    ``k[i]`` entries are 1. ``n_above[i]`` counts the row's entries above its band."""
    for i in range(band_n.shape[0]):
        nb = band_n[i]
        c = cut[i]
        need = 0
        if k[i] >= 0:
            gt = n_above[i]
            for t in range(nb):
                if band_v[i, t] > c:
                    gt += 1
            need = k[i] - gt
        for t in range(nb):
            x = band_v[i, t]
            j = band_i[i, t]
            if x > c:
                out[i, j] = 1
            elif x == c and need > 0:
                out[i, j] = 1
                need -= 1
            else:
                out[i, j] = 0
