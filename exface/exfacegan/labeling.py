"""ExFaceGAN identity labels: which bank latents look like each reference identity.

ExFaceGAN (Boutros et al., 2023) embeds the images of a bank of N latents with a face
recognition (FR) model, and for every reference identity r takes the cosine similarity
of each bank embedding to the reference embedding. Latents above the per-reference
median similarity are "similar" (label 1), the others "dissimilar" (label 0); a linear
SVM per reference then separates the two in latent space, and its normal is that
identity's boundary. Their code loops over references in numpy (one GEMV and one median
per reference); here all references are labelled at once, in reference chunks:

Which rule uses what (figures: ``benchmarks/labeling_speed.py``):

- ``rule="median"`` and ``rule="topk"`` on CPU: the similarities are computed once, as
  float32 GEMM tiles (``torch.mm``, row chunks x 1024 bank columns, in cache), and each
  tile is consumed at once by the fused kernels of :mod:`exface.exfacegan.rank_select`:
  a bracket per row from the chunk's first tile, one pass writing provisional labels
  and keeping only the entries inside the bracket, re-bracketing from the scanned columns,
  then an exact selection inside the bracket (rows whose bracket missed are redone
  exactly). The median follows ``numpy.median`` (mean of the two middle values for an
  even count) and labels are ``similarity > median``; top-k labels exactly ``k`` entries,
  ties at the k-th similarity going to the lowest bank indices. No FAISS: its exact
  ``IndexFlatIP`` search (GEMM + heaps) is slower here than the fused pass.
- ``rule="threshold"`` on CPU: ``similarity > threshold`` fused into the same GEMM tiles.
- On CUDA: the GEMM per reference chunk on the GPU, ``torch.kthvalue`` for the same
  order statistics, and the same cut and tie rule (identical labels); top-k uses a FAISS
  GPU index (``IndexFlatIP``) when FAISS with GPUs is installed (``exface[gpu]``; FAISS's
  own tie order), else the torch path. FAISS is an optional extra (``exface[faiss]``):
  no default path needs it.

Memory is bounded by the output (``int8 [R, N]``: 10 GB for R = N = 100k) plus one GEMM
tile and the band buffers per chunk (a few MB) on CPU, or ``float32 [chunk, N]``
buffers (~256 MB by default) on CUDA.

Sign convention: exface's label 1 is *similar*. ExFaceGAN's own code stores label 1 for
*dissimilar* (``cos_sims < threshold``), so its saved boundaries point away from the
identity; exface boundaries point towards it. ExFaceGAN's threshold is
``sorted(sims)[n // 2]`` with ``>=`` for similar, which differs from the median rule
here only for the middle element of an odd-sized row.
"""

from __future__ import annotations

import mmap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

__all__ = ["label_identities", "similarities", "numpy_median_labels"]

_DEFAULT_BUFFER_ELEMENTS = 1 << 25  # float32 elements per [chunk, N] buffer (128 MiB)


def _as_float_matrix(a: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(a)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [count, dim] array, got shape {tuple(t.shape)}")
    if not (t.is_floating_point()):
        raise ValueError(f"{name} must be floating point (embeddings), got dtype {t.dtype}")
    t = t.detach().to(torch.float32)
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t).all(1)).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has NaN/inf values (rows {bad}...); clean the embeddings first")
    return t


_POPULATE_BYTES = 1 << 26  # label matrices from 64 MiB up are mapped with their pages populated


