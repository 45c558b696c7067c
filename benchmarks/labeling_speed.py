"""Speed of ExFaceGAN identity labelling: exface's chunked GEMM + selection vs the numpy loop.

The baseline is ExFaceGAN's per-reference loop in its vectorized numpy form
(``sims = bank @ ref; med = np.median(sims); labels = sims > med``), which is already
far faster than their literal code (per-pair ``scipy.spatial.distance.cosine`` after
``np.delete``); that literal path is timed on a few references for context.

Both labelings are produced in the same process and compared element by element. Any
disagreement can only come from float32 rounding (BLAS GEMM vs GEMV summation order)
for a similarity within an ulp or so of its row's median; the script prints how many and
how close they were.

Both sides run on ``--threads`` CPU threads (default 1: numpy's BLAS through
threadpoolctl, torch and the selection workers alike), which compares per core and keeps
the numbers stable on a shared machine, where 2-thread BLAS/OpenMP runs stall on
oversubscribed cores.

Run: ``.venv/bin/python benchmarks/labeling_speed.py`` (R = N = 20000, dim 128, random
unit embeddings; ``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from exface.exfacegan.labeling import label_identities, numpy_median_labels


def _literal_exfacegan(bank: np.ndarray, i: int) -> np.ndarray:
    """ExFaceGAN's create_id_svm_data for reference ``i`` (their labels: 1 = dissimilar)."""
    from scipy.spatial.distance import cosine

    probes = np.delete(bank, i, axis=0)
    ref = np.repeat(bank[i][None], len(probes), axis=0)
    sims = np.array([1 - cosine(a, b) for a, b in zip(ref, probes)])
    thr = np.sort(sims)[len(sims) // 2]
    return (sims < thr).astype(int)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="bank size N (= number of references R)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--baseline-refs", type=int, default=0,
                    help="time the numpy loop on only this many references and extrapolate (0 = all)")
    ap.add_argument("--literal-refs", type=int, default=2,
                    help="references for the literal ExFaceGAN path (0 skips it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for both sides")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        _run(args)


def _run(args) -> None:

    rng = np.random.default_rng(args.seed)
    bank = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    refs = bank  # ExFaceGAN: every bank latent is also a reference
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"R = N = {args.n}, dim = {args.dim}, threads = {args.threads} (both sides), device = CPU"
          f"{' (CUDA available, not used)' if torch.cuda.is_available() else ''}, "
          f"1-min load average at start = {load:.2f}")

    label_identities(bank[:256], refs[:64], use_gpu=False)  # warm-up (thread pool, BLAS)
    t = time.perf_counter()
    fast = label_identities(bank, refs, use_gpu=False, num_threads=args.threads).numpy()
    t_fast = time.perf_counter() - t
    print(f"exface label_identities (median rule):        {t_fast:8.3f} s")

    n_base = args.baseline_refs or args.n
    t = time.perf_counter()
    base = numpy_median_labels(bank, refs[:n_base])
    t_base_part = time.perf_counter() - t
    t_base = t_base_part * args.n / n_base
    extrap = "" if n_base == args.n else f"  (timed {n_base} refs: {t_base_part:.3f} s, extrapolated linearly)"
    print(f"numpy per-reference loop (np.median):         {t_base:8.3f} s{extrap}")
    print(f"speed ratio: {t_base / t_fast:.1f}x")

    diff = np.argwhere(fast[:n_base] != base)
    print(f"labels compared on {n_base} x {args.n}: {len(diff)} differ")
    if len(diff):
        b64 = bank.astype(np.float64)
        gaps = []
        for r, j in diff[:1000]:
            sims = b64 @ b64[r]
            gaps.append(abs(sims[j] - np.median(sims)))
        print(f"  largest |similarity - median| among them (float64): {max(gaps):.2e} "
              f"(float32 rounding ties)")

    t = time.perf_counter()
    loo = label_identities(bank, refs, self_indices=np.arange(args.n), use_gpu=False, num_threads=args.threads)
    print(f"exface with leave-one-out (self_indices):    {time.perf_counter() - t:8.3f} s "
          f"(-1 on the diagonal: {bool((loo.diagonal() == -1).all())})")

    if args.literal_refs:
        t = time.perf_counter()
        for i in range(args.literal_refs):
            lit = _literal_exfacegan(bank, i)
            ours = np.delete(loo[i].numpy(), i)
            agree = np.mean((1 - lit) == ours)
        t_lit = (time.perf_counter() - t) / args.literal_refs * args.n
        print(f"ExFaceGAN literal code path (scipy per pair): {t_lit:8.1f} s "
              f"(timed {args.literal_refs} refs, extrapolated; ratio {t_lit / t_fast:.0f}x; "
              f"label agreement with exface leave-one-out {agree:.5f})")


if __name__ == "__main__":
    main()
