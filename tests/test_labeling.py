"""ExFaceGAN identity labelling: exactness against the numpy loop, leave-one-out, balance, rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exface.exfacegan.labeling import label_identities, numpy_median_labels, similarities


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    a = rng.standard_normal((n, d)).astype(np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.mark.parametrize("n_bank", [100, 101, 257])
def test_median_labels_equal_numpy_loop(n_bank):
    rng = np.random.default_rng(n_bank)
    bank, refs = _unit(rng, n_bank, 16), _unit(rng, 23, 16)
    fast = label_identities(bank, refs, chunk_size=5, use_gpu=False)
    assert fast.dtype == torch.int8 and fast.shape == (23, n_bank)
    np.testing.assert_array_equal(fast.numpy(), numpy_median_labels(bank, refs))
    # by construction half (floor) of every row is above the median
    assert (fast.numpy().sum(1) == n_bank // 2).all()


def test_median_is_numpy_median_for_even_rows_with_ties_at_the_middle():
    # row values 0,1,2,3 (+ noise-free): numpy median is 1.5, so exactly 2 and 3 are above
    bank = np.eye(4, dtype=np.float32)
    ref = np.array([[0.0, 1.0, 2.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(label_identities(bank, ref, use_gpu=False).numpy(), [[0, 0, 1, 1]])


@pytest.mark.parametrize("n_bank", [60, 61])
def test_leave_one_out_matches_numpy_with_deleted_self(n_bank):
    rng = np.random.default_rng(1)
    bank = _unit(rng, n_bank, 8)
    self_idx = np.array([0, 5, 17, -1, n_bank - 1])
    refs = bank[np.maximum(self_idx, 0)].copy()
    refs[3] = _unit(rng, 1, 8)[0]  # a reference outside the bank
    lab = label_identities(bank, refs, self_indices=self_idx, chunk_size=2, use_gpu=False).numpy()
    np.testing.assert_array_equal(lab, numpy_median_labels(bank, refs, self_idx))
    for r, j in enumerate(self_idx):
        if j >= 0:
            assert lab[r, j] == -1
            # the median is over the other n_bank - 1 latents, the self-match (cosine 1) excluded
            assert (lab[r] == 1).sum() == (n_bank - 1) // 2
    assert (lab[3] != -1).all()


def test_balance_subsamples_larger_class_seeded():
    rng = np.random.default_rng(2)
    bank, refs = _unit(rng, 200, 8), _unit(rng, 6, 8)
    raw = label_identities(bank, refs, rule="threshold", threshold=0.3, use_gpu=False).numpy()
    a = label_identities(bank, refs, rule="threshold", threshold=0.3, balance=True, seed=3, use_gpu=False).numpy()
    b = label_identities(bank, refs, rule="threshold", threshold=0.3, balance=True, seed=3, use_gpu=False).numpy()
    c = label_identities(bank, refs, rule="threshold", threshold=0.3, balance=True, seed=4, use_gpu=False).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    for r in range(6):
        n_pos, n_neg = (raw[r] == 1).sum(), (raw[r] == 0).sum()
        assert (a[r] == 1).sum() == (a[r] == 0).sum() == min(n_pos, n_neg)
        kept = a[r] != -1
        np.testing.assert_array_equal(a[r][kept], raw[r][kept])  # only drops, never flips


def test_threshold_and_topk_rules():
    rng = np.random.default_rng(3)
    bank, refs = _unit(rng, 120, 8), _unit(rng, 7, 8)
    sims = (refs @ bank.T).astype(np.float32)
    thr = label_identities(bank, refs, rule="threshold", threshold=0.2, use_gpu=False).numpy()
    np.testing.assert_array_equal(thr, (sims > 0.2).astype(np.int8))
    top = label_identities(bank, refs, rule="topk", k=10, use_gpu=False).numpy()
    assert (top.sum(1) == 10).all()
    for r in range(7):
        np.testing.assert_array_equal(np.sort(np.flatnonzero(top[r])), np.sort(np.argsort(-sims[r])[:10]))


def test_topk_leave_one_out_excludes_self():
    rng = np.random.default_rng(4)
    bank = _unit(rng, 80, 8)
    self_idx = np.arange(5)
    lab = label_identities(bank, bank[:5], rule="topk", k=4, self_indices=self_idx, use_gpu=False).numpy()
    sims = bank[:5] @ bank.T
    for r in range(5):
        assert lab[r, r] == -1 and (lab[r] == 1).sum() == 4
        order = [j for j in np.argsort(-sims[r]) if j != r][:4]
        np.testing.assert_array_equal(np.sort(np.flatnonzero(lab[r] == 1)), np.sort(order))


def test_similarities_are_cosines_of_unnormalized_inputs():
    rng = np.random.default_rng(5)
    bank, refs = rng.standard_normal((30, 6)) * 3, rng.standard_normal((4, 6))
    s = similarities(torch.tensor(bank), refs, chunk_size=3)
    expect = (refs / np.linalg.norm(refs, axis=1, keepdims=True)) @ (bank / np.linalg.norm(bank, axis=1, keepdims=True)).T
    np.testing.assert_allclose(s.numpy(), expect, atol=1e-6)


def test_bad_inputs_name_the_problem():
    bank = np.ones((10, 4), np.float32)
    with pytest.raises(ValueError, match="dim"):
        label_identities(bank, np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="all-zero"):
        label_identities(np.zeros((10, 4), np.float32), bank[:2])
    with pytest.raises(ValueError, match="threshold"):
        label_identities(bank, bank[:2], rule="threshold")
    with pytest.raises(ValueError, match="k"):
        label_identities(bank, bank[:2], rule="topk")
    with pytest.raises(ValueError, match="unknown rule"):
        label_identities(bank, bank[:2], rule="mean")
    with pytest.raises(ValueError, match="one entry per reference"):
        label_identities(bank, bank[:2], self_indices=[0])
    with pytest.raises(ValueError, match="NaN"):
        label_identities(np.full((10, 4), np.nan, np.float32), bank[:2])


def test_gpu_code_paths_give_the_same_labels(monkeypatch):
    """The CUDA branch (torch.kthvalue median / top-k, also used when FAISS has no GPU) is
    plain torch code; run it on the CPU device here so it is checked without a GPU."""
    from exface.exfacegan import labeling as lab

    rng = np.random.default_rng(6)
    bank = _unit(rng, 91, 8)
    refs = bank[:9].copy()
    self_idx = np.array([0, 1, 2, 3, -1, 5, 6, 7, 8])
    for si in (None, self_idx):
        out = torch.empty(9, 91, dtype=torch.int8)
        b_t, r_t = torch.from_numpy(bank), torch.from_numpy(refs)
        lab._rank_labels_torch(b_t, r_t, si, out, 4, torch.device("cpu"), None)
        np.testing.assert_array_equal(out.numpy(), numpy_median_labels(bank, refs, si))
    monkeypatch.setattr(lab, "_faiss_index", lambda bank, device: None)
    out = torch.empty(9, 91, dtype=torch.int8)
    lab._topk_labels_faiss(torch.from_numpy(bank), torch.from_numpy(refs), self_idx, out, 5, torch.device("cpu"))
    expect = label_identities(bank, refs, rule="topk", k=5, self_indices=self_idx, use_gpu=False)
    np.testing.assert_array_equal(out.numpy(), expect.numpy())


def test_ties_zeros_and_negative_similarities_match_numpy():
    """Duplicated bank rows (tied similarities), orthogonal ones (exact zeros) and negatives:
    the int32-key selection must order them exactly as numpy's float median does."""
    rng = np.random.default_rng(7)
    base = _unit(rng, 5, 6)
    bank = np.concatenate([np.repeat(base, 9, axis=0), np.eye(6, dtype=np.float32), -base[:3]])
    refs = np.concatenate([base[:2], np.eye(6, dtype=np.float32)[:2], _unit(rng, 3, 6)])
    for n in (len(bank), len(bank) - 1):
        b = bank[:n]
        np.testing.assert_array_equal(label_identities(b, refs, use_gpu=False).numpy(), numpy_median_labels(b, refs))


