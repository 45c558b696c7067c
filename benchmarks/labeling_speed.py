"""Speed of ExFaceGAN identity labelling against the similarity GEMM it cannot beat.

R references x N bank embeddings (default R = N = 20000, 128-D, random unit vectors; the
references are the bank, as in ExFaceGAN). Sides, alternated in one process, each
repeated ``--repeats`` times (medians of process and wall time):

- ``GEMM alone``: the ``[R, N]`` similarity matrix in cache-sized tiles and discarded
  (exface's own tiling) and as plain 256-row ``torch.mm`` chunks. The faster is the bound:
  no labelling can be cheaper than computing the similarities once.
- ``exface median / top-k / threshold``: :func:`label_identities` (CPU path: sampled
  bracket + fused per-tile pass for median and top-k, fused compare for threshold).
- ``numpy chunked median``: the strongest plain baseline for the median rule: BLAS GEMM in
  256-row chunks + ``np.partition`` + compare (what a competent user writes).
- ``FAISS top-k``: ``IndexFlatIP.search`` (exact) + scatter into the dense labels.
- ``FAISS threshold``: ``IndexFlatIP.range_search`` + scatter.
- ``--loop``: ExFaceGAN's per-reference numpy loop (one GEMV + ``np.median`` each).

Labels are compared between exface and each baseline (differences can only come from
float32 rounding of similarities within an ulp of a cut, or FAISS's tie order).

All sides run on ``--threads`` threads (default 1: torch, BLAS via threadpoolctl, FAISS's
OpenMP, exface's workers).

``--first_call``: instead, each exface rule once in a fresh process (after a small warm-up
call), beside the GEMM in the same process: what one labelling stage costs. Alternated
repetitions in one process measure the label matrix's allocation in whatever state the
sides before left the memory in (a 400 MB matrix freed just before is cheap to map again).

Run: ``python benchmarks/labeling_speed.py`` (``--n 5000`` for a quick look).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import alternate, machine_line, table  # noqa: E402

from exface.exfacegan.labeling import _gemm_tiles, label_identities, numpy_median_labels  # noqa: E402


def numpy_chunked_median(bank: np.ndarray, refs: np.ndarray, rows: int = 256) -> np.ndarray:
    n = len(bank)
    out = np.empty((len(refs), n), np.int8)
    for s in range(0, len(refs), rows):
        sims = refs[s : s + rows] @ bank.T
        part = np.partition(sims, [(n - 1) // 2, n // 2], axis=1)
        med = (part[:, (n - 1) // 2] + part[:, n // 2]) / np.float32(2)
        np.greater(sims, med[:, None], out=out[s : s + rows].view(np.bool_))
    return out


def faiss_topk(bank: np.ndarray, refs: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    _, idx = index.search(refs, k)
    out = np.zeros((len(refs), len(bank)), np.int8)
    np.put_along_axis(out, idx, 1, axis=1)
    return out


def faiss_threshold(bank: np.ndarray, refs: np.ndarray, thr: float) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    lims, _, idx = index.range_search(refs, thr)  # inner product > thr
    out = np.zeros((len(refs), len(bank)), np.int8)
    rows = np.repeat(np.arange(len(refs)), np.diff(lims.astype(np.int64)))
    out[rows, idx] = 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="bank size N (= number of references R)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=200, help="positives per reference for the top-k rule")
    ap.add_argument("--threshold", type=float, default=0.2, help="cosine cut for the threshold rule")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--loop", action="store_true", help="also time ExFaceGAN's per-reference numpy loop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first_call", action="store_true", help="each rule's first call, in a fresh process each")
    ap.add_argument("--rule", default=None, help=argparse.SUPPRESS)  # the child of --first_call
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    if args.first_call and args.rule is None:
        import subprocess

        for rule in ("median", "topk", "threshold"):
            for _ in range(args.repeats):
                subprocess.run([sys.executable, __file__, *sys.argv[1:], "--rule", rule], check=True)
        return

    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        faiss = None
    with threadpool_limits(limits=args.threads):
        if args.rule is not None:
            first_call(args)
        else:
            run(args, faiss is not None)


def first_call(args) -> None:
    import time

    rng = np.random.default_rng(args.seed)
    bank = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    kw = {"rule": args.rule, "use_gpu": False, "num_threads": args.threads,
          **{"topk": {"k": args.k}, "threshold": {"threshold": args.threshold}}.get(args.rule, {})}
    warm = {**kw, "k": 10} if args.rule == "topk" else kw  # numba cache load, thread pool
    label_identities(bank[:3000], bank[:300], **warm)
    bt = torch.from_numpy(bank)
    bank_t = bt.T.contiguous()
    t = time.process_time()
    for _ in _gemm_tiles(bt, bank_t, 256):
        pass
    gemm = time.process_time() - t
    t = time.process_time()
    label_identities(bank, bank, **kw)
    took = time.process_time() - t
    print(f"first call in a fresh process, {args.rule:9s}: {took:.3f} s, GEMM alone {gemm:.3f} s: {took / gemm:.2f}x "
          f"(process time; {machine_line(args.threads)})")


def run(args, have_faiss: bool) -> None:
    rng = np.random.default_rng(args.seed)
    bank = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    refs = bank
    bt = torch.from_numpy(bank)
    bank_t = bt.T.contiguous()
    flop = 2.0 * args.n * args.n * args.dim
    print(f"R = N = {args.n}, dim = {args.dim}, k = {args.k}, threshold = {args.threshold}; "
          f"{machine_line(args.threads)}; GEMM = {flop:.3g} FLOP")

    def gemm_tiles():
        for _ in _gemm_tiles(bt, bank_t, 256):
            pass

    def gemm_rows():
        buf = torch.empty(256, args.n)
        for s in range(0, args.n, 256):
            c = min(256, args.n - s)
            torch.mm(bt[s : s + c], bt.T, out=buf[:c])

    t = args.threads

    def dropped(fn):  # time the side, keep no 400 MB result (memory on a shared machine)
        return lambda: (fn(), None)[1]

    sides = {
        "GEMM alone (tiles)": gemm_tiles,
        "GEMM alone (256-row mm)": gemm_rows,
        "exface median": lambda: label_identities(bank, refs, use_gpu=False, num_threads=t).numpy(),
        "numpy chunked median": lambda: numpy_chunked_median(bank, refs),
        "exface top-k": lambda: label_identities(bank, refs, rule="topk", k=args.k, use_gpu=False, num_threads=t).numpy(),
        "exface threshold": lambda: label_identities(bank, refs, rule="threshold", threshold=args.threshold,
                                                     use_gpu=False, num_threads=t).numpy(),
    }
    if have_faiss:
        sides["FAISS top-k (IndexFlatIP)"] = lambda: faiss_topk(bank, refs, args.k)
        sides["FAISS threshold (range_search)"] = lambda: faiss_threshold(bank, refs, args.threshold)
    if args.loop:
        sides["ExFaceGAN numpy loop median"] = lambda: numpy_median_labels(bank, refs)
    # warm-up on a small problem (numba cache load, thread pools, BLAS)
    label_identities(bank[:3000], refs[:300], use_gpu=False)
    label_identities(bank[:3000], refs[:300], rule="topk", k=10, use_gpu=False)
    timings = alternate({k: dropped(v) for k, v in sides.items()}, repeats=args.repeats, warmup=False)
    bound = min(("GEMM alone (tiles)", "GEMM alone (256-row mm)"), key=lambda n: timings[n].process_median)
    print(f"\nmedians over {args.repeats} alternated repetitions; bound = {bound} "
          f"({flop / timings[bound].process_median / 1e9:.1f} GFLOP/s of process time); {machine_line(args.threads)}")
    table(timings, bound=bound)

    # exactness, one pair of label matrices at a time
    med = sides["exface median"]()
    for name in ("numpy chunked median", "ExFaceGAN numpy loop median"):
        if name in sides:
            print(f"labels differing, exface median vs {name}: {int((sides[name]() != med).sum())} of {med.size}")
    print(f"positives per reference: median rule {med.sum(1).mean():.1f}")
    del med
    if have_faiss:
        top = sides["exface top-k"]()
        print(f"labels differing, exface top-k vs FAISS: {int((sides['FAISS top-k (IndexFlatIP)']() != top).sum())} "
              f"(positives per reference {top.sum(1).mean():.1f})")


if __name__ == "__main__":
    main()