def _label_matrix(rows: int, cols: int) -> Tensor:
    """An uninitialized ``int8 [rows, cols]`` label matrix (every entry is written later).

    A large one is an anonymous mapping made with ``MAP_POPULATE`` (Linux): the kernel
    supplies all its pages at once, instead of one fault per 4 KiB page while the labelling
    kernels write it. For a fresh R = N = 20k matrix (400 MB) on one core here: 0.12-0.21 s,
    against 0.24-0.26 s for ``torch.empty`` + first touch, and 0.54-1.2 s for transparent
    huge pages (``MADV_HUGEPAGE``, 0.05 s when 2 MiB blocks happen to be free, but the
    kernel compacts memory for them once other allocations have run: this cost the median
    rule about 1 s per call in ``benchmarks/labeling_speed.py``). Elsewhere it is plain
    ``torch.empty``.
    """
    nbytes = rows * cols
    if nbytes >= _POPULATE_BYTES and hasattr(mmap, "MAP_POPULATE"):
        try:
            buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
            return torch.from_numpy(np.frombuffer(buf, dtype=np.int8).reshape(rows, cols))
        except (OSError, ValueError):
            pass
    return torch.empty(rows, cols, dtype=torch.int8)


def _normalize(t: Tensor, name: str) -> Tensor:
    norms = t.norm(dim=1)
    if (norms == 0).any():
        bad = (norms == 0).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has all-zero rows {bad}...; cosine similarity is undefined for them")
    return (t / norms[:, None]).contiguous()


def _resolve_device(use_gpu: bool | None) -> torch.device:
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    if use_gpu and not torch.cuda.is_available():
        raise ValueError("use_gpu=True but torch sees no CUDA device; pass use_gpu=None or False")
    return torch.device("cuda") if use_gpu else torch.device("cpu")


