"""How far can *any* mapper go? Per-pair latent optimization against the disentanglement losses.

The mapper of :class:`~exface.disentangle.module.DisentangleModule` must find, for an identity
source ``i`` and an attribute source ``a``, a latent whose face has ``i``'s identity and ``a``'s
landmarks. This script skips the mapper and searches that latent directly, per pair: Adam on
the latent itself, started at ``a``'s latent (pose right, identity wrong), minimizing the
module's own generator-side loss (centred identity L1 + ``landmark_weight`` x inner-51
landmark MSE in a 160-px frame), the latent kept on the prior's sphere (norm sqrt(dim)). It
asks whether the latent space holds, near the attribute source, a face that the loss calls
the identity source's and that *other* networks call so too. It is a local search, not a bound
on every mapper (a mapper may land elsewhere in the space), but it needs no generalization: it
fits each pair on its own.

The results are judged like the module's report (``pair_metrics``): by the loss networks and
by the independent ones (HSEFaceRes for identity, dlib's 68 points for landmarks), on the
report's held-out seeds, for each ``--landmark_weights`` value: the trade-off curve between the
identity margin and the landmark margin. Run::

    PYTHONPATH=. .venv/bin/python benchmarks/disentangle_latent_oracle.py --pairs 256 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


#: The DCGAN recipe's identity box (face-api's dlib chip), used at each embedder's input size.
ID_BOX = (0.084, 0.199, 0.921, 1.036)
#: The synthesize recipe's ArcFace-template box, for 112-px ArcFace-crop embedders.
ARCFACE_BOX = (0.023, 0.020, 0.969, 0.965)


def build_module(loss_embedder: str):
    """The DCGAN disentanglement recipe's frozen parts, in a DisentangleModule (mapper untrained, unused)."""
    from exface.alignment import FixedCropAligner
    from exface.alignment.landmarks import DlibLandmarks, FaceApiLandmarks
    from exface.disentangle.encoders import TimmAttributeEncoder
    from exface.disentangle.module import DisentangleModule
    from exface.generators import DCGANDigiFace
    from exface.registry import create_part

    emb = create_part("embedders", loss_embedder)
    m = DisentangleModule(
        DCGANDigiFace(), emb, FixedCropAligner(box=ID_BOX, output_size=tuple(emb.input_size)),
        TimmAttributeEncoder("resnet10t", False, 64), FaceApiLandmarks(box=(0.073, 0.131, 0.896, 0.976), refine=0),
        space="z", identity_center=512, eval_landmarks=DlibLandmarks(points=68, detect=True), eval_landmark_size=256,
        pixel_weight=0.0)
    m.eval()
    m.fit_identity_mean()
    return m


def search(m, id_img: torch.Tensor, attr_img: torch.Tensor, start: torch.Tensor, landmark_weight: float, steps: int,
           lr: float) -> torch.Tensor:
    """Latents ``[N, dim]`` minimizing the module's identity + landmark loss per pair, from ``start``."""
    from exface.disentangle.losses import identity_loss, landmark_loss

    with torch.no_grad():
        e_i = m.embed(id_img)
        l_a = m.landmarks_160(attr_img)
    radius = start.shape[1] ** 0.5
    z = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    n = len(z)
    for _ in range(steps):
        out = m.render(z)
        # sums over pairs (x n) so that each pair's gradient is its own loss's, whatever the batch
        loss = n * (identity_loss(m.embed(out), e_i) + landmark_weight * landmark_loss(m.landmarks_160(out), l_a))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.mul_(radius / z.norm(dim=1, keepdim=True))
    return z.detach()


def main(argv: list[str] | None = None) -> int:
    from exface.disentangle.datamodule import held_out_seeds
    from exface.disentangle.evaluation import pair_metrics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--landmark_weights", type=float, nargs="+", default=[0.0, 0.001, 0.01, 0.1])
    ap.add_argument("--loss_embedder", default="FaceApiResNet34",
                    help="the identity network of the loss (its default evaluator judges beside it)")
    ap.add_argument("--mobileface_judge", action="store_true",
                    help="also judge identity by HumanMobileFace (a third network, 112-px ArcFace box)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "disentangle_latent_oracle.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    m = build_module(args.loss_embedder)
    ids, lmks = m.judges()
    if args.mobileface_judge:
        from exface.alignment import FixedCropAligner
        from exface.disentangle.evaluation import IdentityJudge
        from exface.embedders import HumanMobileFace

        mf, crop = HumanMobileFace().eval(), FixedCropAligner(box=ARCFACE_BOX, output_size=(112, 112))
        ids.append(IdentityJudge("HumanMobileFace", lambda x: mf(crop(x)), True))
    id_s, attr_s = held_out_seeds(args.pairs)
    rows: dict[str, dict[str, list[torch.Tensor]]] = {}
    for b in range(0, args.pairs, args.batch):
        with torch.no_grad():
            zi, za = m.latents(id_s[b:b + args.batch]), m.latents(attr_s[b:b + args.batch])
            id_img, attr_img = m.render(zi), m.render(za)
        for w in args.landmark_weights:
            z = search(m, id_img, attr_img, za, w, args.steps, args.lr)
            with torch.no_grad():
                res = pair_metrics(m.render(z), id_img, attr_img, ids, lmks)
            for k, v in res.items():
                rows.setdefault(f"{w:g}", {}).setdefault(k, []).append(v)
        print(f"[{time.time() - t0:.0f} s] {min(args.pairs, b + args.batch)}/{args.pairs} pairs", flush=True)

    keys = [f"{j.name}/id_margin" for j in ids] + [f"{j.name}/lmk_margin" for j in lmks]
    both = f"{ids[1].name}+{lmks[-1].name}/both_margins_positive" if len(ids) > 1 else \
        f"{ids[0].name}+{lmks[-1].name}/both_margins_positive"
    summary = {}
    print(f"\nper-pair latent search from the attribute source's latent, {args.steps} Adam steps (lr {args.lr}), "
          f"{args.pairs} held-out pairs; margins mean ± std (landmark margins: % of the side)")
    print(f"{'source':<26}" + "".join(f"{k:>28}" for k in keys) + f"{'both > 0 (indep.)':>20}")
    first = next(iter(rows.values()))
    for label, method, table in [("corner: attribute latent", "attr_latent", first),
                                 ("corner: identity latent", "id_latent", first)] + \
            [(f"search, landmark w {w}", "mapper", t) for w, t in rows.items()]:
        cat = {k: torch.cat(v) for k, v in table.items()}
        s = {k: (float(cat[f"{method}/{k}"].mean()), float(cat[f"{method}/{k}"].std())) for k in keys}
        s["both_positive"] = float(cat[f"{method}/{both}"].mean())
        summary[label] = s
        print(f"{label:<26}" + "".join(f"{s[k][0]:>+18.3f} ± {s[k][1]:<7.3f}" for k in keys)
              + f"{100 * s['both_positive']:>18.1f} %")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "threads": torch.get_num_threads(),
                                    "loadavg": os.getloadavg(), "seconds": round(time.time() - t0, 1),
                                    "summary": summary}, indent=1))
    print(f"{time.time() - t0:.0f} s; {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
