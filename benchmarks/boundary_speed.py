"""Speed and accuracy of fitting R identity boundaries: exface ridge and batched SVM vs sklearn.

Workloads, both with R = 500 references taken from the bank itself (leave-one-out labels
from the ExFaceGAN median rule, :func:`exface.exfacegan.labeling.label_identities`):

- ``synthetic`` (default): N = 10000 standard-normal latents of d = 512 (StyleGAN's w
  size), "identity embeddings" from a fixed random two-layer tanh network (128-D).
- ``dcgan``: the offline default models: N latents z (d = 100) of DCGAN-DigiFace, their
  images embedded with face-api's ResNet-34 (the embedding pass dominates on a CPU).

Sides, alternated in one process, ``--repeats`` times (medians of process and wall time):

- ``exface ridge``: :class:`RidgeBoundary`, exact closed-form ridge for all R at once.
- ``sklearn Ridge, one call``: multi-output ``Ridge(alpha)`` on +-1 targets (0 for ignored
  latents), the strongest one-liner a user would write; the time floor.
- ``exface SVM``: :class:`TorchLinearSVM` (the LinearSVC objective, all R at once).
- ``LinearSVC loop``: :class:`LinearSVCBoundary` (``dual=False``, ExFaceGAN's learner),
  timed on the first ``--svc-refs`` references and extrapolated linearly to R.

All learners see the same latents, labels and seeded 70/30 split; accuracies are mean
validation balanced accuracy on the references the LinearSVC loop fitted.

Run: ``python benchmarks/boundary_speed.py`` (``--workload both`` adds DCGAN).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import alternate, machine_line, table  # noqa: E402

from exface.boundaries import LinearSVCBoundary, RidgeBoundary, TorchLinearSVM  # noqa: E402
from exface.boundaries.base import latent_split  # noqa: E402
from exface.boundaries.metrics import balanced_accuracy  # noqa: E402
from exface.exfacegan.labeling import label_identities  # noqa: E402


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


def sklearn_ridge_one_call(x: torch.Tensor, y: torch.Tensor, alpha: float, seed: int) -> torch.Tensor:
    """Multi-output sklearn Ridge in one call; returns validation balanced accuracy [R]."""
    from sklearn.linear_model import Ridge

    train, val = latent_split(x.shape[0], 0.3, seed)
    s = ((y == 1).float() - (y == 0).float())[:, train].T.numpy()
    model = Ridge(alpha=alpha).fit(x[train].numpy(), s)
    scores = torch.from_numpy(model.predict(x[val].numpy()).T.astype(np.float32))
    return balanced_accuracy(scores, y[:, val])


def run(name: str, x: torch.Tensor, emb: torch.Tensor, refs: int, svc_refs: int, repeats: int, seed: int,
        alpha: float) -> None:
    n, d = x.shape
    y = label_identities(emb, emb[:refs], self_indices=torch.arange(refs), use_gpu=False)
    k = min(svc_refs, refs)
    print(f"\n[{name}] N = {n} latents, d = {d}, R = {refs} references (median rule, leave-one-out); "
          f"LinearSVC loop timed on {k} references x {refs / k:.0f}")
    # warm-up every path on a tiny problem (imports, thread pools, first-call costs)
    TorchLinearSVM(seed=seed).fit(x[:400], y[:4, :400], "z")
    LinearSVCBoundary(seed=seed).fit(x[:400], y[:2, :400], "z")
    RidgeBoundary(seed=seed).fit(x[:400], y[:4, :400], "z")
    sides = {
        "exface ridge (RidgeBoundary)": lambda: RidgeBoundary(alpha=alpha, seed=seed).fit(x, y, "z"),
        "sklearn Ridge, one call": lambda: sklearn_ridge_one_call(x, y, alpha, seed),
        "exface SVM (TorchLinearSVM)": lambda: TorchLinearSVM(seed=seed).fit(x, y, "z"),
        f"LinearSVC loop (x{refs / k:.0f} extrapolated)": lambda: LinearSVCBoundary(seed=seed).fit(x, y[:k], "z"),
    }
    timings = alternate(sides, repeats=repeats, warmup=False)
    svc_name = list(sides)[-1]
    for attr in ("process", "wall"):  # the loop's time for all R
        setattr(timings[svc_name], attr, [v * refs / k for v in getattr(timings[svc_name], attr)])
    print(f"\n[{name}] medians over {repeats} alternated repetitions; {machine_line()}")
    table(timings, bound="exface ridge (RidgeBoundary)")
    ridge_b = timings["exface ridge (RidgeBoundary)"].result.val_balanced_accuracy
    svm_b = timings["exface SVM (TorchLinearSVM)"].result.val_balanced_accuracy
    sk_b = timings["sklearn Ridge, one call"].result
    svc_b = timings[svc_name].result.val_balanced_accuracy
    print(f"  mean val balanced accuracy on the {k} LinearSVC references: LinearSVC {svc_b.mean():.4f}, "
          f"exface SVM {svm_b[:k].mean():.4f} ({100 * (svm_b[:k].mean() - svc_b.mean()):+.2f} points), "
          f"exface ridge {ridge_b[:k].mean():.4f}, sklearn ridge {sk_b[:k].mean():.4f}")
    print(f"  over all {refs}: exface SVM {svm_b.mean():.4f}, exface ridge {ridge_b.mean():.4f}, "
          f"sklearn ridge {sk_b.mean():.4f}")
    ratio = timings["exface SVM (TorchLinearSVM)"].process_median / timings["exface ridge (RidgeBoundary)"].process_median
    print(f"  SVM / ridge process time: {ratio:.2f}x (target <= 3x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("both", "synthetic", "dcgan"), default="synthetic")
    ap.add_argument("--refs", type=int, default=500)
    ap.add_argument("--n-synthetic", type=int, default=10000)
    ap.add_argument("--dim-synthetic", type=int, default=512)
    ap.add_argument("--n-dcgan", type=int, default=5000)
    ap.add_argument("--svc-refs", type=int, default=10, help="references the LinearSVC loop is timed on")
    ap.add_argument("--alpha", type=float, default=1.0, help="ridge penalty (both ridge sides)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (LinearSVC is single-threaded)")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        print(machine_line(args.threads))
        if args.workload in ("both", "synthetic"):
            x, emb = synthetic_bank(args.n_synthetic, args.dim_synthetic, args.seed)
            run(f"synthetic d={args.dim_synthetic}", x, emb, args.refs, args.svc_refs, args.repeats, args.seed, args.alpha)
        if args.workload in ("both", "dcgan"):
            try:
                t = time.perf_counter()
                x, emb = dcgan_bank(args.n_dcgan, args.seed)
                print(f"\n(DCGAN-DigiFace images + face-api embeddings for {args.n_dcgan} latents: "
                      f"{time.perf_counter() - t:.0f} s)")
            except Exception as err:  # models not installed / not fetchable offline
                print(f"\n[dcgan] skipped: the default models are not available ({type(err).__name__}: {err})")
            else:
                run("DCGAN-DigiFace z + face-api", x, emb, args.refs, args.svc_refs, args.repeats, args.seed, args.alpha)


if __name__ == "__main__":
    main()
