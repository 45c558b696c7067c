"""ExFaceGAN identity labels: which bank latents look like each reference identity.

ExFaceGAN (Boutros et al., 2023) embeds the images of a bank of N latents with a face
recognition (FR) model, and for every reference identity r takes the cosine similarity
of each bank embedding to the reference embedding. Latents above the per-reference
median similarity are "similar" (label 1), the others "dissimilar" (label 0); a linear
SVM per reference then separates the two in latent space, and its normal is that
identity's boundary. Their code loops over references in numpy (one GEMV and one median
per reference); here all references are labelled at once, in reference chunks:

- ``rule="median"``: one BLAS GEMM per chunk of references (exact float32 inner products
  of L2-normalized vectors; on CPU ``torch.mm`` is ~12x faster than
  ``faiss.pairwise_distances`` for this all-pairs case, so it is used), then an exact
  per-row selection (``numpy.partition`` on worker threads on CPU, ``torch.kthvalue`` on
  CUDA). The median follows ``numpy.median`` (mean of the two middle values for an even
  count) and labels are ``similarity > median``, so results equal the numpy loop's.
- ``rule="topk"``: FAISS exact inner-product search (``IndexFlatIP``; a GPU index when
  FAISS has GPUs): the ``k`` most similar latents are 1, the rest 0.
- ``rule="threshold"``: ``similarity > threshold`` is 1, the rest 0.

Memory is bounded by the output (``int8 [R, N]``: 10 GB for R = N = 100k) plus two
``float32 [chunk, N]`` buffers (~256 MB by default).

Sign convention: exface's label 1 is *similar*. ExFaceGAN's own code stores label 1 for
*dissimilar* (``cos_sims < threshold``), so its saved boundaries point away from the
identity; exface boundaries point towards it. ExFaceGAN's threshold is
``sorted(sims)[n // 2]`` with ``>=`` for similar, which differs from the median rule
here only for the middle element of an odd-sized row.
"""

from __future__ import annotations

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
        chunk_size: references per chunk; default keeps each ``float32 [chunk, N]``
            buffer at 128 MiB.
        num_threads: CPU worker threads for the median selection (default: torch's).
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
    rows = _chunk_rows(chunk_size, n_refs, n_bank)
    out = torch.empty(n_refs, n_bank, dtype=torch.int8)

    if rule == "median":
        if device.type == "cuda":
            _median_labels_cuda(bank_t, refs_t, self_idx, out, rows, device)
        else:
            _median_labels_cpu(bank_t, refs_t, self_idx, out, rows, num_threads)
    elif rule == "threshold":
        if threshold is None:
            raise ValueError('rule="threshold" needs threshold=<cosine similarity>, e.g. threshold=0.3')
        _threshold_labels(bank_t, refs_t, self_idx, out, rows, device, float(threshold))
    elif rule == "topk":
        if k is None or not (1 <= int(k) < n_bank - (self_idx is not None)):
            raise ValueError(f'rule="topk" needs 1 <= k < number of bank latents ({n_bank}), got k={k}')
        _topk_labels(bank_t, refs_t, self_idx, out, int(k), device)
    else:
        raise ValueError(f'unknown rule {rule!r}; use "median", "topk" or "threshold"')

    if balance:
        _balance(out, seed)
    return out


# --------------------------------------------------------------------------- median


def _median_labels_cpu(bank, refs, self_idx, out, rows, num_threads) -> None:
    n_bank = bank.shape[0]
    sims = torch.empty(rows, n_bank, dtype=torch.float32)
    scratch = np.empty((rows, n_bank), dtype=np.float32)
    workers = max(1, num_threads or torch.get_num_threads())
    out_np = out.numpy()
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, refs.shape[0], rows):
            stop = min(start + rows, refs.shape[0])
            c = stop - start
            torch.mm(refs[start:stop], bank.T, out=sims[:c])
            s_np = sims[:c].numpy()
            excl = None if self_idx is None else self_idx[start:stop]
            # numpy releases the GIL in copy/partition/compare: row blocks run in parallel
            jobs = [
                (s_np[sl], scratch[sl], out_np[start:stop][sl], None if excl is None else excl[sl])
                for sl in _row_blocks(c, workers * 4)
            ]
            list(pool.map(lambda job: _median_block(n_bank, *job), jobs))


def _median_block(n_bank: int, s: np.ndarray, p: np.ndarray, o: np.ndarray, excl) -> None:
    """Labels ``o = s > median(row)`` for one block of rows; ``p`` is scratch space.

    The selection runs on order-preserving int32 keys of the float32 similarities
    (:func:`_sortable_keys`): numpy partitions int32 ~1.5x faster than float32, and the
    key transform doubles as the copy that partitioning needs anyway.
    """
    mid = n_bank // 2  # see _row_medians for why one partition at N // 2 suffices
    k = p.view(np.int32)
    _sortable_keys(s.view(np.int32), out=k)
    has = None
    if excl is not None:
        has = np.flatnonzero(excl >= 0)
        k[has, excl[has]] = _INF_KEY  # +inf sorts last, outside the valid ranks
    k.partition(mid, axis=1)
    upper = _sortable_keys(k[:, mid].copy()).view(np.float32)
    need_lower = _needs_lower(n_bank, excl, len(k))
    if need_lower.all():
        lower_k = k[:, :mid].max(axis=1)
    else:
        lower_k = k[:, mid].copy()
        for i in np.flatnonzero(need_lower):
            lower_k[i] = k[i, :mid].max()
    lower = _sortable_keys(lower_k).view(np.float32)
    med = _row_medians(n_bank, excl, lower, upper)
    np.greater(s, med[:, None], out=o.view(np.bool_))
    if has is not None and len(has):
        o[has, excl[has]] = -1