def test_bracketed_selection_is_exact_with_refinement_and_redone_rows(monkeypatch):
    """Long rows go through the sampled bracket, its re-bracketing from scanned columns and,
    when a bracket misses, the exact redo of that row; every path must equal numpy's."""
    from exface.exfacegan import labeling as lab
    from exface.exfacegan import rank_select as rs

    rng = np.random.default_rng(8)
    bank = _unit(rng, 4 * 1024 + 37, 8)  # > 3 tiles: one re-bracketing
    refs = np.concatenate([bank[:6], _unit(rng, 3, 8)])
    self_idx = np.array([0, 1, 2, 3, 4, 5, -1, -1, -1])
    expect = numpy_median_labels(bank, refs, self_idx)
    np.testing.assert_array_equal(label_identities(bank, refs, self_indices=self_idx, use_gpu=False).numpy(), expect)
    missed = []
    orig = rs.select_band

    def spy(*args):
        orig(*args)
        missed.append(int((~args[-1]).sum()))  # rows whose band missed the wanted ranks

    monkeypatch.setattr(rs, "select_band", spy)
    for z in (0.05, 0.0):  # brackets too narrow to hold the median: rows are redone exactly
        monkeypatch.setattr(lab, "_BRACKET_Z", z)
        monkeypatch.setattr(lab, "_REFINE_Z", z)
        got = label_identities(bank, refs, self_indices=self_idx, use_gpu=False, chunk_size=4).numpy()
        np.testing.assert_array_equal(got, expect)
    assert sum(missed) > 0


