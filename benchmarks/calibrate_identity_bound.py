"""An identity bound for one network that means what another network's bound means, on one generator.

The age environment bounds identity by face-api ResNet-34 cosine >= 0.95 to the start face. An
independent judge (HSEFaceRes) needs its own bound: a cosine on another scale. This script
matches them by false-match rate: it embeds ``--n`` random generator faces with both networks,
measures the share of *different* random faces at or above ``--bound`` by the reference network,
and prints the other network's cosine with the same share above it (the recipe's
``evaluator_identity_bound``). Seeds from ``--seed`` (not used by training or the report).

    .venv/bin/python benchmarks/calibrate_identity_bound.py --n 600 --bound 0.95
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

BOX = (0.084, 0.199, 0.921, 1.036)  # the recipes' face box (face-api's dlib chip on DCGAN frames)


@torch.no_grad()
def embed_random_faces(n: int, seed: int, batch: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    from exface.alignment import FixedCropAligner
    from exface.embedders import FaceApiResNet34, HSEFaceRes
    from exface.generators import DCGANDigiFace

    gan, ref, other = DCGANDigiFace().eval(), FaceApiResNet34().eval(), HSEFaceRes().eval()
    crop_ref = FixedCropAligner(box=BOX, output_size=tuple(ref.input_size))
    crop_other = FixedCropAligner(box=BOX, output_size=tuple(other.input_size))
    a, b = [], []
    for s in range(0, n, batch):
        x = gan.synthesize(gan.sample_z(min(batch, n - s), seed=seed + s), space="z")
        a.append(F.normalize(ref(crop_ref(x)), dim=1))
        b.append(F.normalize(other(crop_other(x)), dim=1))
    return torch.cat(a), torch.cat(b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--bound", type=float, default=0.95, help="the reference network's (face-api's) bound")
    ap.add_argument("--seed", type=int, default=777000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ea, eb = embed_random_faces(args.n, args.seed)
    iu = torch.triu_indices(len(ea), len(ea), 1)
    ca, cb = (ea @ ea.T)[iu[0], iu[1]], (eb @ eb.T)[iu[0], iu[1]]
    fmr = float((ca >= args.bound).float().mean())
    thr = float(torch.quantile(cb, 1 - fmr)) if fmr > 0 else float(cb.max())
    print(f"{args.n} random DCGAN faces, {len(ca)} pairs of different faces")
    print(f"FaceApiResNet34: mean cosine {ca.mean():.3f}; share >= {args.bound}: {100 * fmr:.3f} %")
    print(f"HSEFaceRes: mean cosine {cb.mean():.3f}; the cosine with the same share above it: {thr:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