def _chunk_rows(chunk_size: int | None, n_refs: int, n_bank: int) -> int:
    if chunk_size is None:
        chunk_size = max(1, _DEFAULT_BUFFER_ELEMENTS // max(1, n_bank))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return min(chunk_size, max(1, n_refs))


def _check_self_indices(self_indices, n_refs: int, n_bank: int) -> np.ndarray | None:
    if self_indices is None:
        return None
    idx = np.asarray(torch.as_tensor(self_indices).cpu(), dtype=np.int64).reshape(-1)
    if idx.shape[0] != n_refs:
        raise ValueError(
            f"self_indices needs one entry per reference ({n_refs}), got {idx.shape[0]}; "
            "use -1 for references that are not in the bank"
        )
    if ((idx < -1) | (idx >= n_bank)).any():
        raise ValueError(f"self_indices must be -1 or in [0, {n_bank}), got values {idx.min()}..{idx.max()}")
    return idx


def similarities(
    bank: Tensor | np.ndarray,
    references: Tensor | np.ndarray,
    *,
    use_gpu: bool | None = False,
    chunk_size: int | None = None,
) -> Tensor:
    """Cosine similarities ``float32 [R, N]`` of every reference to every bank embedding.

    Both inputs are L2-normalized here. The full matrix is returned, so this is for
    moderate sizes (R * N * 4 bytes); :func:`label_identities` streams instead.
    """
    bank_t = _normalize(_as_float_matrix(bank, "bank"), "bank")
    refs_t = _normalize(_as_float_matrix(references, "references"), "references")
    if bank_t.shape[1] != refs_t.shape[1]:
        raise ValueError(f"bank has dim {bank_t.shape[1]} but references have dim {refs_t.shape[1]}")
    device = _resolve_device(use_gpu)
    bank_d = bank_t.to(device)
    rows = _chunk_rows(chunk_size, refs_t.shape[0], bank_t.shape[0])
    out = torch.empty(refs_t.shape[0], bank_t.shape[0], dtype=torch.float32)
    for start in range(0, refs_t.shape[0], rows):
        stop = min(start + rows, refs_t.shape[0])
        out[start:stop] = (refs_t[start:stop].to(device) @ bank_d.T).cpu()
    return out


def label_identities(
    bank: Tensor | np.ndarray,
    references: Tensor | np.ndarray,
    rule: str = "median",
    k: int | None = None,
    threshold: float | None = None,
    self_indices: Tensor | np.ndarray | None = None,
    balance: bool = False,
    seed: int = 0,
    use_gpu: bool | None = None,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> Tensor:
    """Label every bank latent for every reference identity: ``int8 [R, N]`` in {1, 0, -1}.

    Args:
        bank: ``[N, D]`` FR embeddings of the bank images (any scale; normalized here).
        references: ``[R, D]`` embeddings of the reference identities.
        rule: ``"median"`` (ExFaceGAN: similarity above the per-reference median is 1),
            ``"topk"`` (the ``k`` most similar are 1) or ``"threshold"`` (similarity
            above ``threshold`` is 1). Everything else valid is 0.
        k: number of positives per reference for ``rule="topk"``.
        threshold: cosine-similarity cut for ``rule="threshold"``.
        self_indices: ``[R]`` index of each reference inside the bank (or -1) for
            leave-one-out: that latent gets label -1 and is left out of the median /
            top-k, as ExFaceGAN does with ``np.delete``.
        balance: subsample the larger class of each reference to the size of the
            smaller one (seeded by ``seed``), marking the dropped latents -1.
        use_gpu: CUDA for the GEMM and selection (and a FAISS GPU index for ``topk``
            when FAISS has GPUs); ``None`` = use one if torch sees it.
        chunk_size: references per chunk; default 256 on CPU (GEMM tiles that stay in
            cache), on CUDA enough to keep each ``float32 [chunk, N]`` buffer at 128 MiB.
        num_threads: CPU worker threads for the fused selection kernels (default: torch's).
    """
    bank_t = _normalize(_as_float_matrix(bank, "bank"), "bank")
    refs_t = _normalize(_as_float_matrix(references, "references"), "references")
    n_bank, dim = bank_t.shape
    n_refs = refs_t.shape[0]
    if refs_t.shape[1] != dim:
        raise ValueError(f"bank has dim {dim} but references have dim {refs_t.shape[1]}; embed both with the same FR model")
    if n_bank < 2:
        raise ValueError(f"the bank needs at least 2 latents, got {n_bank}")
    self_idx = _check_self_indices(self_indices, n_refs, n_bank)
    device = _resolve_device(use_gpu)
    if device.type == "cpu":  # row chunks of GEMM tiles that stay in cache
        rows = _chunk_rows(chunk_size or _CPU_CHUNK_ROWS, n_refs, n_bank)
    else:
        rows = _chunk_rows(chunk_size, n_refs, n_bank)
    out = _label_matrix(n_refs, n_bank)

    if rule == "median":
        if device.type == "cuda":
            _rank_labels_torch(bank_t, refs_t, self_idx, out, rows, device, None)
        else:
            _rank_labels_cpu(bank_t, refs_t, self_idx, out, rows, num_threads, None)
    elif rule == "threshold":
        if threshold is None:
            raise ValueError('rule="threshold" needs threshold=<cosine similarity>, e.g. threshold=0.3')
        _threshold_labels(bank_t, refs_t, self_idx, out, rows, device, float(threshold))
    elif rule == "topk":
        if k is None or not (1 <= int(k) < n_bank - (self_idx is not None)):
            raise ValueError(f'rule="topk" needs 1 <= k < number of bank latents ({n_bank}), got k={k}')
        if device.type == "cuda":
            _topk_labels_faiss(bank_t, refs_t, self_idx, out, int(k), device)
        else:
            _rank_labels_cpu(bank_t, refs_t, self_idx, out, rows, num_threads, int(k))
    else:
        raise ValueError(f'unknown rule {rule!r}; use "median", "topk" or "threshold"')

    if balance:
        _balance(out, seed)
    return out


# ------------------------------------------------------------------ median / top-k

_CPU_CHUNK_ROWS = 256  # references per CPU chunk (GEMM tiles of [256, _TILE_COLS])
_TILE_COLS = 1024  # bank columns per GEMM tile: a [256, 1024] float32 tile (1 MiB) stays in L2
_BRACKET_Z = 3.0  # bracket half-width in binomial standard deviations (~0.3% rows redone)
_REFINE_Z = 3.5  # the same for each re-bracketing from scanned columns (~0.05% each)
_REFINE_AT_TILES = (3, 9)  # re-bracket after this many scanned tiles


def _gemm_tiles(refs: Tensor, bank_t: Tensor, rows: int, tile_cols: int = _TILE_COLS):
    """Yield ``(start, stop, c0, tile)``: ``tile = refs[start:stop] @ bank_t[:, c0:c0+w]``.

    ``bank_t`` is the ``[D, N]`` transposed bank. Row chunks outside, column tiles inside,
    so each tile is consumed while it is still in cache; one reused buffer.
    """
    n_bank = bank_t.shape[1]
    tile_cols = min(tile_cols, n_bank)
    buf = torch.empty(rows * tile_cols, dtype=torch.float32)
    for start in range(0, refs.shape[0], rows):
        stop = min(start + rows, refs.shape[0])
        chunk = refs[start:stop]
        for c0 in range(0, n_bank, tile_cols):
            w = min(tile_cols, n_bank - c0)
            tile = buf[: (stop - start) * w].view(stop - start, w)
            torch.mm(chunk, bank_t[:, c0 : c0 + w], out=tile)
            yield start, stop, c0, tile


def _rank_targets(n_bank: int, self_idx: np.ndarray | None, n_refs: int, k: int | None):
    """Ascending ranks ``(rank_lo, rank_hi)`` per row: the two middle ranks (median) or ``n - k``."""
    n_valid = np.full(n_refs, n_bank, dtype=np.int64)
    if self_idx is not None:
        n_valid -= (self_idx >= 0).astype(np.int64)
    if k is None:
        return (n_valid - 1) // 2, n_valid // 2, n_valid
    return n_valid - k, n_valid - k, n_valid


def _rank_labels_cpu(bank, refs, self_idx, out, rows, num_threads, k: int | None) -> None:
    """Median (``k=None``) or top-``k`` labels through the bracketed fused selection
    (:mod:`exface.exfacegan.rank_select`): one GEMM pass, exact results.

    Each chunk's first tile (its references against bank columns ``0..1023``) is the
    bracketing sample, as the scanned tiles are the re-bracketing samples: no extra GEMM,
    on the premise that bank columns are in no particular order (a bank is i.i.d. draws).
    A bank sorted by similarity stays exact; its rows miss their brackets and are redone.
    """
    from exface.exfacegan import rank_select as rs

    n_refs, n_bank = refs.shape[0], bank.shape[0]
    rank_lo, rank_hi, n_valid = _rank_targets(n_bank, self_idx, n_refs, k)
    k_row = np.full(n_refs, -1 if k is None else k, dtype=np.int64)
    m = min(n_bank, _TILE_COLS)  # the bracketing sample: each chunk's first tile
    bank_t = bank.T.contiguous()
    workers = max(1, num_threads or torch.get_num_threads())
    out_np = out.numpy()
    lo_r, hi_r = int(rank_lo.min()), int(rank_hi.max())
    # re-bracket as the scanned columns grow (_REFINE_AT_TILES): later tiles store less
    refine_at = {c * _TILE_COLS for c in _REFINE_AT_TILES if c * _TILE_COLS < n_bank - _TILE_COLS}
    cap = _band_capacity(lo_r, hi_r, n_bank, m)
    band_all_v = np.empty((min(rows, n_refs), cap), np.float32)
    band_all_i = np.empty((min(rows, n_refs), cap), np.int32)

    with ThreadPoolExecutor(workers) as pool:

        def par(fn, c, *arrays):
            blocks = _row_blocks(c, workers)
            if len(blocks) == 1:
                fn(*arrays)
            else:
                list(pool.map(lambda sl: fn(*(a[sl] if isinstance(a, np.ndarray) else a for a in arrays)), blocks))

        state = None
        for start, stop, c0, tile in _gemm_tiles(refs, bank_t, rows):
            c = stop - start
            if c0 == 0:
                if state is not None:
                    _finish_rank_chunk(rs, bank_t, refs, self_idx, out_np, rank_lo, rank_hi, n_valid, k_row, *state)
                lo, hi = rs.bracket(tile.numpy(), lo_r, hi_r, n_bank, _BRACKET_Z)  # before the NaNs
                band_v, band_i = band_all_v[:c], band_all_i[:c]  # reused: fresh pages cost faults
                band_n = np.zeros(c, np.int64)
                n_le = np.zeros(c, np.int64)
                state = (start, stop, lo, hi, n_le, band_v, band_i, band_n)
            t = tile.numpy()
            _nan_self(t, self_idx, start, stop, c0)
            par(rs.scan_tile, c, t, c0, lo, hi, out_np[start:stop], n_le, band_v, band_i, band_n)
            seen = c0 + t.shape[1]
            if seen in refine_at:
                par(rs.refine, c, band_v, band_n, n_le, seen, rank_lo[start:stop], rank_hi[start:stop],
                    n_bank, _REFINE_Z, lo, hi)
        if state is not None:
            _finish_rank_chunk(rs, bank_t, refs, self_idx, out_np, rank_lo, rank_hi, n_valid, k_row, *state)


def _band_capacity(rank_lo: int, rank_hi: int, n: int, m: int) -> int:
    """Band buffer entries per row: 1.5x the first bracket's expected share of the row, + 64."""
    p_lo, p_hi = rank_lo / n, (rank_hi + 1) / n
    sd = _BRACKET_Z * (np.sqrt(m * p_lo * (1 - p_lo)) + np.sqrt(m * p_hi * (1 - p_hi)))
    share = min(1.0, (m * (p_hi - p_lo) + sd + 4) / m)
    return int(min(n, 1.5 * share * n + 64))


def _nan_self(t: np.ndarray, self_idx, start: int, stop: int, c0: int) -> None:
    """Blank the references' own latents in a tile (NaN is neither counted nor selected)."""
    if self_idx is None:
        return
    excl = self_idx[start:stop] - c0
    hit = np.flatnonzero((excl >= 0) & (excl < t.shape[1]))
    t[hit, excl[hit]] = np.nan


def _finish_rank_chunk(rs, bank_t, refs, self_idx, out_np, rank_lo, rank_hi, n_valid, k_row,
                       start, stop, lo, hi, n_le, band_v, band_i, band_n) -> None:
    """Select inside each row's band, redo exactly the rows whose band missed, fix labels."""
    c = stop - start
    sl = slice(start, stop)
    lower = np.zeros(c, np.float32)  # rows to redo keep 0 here, not garbage
    upper = np.zeros(c, np.float32)
    ok = np.empty(c, np.bool_)
    rs.select_band(band_v, band_n, n_le, rank_lo[sl], rank_hi[sl], lo, hi, lower, upper, ok)
    out_c = out_np[sl]
    cut = _cut(lower, upper, rank_lo[sl], rank_hi[sl], k_row[sl])
    n_above = n_valid[sl] - n_le - band_n
    rs.fix_band(out_c, band_v, band_i, band_n, cut, k_row[sl], n_above)
    redo = np.flatnonzero(~ok)
    if len(redo):  # whole rows as the band: exact whatever the bracket did
        n_bank = bank_t.shape[1]
        rows_g = start + redo
        s = (refs[torch.from_numpy(rows_g)] @ bank_t).numpy()
        if self_idx is not None:
            excl = self_idx[rows_g]
            hit = np.flatnonzero(excl >= 0)
            s[hit, excl[hit]] = np.nan
        f = len(redo)
        inf = np.full(f, np.inf, np.float32)
        tmp = np.zeros((f, n_bank), np.int8)
        b_v = np.empty((f, n_bank), np.float32)
        b_i = np.empty((f, n_bank), np.int32)
        b_n = np.zeros(f, np.int64)
        le = np.zeros(f, np.int64)
        rs.scan_tile(s, 0, -inf, inf, tmp, le, b_v, b_i, b_n)
        lw, up, good = np.empty(f, np.float32), np.empty(f, np.float32), np.empty(f, np.bool_)
        rs.select_band(b_v, b_n, le, rank_lo[rows_g], rank_hi[rows_g], -inf, inf, lw, up, good)
        assert good.all()
        cut_f = _cut(lw, up, rank_lo[rows_g], rank_hi[rows_g], k_row[rows_g])
        rs.fix_band(tmp, b_v, b_i, b_n, cut_f, k_row[rows_g], np.zeros(f, np.int64))
        out_c[redo] = tmp
    if self_idx is not None:
        excl = self_idx[sl]
        hit = np.flatnonzero(excl >= 0)
        out_c[hit, excl[hit]] = -1


def _cut(lower, upper, rank_lo, rank_hi, k_row) -> np.ndarray:
    """The label cut per row: ``numpy.median`` (mean of the two middle values, in float32,
    for an even count) for the median rule, the k-th largest value for top-k."""
    mean = (lower + upper) / np.float32(2.0)
    return np.where((k_row < 0) & (rank_hi > rank_lo), mean, lower).astype(np.float32)


def _row_blocks(n: int, parts: int) -> list[slice]:
    step = max(1, -(-n // parts))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _rank_labels_torch(bank, refs, self_idx, out, rows, device, k: int | None) -> None:
    """The same labels with torch ops on ``device`` (the CUDA path): per chunk one GEMM,
    ``torch.kthvalue`` for the order statistics, and the same cut and tie rule."""
    n_refs, n_bank = refs.shape[0], bank.shape[0]
    rank_lo, rank_hi, n_valid = _rank_targets(n_bank, self_idx, n_refs, k)
    k_row = np.full(n_refs, -1 if k is None else k, dtype=np.int64)
    bank_d = bank.to(device)
    for start in range(0, n_refs, rows):
        stop = min(start + rows, n_refs)
        sl = slice(start, stop)
        s = refs[start:stop].to(device) @ bank_d.T
        p = s.clone()
        has = cols = None
        if self_idx is not None:
            excl = self_idx[sl]
            has = torch.from_numpy(np.flatnonzero(excl >= 0)).to(device)
            cols = torch.from_numpy(excl).to(device)[has]
            p[has, cols] = float("inf")  # sorts last, beyond every valid rank
            s[has, cols] = float("-inf")  # never above the cut, never a tie
        # rows differ in rank only by the self entry: one kthvalue per distinct rank
        lower = torch.empty(stop - start, device=device)
        upper = torch.empty(stop - start, device=device)
        for ranks, dest in ((rank_lo[sl], lower), (rank_hi[sl], upper)):
            for q in np.unique(ranks):
                idx = torch.from_numpy(np.flatnonzero(ranks == q)).to(device)
                dest[idx] = torch.kthvalue(p[idx], int(q) + 1, dim=1).values
        cut = torch.from_numpy(_cut(lower.cpu().numpy(), upper.cpu().numpy(), rank_lo[sl], rank_hi[sl], k_row[sl]))
        cut = cut.to(device)[:, None]
        lab = s > cut
        if k is not None:  # ties at the cut: the lowest bank indices, up to exactly k
            need = k - lab.sum(1, keepdim=True)
            eq = s == cut
            lab |= eq & (eq.cumsum(1) <= need)
        lab = lab.to(torch.int8)
        if has is not None:
            lab[has, cols] = -1
        out[start:stop] = lab.cpu()


# ------------------------------------------------------------------------ threshold


def _threshold_labels(bank, refs, self_idx, out, rows, device, threshold) -> None:
    """``similarity > threshold``, the compare fused into each GEMM tile (CPU) or chunk."""
    if device.type == "cpu":
        out_np = out.numpy().view(np.bool_)
        thr = np.float32(threshold)
        for start, stop, c0, tile in _gemm_tiles(refs, bank.T.contiguous(), rows):
            np.greater(tile.numpy(), thr, out=out_np[start:stop, c0 : c0 + tile.shape[1]])
    else:
        bank_d = bank.to(device)
        for start in range(0, refs.shape[0], rows):
            stop = min(start + rows, refs.shape[0])
            s = refs[start:stop].to(device) @ bank_d.T
            out[start:stop] = (s > threshold).to(torch.int8).cpu()
    _mark_self(out, self_idx)


def _topk_labels_faiss(bank, refs, self_idx, out, k, device) -> None:
    """Top-k through FAISS exact inner-product search (``IndexFlatIP``, a GPU index on CUDA
    when FAISS has GPUs); ties at the k-th similarity are broken as FAISS breaks them."""
    extra = 0 if self_idx is None else 1
    index = _faiss_index(bank, device)
    if index is None:  # CUDA torch but CPU-only FAISS: the torch path on the GPU
        _rank_labels_torch(bank, refs, self_idx, out, _chunk_rows(None, refs.shape[0], bank.shape[0]), device, k)
        return
    _, nn_idx = index.search(refs.numpy(), k + extra)
    nn_idx = torch.from_numpy(nn_idx)
    keep = torch.ones_like(nn_idx, dtype=torch.bool)
    if self_idx is not None:
        keep = nn_idx != torch.from_numpy(self_idx)[:, None]
        keep &= keep.cumsum(1) <= k  # drop self if found, else the (k+1)-th
    out.zero_()
    rows_i = torch.arange(refs.shape[0])[:, None].expand_as(nn_idx)
    out[rows_i[keep], nn_idx[keep]] = 1
    _mark_self(out, self_idx)


def _faiss_index(bank: Tensor, device: torch.device):
    """An exact inner-product FAISS index over ``bank``: on GPU when asked and available.

    Returns None when a CUDA device was asked for but FAISS is missing or a CPU build, so
    that the caller can use torch on the GPU instead of a slower CPU search.
    """
    try:
        import faiss
    except ImportError:
        if device.type == "cuda":
            return None  # the torch path on the GPU gives the same labels
        raise ImportError(
            "the FAISS top-k search needs FAISS: pip install 'exface[faiss]' (CPU) or 'exface[gpu]'; "
            "label_identities' CPU paths do not need it"
        ) from None
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank.numpy())
    if device.type == "cuda":
        if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
            res = faiss.StandardGpuResources()
            gpu_index = faiss.index_cpu_to_gpu(res, device.index or 0, index)
            gpu_index._exface_resources = res  # keep the GPU resources alive with the index
            return gpu_index
        return None
    return index


def _mark_self(out: Tensor, self_idx: np.ndarray | None) -> None:
    if self_idx is None:
        return
    has = torch.from_numpy(np.flatnonzero(self_idx >= 0))
    out[has, torch.from_numpy(self_idx)[has]] = -1


def _balance(out: Tensor, seed: int) -> None:
    """Subsample the larger class of every row to the smaller one's size (dropped -> -1)."""
    rng = np.random.default_rng(seed)
    o = out.numpy()
    for r in range(o.shape[0]):
        row = o[r]
        pos = np.flatnonzero(row == 1)
        neg = np.flatnonzero(row == 0)
        big, small = (pos, neg) if len(pos) > len(neg) else (neg, pos)
        surplus = len(big) - len(small)
        if surplus > 0:
            row[rng.choice(big, surplus, replace=False)] = -1


# ------------------------------------------------------------------------ reference


def numpy_median_labels(
    bank: np.ndarray, references: np.ndarray, self_indices: np.ndarray | None = None
) -> np.ndarray:
    """The per-reference numpy loop of ExFaceGAN's labelling (the speed/exactness baseline).

    For each reference: similarities to every bank embedding (one GEMV), ``np.median``,
    ``sims > median``; the reference's own latent, if given, is deleted first (-1).
    """
    bank = np.asarray(bank, dtype=np.float32)
    references = np.asarray(references, dtype=np.float32)
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    references = references / np.linalg.norm(references, axis=1, keepdims=True)
    out = np.empty((len(references), len(bank)), dtype=np.int8)
    for r, ref in enumerate(references):
        sims = bank @ ref
        if self_indices is not None and self_indices[r] >= 0:
            keep = np.ones(len(bank), dtype=bool)
            keep[self_indices[r]] = False
            med = np.median(sims[keep])
            out[r] = sims > med
            out[r, self_indices[r]] = -1
        else:
            med = np.median(sims)
            out[r] = sims > med
    return out