def test_topk_ties_go_to_the_lowest_bank_indices():
    # bank rows 0..5 identical: a reference equal to them ties 6 ways at the top
    rng = np.random.default_rng(9)
    base = _unit(rng, 1, 8)
    bank = np.concatenate([np.repeat(base, 6, axis=0), _unit(rng, 40, 8)])
    for use_torch in (False, True):
        if use_torch:
            from exface.exfacegan import labeling as lab

            out = torch.empty(1, len(bank), dtype=torch.int8)
            b_t = lab._normalize(torch.from_numpy(bank), "bank")
            r_t = lab._normalize(torch.from_numpy(base), "refs")
            lab._rank_labels_torch(b_t, r_t, None, out, 1, torch.device("cpu"), 4)
            got = out.numpy()
        else:
            got = label_identities(bank, base, rule="topk", k=4, use_gpu=False).numpy()
        assert got.sum() == 4
        np.testing.assert_array_equal(np.flatnonzero(got[0]), [0, 1, 2, 3])


def test_threshold_rule_fused_into_tiles_matches_plain_compare():
    rng = np.random.default_rng(10)
    bank, refs = _unit(rng, 2 * 1024 + 5, 8), _unit(rng, 5, 8)
    expect = ((refs @ bank.T).astype(np.float32) > 0.25).astype(np.int8)
    got = label_identities(bank, refs, rule="threshold", threshold=0.25, use_gpu=False, chunk_size=2).numpy()
    # float32 GEMM vs numpy matmul rounding can flip entries within an ulp of the cut
    s = refs @ bank.T
    near = np.abs(s - 0.25) < 1e-6
    np.testing.assert_array_equal(got[~near], expect[~near])


def test_faiss_is_optional_with_a_clear_error(monkeypatch):
    import builtins

    from exface.exfacegan import labeling as lab

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    rng = np.random.default_rng(14)
    bank, refs = _unit(rng, 50, 8), _unit(rng, 3, 8)
    # every CPU rule works without FAISS
    assert label_identities(bank, refs, rule="topk", k=5, use_gpu=False).numpy().sum() == 15
    with pytest.raises(ImportError, match=r"exface\[faiss\]"):
        lab._faiss_index(torch.from_numpy(bank), torch.device("cpu"))
    assert lab._faiss_index(torch.from_numpy(bank), torch.device("cuda")) is None  # CUDA: torch path instead


@pytest.mark.parametrize("cols, cap, width, ties, filled, c0", [
    (1024, 4096, 0.4, False, 0, 11), (1003, 4096, 0.4, True, 5, 11), (1003, 40, 0.4, False, 0, 11),
    (5, 3, 0.4, False, 0, 11), (1003, 600, np.inf, True, 17, 11), (250, 4096, 0.0, True, 0, 11),
    (1024, 4096, 0.4, True, 3, 16), (1008, 300, 0.4, False, 0, 32)])
@pytest.mark.parametrize("kernel", ["scan_tile", "_scan_tile_compress", "_scan_tile_flags"])
def test_scan_tile_matches_a_direct_transcription(cols, cap, width, ties, filled, c0, kernel):
    """The 16-wide register scan (compress into the band buffer while it has room for 16,
    entry by entry near its end and for the last ``cols % 16``) against the rule written
    out plainly: labels ``x > lo``, counts ``x <= lo``, band ``lo < x <= hi`` appended in
    column order after what the buffer held, counts past a full buffer; NaN (a left-out
    latent) is neither counted nor stored. Ties, an empty band, the whole row as the band;
    rows whose labels are 16-byte aligned (``c0 = 16, 32``: non-temporal stores) or not.
    Both kernels (AVX-512 register scan; label/flag + compaction elsewhere) and the dispatch."""
    from exface.exfacegan import rank_select

    scan_tile = getattr(rank_select, kernel)

    rng = np.random.default_rng(cols + cap)
    rows = 7
    tile = rng.standard_normal((rows, cols)).astype(np.float32)
    if ties:
        tile = np.round(tile * 4) / 4
    tile[2, min(3, cols - 1)] = np.nan
    tile[4, rng.random(cols) < 0.1] = np.nan
    lo = np.float32(-0.25) + (np.round(rng.standard_normal(rows) * 4) / 40).astype(np.float32)
    hi = (lo + np.float32(width)).astype(np.float32)
    out = np.full((rows, c0 + cols), 7, np.int8)
    n_le = np.full(rows, 2, np.int64)
    band_v = np.zeros((rows, cap), np.float32)
    band_i = np.zeros((rows, cap), np.int32)
    band_n = np.full(rows, min(filled, cap), np.int64)
    band_v[:, :filled] = -5.0
    scan_tile(tile, c0, lo, hi, out, n_le, band_v, band_i, band_n)
    for i in range(rows):
        t = tile[i]
        np.testing.assert_array_equal(out[i, c0:], (t > lo[i]).astype(np.int8))
        assert (out[i, :c0] == 7).all()
        assert n_le[i] == 2 + int((t <= lo[i]).sum())
        cols_in = np.flatnonzero((t > lo[i]) & (t <= hi[i]))
        f = min(filled, cap)
        assert band_n[i] == f + len(cols_in)
        kept = max(0, min(len(cols_in), cap - f))
        assert (band_v[i, :f] == -5.0).all()
        np.testing.assert_array_equal(band_i[i, f:f + kept], c0 + cols_in[:kept])
        np.testing.assert_array_equal(band_v[i, f:f + kept], t[cols_in[:kept]])


