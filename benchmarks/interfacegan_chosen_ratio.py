"""Which ``chosen_num_or_ratio`` gives the best InterFaceGAN boundaries on a scored bank?

For each ratio, fits the boundaries of the given attributes with
:class:`~exface.interfacegan.learner.InterFaceGANBoundary` and prints, per attribute, the
validation accuracy (InterFaceGAN's own, on that ratio's top/bottom sets, so not comparable
across ratios), the remaining-sample accuracy, and a criterion that is comparable: the
Spearman rank correlation between the signed distance and the score over every bank latent
the fit did not train on.

    python benchmarks/interfacegan_chosen_ratio.py --bank runs/interfacegan_dcgan/bank

(the bank scored by ``exface interfacegan-fit --config recipes/interfacegan_dcgan_faceapi_fit.yaml``).
"""

from __future__ import annotations

import argparse

import torch
from scipy.stats import spearmanr

from exface.exfacegan.latent_bank import LatentBank
from exface.interfacegan.fit import bank_latents
from exface.interfacegan.learner import InterFaceGANBoundary, score_split
from exface.interfacegan.scores import BankScores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", default="runs/interfacegan_dcgan/bank")
    ap.add_argument("--space", default="z")
    ap.add_argument("--attributes", nargs="+", default=["age", "gender_male", "smile", "yaw"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.02, 0.05, 0.1, 0.2, 0.5])
    args = ap.parse_args()
    torch.set_num_threads(1)
    bank = LatentBank(args.bank)
    scores = BankScores(bank).load(args.attributes)
    x = bank_latents(bank, args.space, 1).reshape(bank.num_latents, -1)
    print(f"bank {args.bank}: {bank.num_latents} latents, space {args.space}, dim {x.shape[1]}")
    for ratio in args.ratios:
        learner = InterFaceGANBoundary(chosen_num_or_ratio=ratio)
        b = learner.fit_scores(x, scores, args.space, args.attributes)
        cells = []
        for r, name in enumerate(args.attributes):
            sp = score_split(scores[name], ratio, 0.7, None, seed=learner.seed + r)
            held = torch.ones(len(x), dtype=torch.bool)
            held[torch.cat([sp.train_pos, sp.train_neg])] = False
            held &= torch.isfinite(scores[name])
            rho = spearmanr((x[held] @ b.normals[r]).numpy(), scores[name][held].numpy()).correlation
            cells.append(f"{name}: val {b.meta['val_accuracy'][r]:.3f} rem {b.meta['remaining_accuracy'][r]:.3f} "
                         f"rho {rho:.3f}")
        print(f"ratio {ratio:<5} per side {b.meta['chosen_num'][0]:>5} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
