"""Speed and accuracy of fitting R identity boundaries: one batched torch SVM vs a LinearSVC loop.

Two workloads, both with R = 500 references taken from the bank itself (leave-one-out
labels from the ExFaceGAN median rule, :func:`exface.exfacegan.labeling.label_identities`):

- ``dcgan``: the offline default models. N latents z (d = 100) of the DCGAN-DigiFace
  generator, their 64x64 images resized to 150x150 (no face alignment) and embedded with
  face-api's ResNet-34 (128-D). Real identity labels, but the embedding pass dominates
  the run time on a CPU.
- ``synthetic``: N standard-normal latents of d = 512 (the size of StyleGAN's w), with
  "identity embeddings" from a fixed random two-layer tanh network (128-D), so labels
  are a nonlinear but smooth function of the latent, like a real generator + FR model.

Both learners see the same latents, labels and the same seeded 70/30 latent split.
Times include everything each learner's ``fit`` does (the torch one: statistics pass,
ridge start, L-BFGS, validation metrics, Lightning Trainer). When the LinearSVC loop
would take longer than ``--svc-budget`` seconds it runs on the first references only
and the total is extrapolated linearly (printed as such); accuracies are then compared
on those same references. LinearSVC is single-threaded: a loop spread over both cores
would take about half the printed time.

By default both learners run on one CPU thread (``--threads``): liblinear is
single-threaded, so this compares per core, and on a shared machine multi-threaded
torch runs stall on oversubscribed cores (measured 2-4x slower than one thread here).

Run: ``.venv/bin/python benchmarks/boundary_speed.py`` (both workloads; ``--workload
synthetic`` or ``dcgan`` for one).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from exface.boundaries import LinearSVCBoundary, TorchLinearSVM
from exface.exfacegan.labeling import label_identities


def synthetic_bank(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w1 = torch.randn(dim, 512, generator=g) * (3.0 / dim**0.5)
    w2 = torch.randn(512, 128, generator=g) / 512**0.5
    return x, F.normalize(torch.tanh(x @ w1) @ w2, dim=1)


def dcgan_bank(n: int, seed: int, batch: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    from exface.embedders import FaceApiResNet34
    from exface.generators import DCGANDigiFace

    gen = DCGANDigiFace().eval()
    emb_net = FaceApiResNet34().eval()
    z = gen.sample_z(n, seed=seed)
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            img = gen.synthesize(z[i : i + batch])
            img = F.interpolate(img, size=emb_net.input_size, mode="bilinear", align_corners=False)
            out.append(emb_net(img))
    return z, torch.cat(out)


def run(name: str, x: torch.Tensor, emb: torch.Tensor, refs: int, svc_budget: float, seed: int) -> None:
    n, d = x.shape
    t = time.perf_counter()
    y = label_identities(emb, emb[:refs], self_indices=torch.arange(refs), use_gpu=False)
    t_lab = time.perf_counter() - t
    print(f"\n[{name}] N = {n} latents, d = {d}, R = {refs} references "
          f"(labels: median rule, leave-one-out, {t_lab:.2f} s)")

    # warm-up both paths on a tiny problem (imports, thread pools, first-call costs)
    TorchLinearSVM(seed=seed).fit(x[:400], y[:4, :400], "z")
    LinearSVCBoundary(seed=seed).fit(x[:400], y[:2, :400], "z")

    t = time.perf_counter()
    tb = TorchLinearSVM(seed=seed).fit(x, y, "z")
    t_torch = time.perf_counter() - t

    probe = min(10, refs)
    t = time.perf_counter()
    sb = LinearSVCBoundary(seed=seed).fit(x, y[:probe], "z")
    per_fit = (time.perf_counter() - t) / probe
    k = refs if per_fit * refs <= svc_budget else max(probe, int(svc_budget / per_fit))
    if k > probe:
        t = time.perf_counter()
        sb = LinearSVCBoundary(seed=seed).fit(x, y[:k], "z")
        per_fit = (time.perf_counter() - t) / k
    t_svc = per_fit * refs
    how = "all references" if k == refs else f"timed on {k} references, extrapolated linearly to {refs}"

    ba_t, ba_s = tb.val_balanced_accuracy[:k], sb.val_balanced_accuracy
    print(f"torch BatchedLinearSVM, all {refs} at once (1 Lightning fit): {t_torch:8.2f} s")
    print(f"sklearn LinearSVC loop:                                {t_svc:8.2f} s  ({how})")
    print(f"speed ratio: {t_svc / t_torch:.0f}x")
    print(f"mean val balanced accuracy on the same {k} references: torch {ba_t.mean():.4f}, "
          f"LinearSVC {ba_s.mean():.4f} (difference {100 * (ba_t.mean() - ba_s.mean()):+.2f} points; "
          f"largest per-reference |difference| {100 * (ba_t - ba_s).abs().max():.2f})")
    print(f"mean val AUC: torch {tb.val_auc[:k].mean():.4f}, LinearSVC {sb.val_auc.mean():.4f}; "
          f"torch over all {refs}: balanced accuracy {tb.val_balanced_accuracy.mean():.4f}, "
          f"AUC {tb.val_auc.mean():.4f}; mean cosine between normals "
          f"{(tb.normals[:k] * sb.normals).sum(1).mean():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("both", "synthetic", "dcgan"), default="both")
    ap.add_argument("--refs", type=int, default=500)
    ap.add_argument("--n-synthetic", type=int, default=10000)
    ap.add_argument("--dim-synthetic", type=int, default=512)
    ap.add_argument("--n-dcgan", type=int, default=5000)
    ap.add_argument("--svc-budget", type=float, default=45.0,
                    help="seconds the LinearSVC loop may run before it is subsampled and extrapolated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (LinearSVC is single-threaded)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch threads = {torch.get_num_threads()}, CPU count = {os.cpu_count()}, "
          f"1-min load average at start = {load:.2f}")

    if args.workload in ("both", "synthetic"):
        x, emb = synthetic_bank(args.n_synthetic, args.dim_synthetic, args.seed)
        run(f"synthetic d={args.dim_synthetic}", x, emb, args.refs, args.svc_budget, args.seed)
    if args.workload in ("both", "dcgan"):
        try:
            t = time.perf_counter()
            x, emb = dcgan_bank(args.n_dcgan, args.seed)
            print(f"\n(DCGAN-DigiFace images + face-api embeddings for {args.n_dcgan} latents: "
                  f"{time.perf_counter() - t:.0f} s)")
        except Exception as err:  # models not installed / not fetchable offline
            print(f"\n[dcgan] skipped: the default models are not available ({type(err).__name__}: {err})")
        else:
            run("DCGAN-DigiFace z + face-api", x, emb, args.refs, args.svc_budget, args.seed)


if __name__ == "__main__":
    main()