def test_scan_tile_refuses_strided_rows():
    from exface.exfacegan.rank_select import scan_tile

    tile = np.zeros((2, 64), np.float32)[:, ::2]
    lo = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="unit stride"):
        scan_tile(tile, 0, lo, lo, np.zeros((2, 32), np.int8), np.zeros(2, np.int64),
                  np.zeros((2, 64), np.float32), np.zeros((2, 64), np.int32), np.zeros(2, np.int64))


def test_populated_label_matrix_gives_the_same_labels(monkeypatch):
    """The label matrix mapped with its pages populated (forced here for a small problem)
    is an ordinary writable int8 tensor: the labels equal numpy's and survive torch.save."""
    import io

    from exface.exfacegan import labeling as lab

    rng = np.random.default_rng(3)
    bank = _unit(rng, 3000, 16)
    refs = bank[:40]
    expect = numpy_median_labels(bank, refs)
    monkeypatch.setattr(lab, "_POPULATE_BYTES", 1)
    got = label_identities(bank, refs, use_gpu=False)
    assert got.dtype == torch.int8 and got.shape == (40, 3000)
    np.testing.assert_array_equal(got.numpy(), expect)
    buf = io.BytesIO()
    torch.save(got, buf)
    buf.seek(0)
    np.testing.assert_array_equal(torch.load(buf).numpy(), expect)


@pytest.mark.parametrize("kind", ["normal", "ties", "tiny_range", "huge_range", "short"])
def test_histogram_order_statistics_equal_partition(kind):
    """The histogram selection behind bracketing, re-bracketing and band selection gives
    ``np.partition``'s exact values for near and distant rank pairs, on ties, on ranges
    near the float32 limits (its bin arithmetic is float64), and on rows shorter than a bin."""
    from exface.exfacegan.rank_select import _order_stat_scratch, _two_order_stats

    rng = np.random.default_rng(len(kind))
    n = 5 if kind == "short" else 1500
    v = rng.standard_normal(n)
    if kind == "ties":
        v = np.round(v * 4) / 4
    elif kind == "tiny_range":
        v = 1.0 + v * 1e-7  # a few float32 ulps apart: many exact ties
    elif kind == "huge_range":
        v = v * 1e37
    v = v.astype(np.float32)
    before = v.copy()
    counts, small, bins = _order_stat_scratch(n)
    for a, b in [(0, n - 1), (n // 2 - 1, n // 2), (n // 3, n // 3), (1, n - 2), (n // 5, 4 * n // 5)]:
        want = np.partition(v, [a, b])
        got = _two_order_stats(v, a, b, counts, small, bins)
        assert got == (want[a], want[b]), (a, b)
    np.testing.assert_array_equal(v, before)  # left unchanged


def test_min_max_over_integer_keys_equals_numpy():
    """``_min_max`` (order-preserving int32 keys of the floats) against ``np.min``/``np.max``:
    mixed signs, all negative, signed zeros, subnormals, the float32 limits, one entry."""
    from exface.exfacegan.rank_select import _min_max

    rng = np.random.default_rng(3)
    f32 = np.finfo(np.float32)
    cases = [rng.standard_normal(1037), -rng.random(64) - 1.0, np.array([0.0, -0.0, 0.0]),
             np.array([-0.0, 1e-45, -1e-45]), np.array([f32.max, -f32.max, 0.5]), np.array([-3.25])]
    for v in cases:
        v = np.asarray(v, np.float32)
        lo, hi = _min_max(v)
        assert lo == v.min() and hi == v.max()