_INF_KEY = np.array([np.inf], dtype=np.float32).view(np.int32)[0]


def _sortable_keys(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Map float32 bit patterns (as int32) to int32 keys with the same order, and back.

    Non-negative floats already order like their bit patterns; negative ones order in
    reverse, so their 31 non-sign bits are flipped. The map is its own inverse. (-0.0
    sorts just below +0.0; both are the same value, so medians are unaffected.)
    """
    if out is None:
        out = np.empty_like(bits)
    np.right_shift(bits, 31, out=out)  # 0 or -1
    np.bitwise_and(out, 0x7FFFFFFF, out=out)
    np.bitwise_xor(out, bits, out=out)
    return out


def _row_blocks(n: int, parts: int) -> list[slice]:
    step = max(1, -(-n // parts))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _valid_counts(n_bank: int, excl: np.ndarray | None, c: int) -> np.ndarray:
    n = np.full(c, n_bank, dtype=np.int64)
    if excl is not None:
        n -= (excl >= 0).astype(np.int64)
    return n


def _needs_lower(n_bank: int, excl: np.ndarray | None, c: int) -> np.ndarray:
    n = _valid_counts(n_bank, excl, c)
    # rows whose median uses the element just below rank N // 2
    return (n % 2 == 0) | (n < n_bank)


def _row_medians(n_bank: int, excl, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``numpy.median`` of each row from the two ranks around ``N // 2``.

    With ``n`` valid values sorted (excluded ones sort last as +inf), numpy's median is
    ``x[(n-1)/2]`` for odd n and the float32 mean of ``x[n/2-1]`` and ``x[n/2]`` for even
    n. For n = N the ranks are ``N//2`` (odd) or ``N//2-1, N//2`` (even); for n = N - 1
    they are ``N//2-1`` (N even) or ``N//2-1, N//2`` (N odd). So the partition at
    ``N // 2`` plus the max of the part below it covers every case.
    """
    c = len(upper)
    n = _valid_counts(n_bank, excl, c)
    half = np.float32(2.0)
    mean = (lower + upper) / half  # float32 add then divide, as numpy.mean of two float32
    med = np.where(n % 2 == 0, mean, np.where(n == n_bank, upper, lower))
    return med.astype(np.float32, copy=False)


def _median_labels_cuda(bank, refs, self_idx, out, rows, device) -> None:
    n_bank = bank.shape[0]
    mid = n_bank // 2
    bank_d = bank.to(device)
    for start in range(0, refs.shape[0], rows):
        stop = min(start + rows, refs.shape[0])
        s = refs[start:stop].to(device) @ bank_d.T
        p = s.clone()
        excl = None if self_idx is None else self_idx[start:stop]
        if excl is not None:
            has = torch.from_numpy(np.flatnonzero(excl >= 0)).to(device)
            cols = torch.from_numpy(excl).to(device)[has]
            p[has, cols] = float("inf")
        upper = torch.kthvalue(p, mid + 1, dim=1).values
        lower = torch.kthvalue(p, mid, dim=1).values if mid >= 1 else upper
        med = _row_medians(n_bank, excl, lower.cpu().numpy(), upper.cpu().numpy())
        lab = (s > torch.from_numpy(med).to(device)[:, None]).to(torch.int8)
        if excl is not None:
            lab[has, cols] = -1
        out[start:stop] = lab.cpu()


# ------------------------------------------------------------------ threshold / topk


def _threshold_labels(bank, refs, self_idx, out, rows, device, threshold) -> None:
    bank_d = bank.to(device)
    for start in range(0, refs.shape[0], rows):
        stop = min(start + rows, refs.shape[0])
        s = refs[start:stop].to(device) @ bank_d.T
        out[start:stop] = (s > threshold).to(torch.int8).cpu()
    _mark_self(out, self_idx)


def _topk_labels(bank, refs, self_idx, out, k, device) -> None:
    extra = 0 if self_idx is None else 1
    kk = k + extra
    index = _faiss_index(bank, device)
    if index is not None:
        _, nn_idx = index.search(refs.numpy(), kk)
        nn_idx = torch.from_numpy(nn_idx)
    else:  # CUDA torch but CPU-only FAISS: exact top-k on the GPU in chunks
        bank_d = bank.to(device)
        rows = _chunk_rows(None, refs.shape[0], bank.shape[0])
        parts = []
        for start in range(0, refs.shape[0], rows):
            s = refs[start : start + rows].to(device) @ bank_d.T
            parts.append(s.topk(kk, dim=1).indices.cpu())
        nn_idx = torch.cat(parts)
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

    Returns None when a CUDA device was asked for but FAISS is a CPU build, so that the
    caller can use torch on the GPU instead of a slower CPU search.
    """
    import faiss

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
