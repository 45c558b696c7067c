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


def centred_member(m, name: str):
    """A second loss network for an ensemble identity loss: ``name``'s unit embeddings of the
    recipe's identity box at its input size (the ArcFace box for 112-px ArcFace-crop networks, as
    the MobileFace judge is given), centred on the same ``CENTER_SEED`` samples as the module's own
    (each member centred on its own mean, as the module centres its embedder)."""
    import torch.nn.functional as F

    from exface.alignment import FixedCropAligner
    from exface.disentangle.datamodule import CENTER_SEED
    from exface.registry import create_part

    emb = create_part("embedders", name).eval().requires_grad_(False)
    box = ARCFACE_BOX if tuple(emb.input_size) == (112, 112) else ID_BOX
    crop = FixedCropAligner(box=box, output_size=tuple(emb.input_size))
    with torch.no_grad():
        seeds = torch.arange(CENTER_SEED, CENTER_SEED + m.identity_center)
        mean = torch.cat([emb(crop(m.render(m.latents(seeds[i:i + 64])))) for i in range(0, len(seeds), 64)]).mean(0)
    return lambda x: F.normalize(emb(crop(x)) - mean, dim=-1)


def start_latents(zi: torch.Tensor, za: torch.Tensor, start: str) -> torch.Tensor:
    """The search's start: the attribute source's latent, the identity source's, or ``mid``,
    the great-circle midpoint of the two (slerp 0.5), where neither source's traits lead."""
    if start == "attr":
        return za
    if start == "id":
        return zi
    mid = zi / zi.norm(dim=1, keepdim=True) + za / za.norm(dim=1, keepdim=True)
    return mid * (zi.shape[1] ** 0.5 / mid.norm(dim=1, keepdim=True))


def search(m, id_img: torch.Tensor, attr_img: torch.Tensor, start: torch.Tensor, landmark_weight: float, steps: int,
           lr: float, members: tuple = (), augment: str = "none", seed: int = 0) -> torch.Tensor:
    """Latents ``[N, dim]`` minimizing the module's identity + landmark loss per pair, from ``start``.

    ``members``: further centred identity networks whose L1 losses are added to the module's
    (an ensemble loss). ``augment``: ``identity`` -- the identity losses see ``random_views``
    random views (flips included) and the landmark loss the output itself; ``both`` -- both
    losses see one random view (no flip), the landmark target moved into it.
    """
    from exface.disentangle.losses import identity_loss, landmark_loss, points_in_views, random_views

    embedders = (m.embed, *members)
    with torch.no_grad():
        targets = [e(id_img) for e in embedders]
        l_a = m.landmarks_160(attr_img)
    gen = torch.Generator().manual_seed(seed)
    radius = start.shape[1] ** 0.5
    z = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    n = len(z)
    for _ in range(steps):
        out = m.render(z)
        view, lmk_view, lmk_target = out, out, l_a
        if augment == "identity":
            view, _ = random_views(out, gen)
        elif augment == "both":
            view, theta = random_views(out, gen, flip=False)
            lmk_view, lmk_target = view, points_in_views(l_a, theta, m.landmark_frame_size, out.shape[-1])
        ident = sum(identity_loss(e(view), t) for e, t in zip(embedders, targets))
        lmk = landmark_loss(m.landmarks_160(lmk_view), lmk_target, m.landmark_first) if landmark_weight else 0.0
        # sums over pairs (x n) so that each pair's gradient is its own loss's, whatever the batch
        loss = n * (ident + landmark_weight * lmk)
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
    ap.add_argument("--ensemble", nargs="+", default=[],
                    help="further identity networks in the loss (each centred, L1 added): an ensemble loss; "
                         "a judge that is in the loss is marked not independent")
    ap.add_argument("--start", choices=["attr", "id", "mid"], default="attr",
                    help="start the search at the attribute source's latent (pose right), the identity source's, "
                         "or halfway between them on the prior's sphere (slerp 0.5)")
    ap.add_argument("--augment", choices=["none", "identity", "both"], default="none",
                    help="random views of the output (exface.disentangle.losses.random_views: expectation over "
                         "transformation) for the identity "
                         "losses, or for the identity and landmark losses alike")
    ap.add_argument("--mobileface_judge", action="store_true",
                    help="also judge identity by HumanMobileFace (a third network, 112-px ArcFace box)")
    ap.add_argument("--both_judge", default=None,
                    help="the identity judge of the 'both > 0' column (default: the last independent one)")
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
    members = tuple(centred_member(m, name) for name in args.ensemble)
    for j in ids:  # a judge whose network is in the (ensemble) loss is not independent
        if j.name in args.ensemble:
            j.name, j.independent = f"{j.name}-loss", False
    indep = [j for j in ids if j.independent]
    if not indep:
        raise SystemExit("every identity judge is in the loss: add --mobileface_judge for an independent one")
    judge = indep[-1] if args.both_judge is None else next((j for j in indep if j.name == args.both_judge), None)
    if judge is None:
        raise SystemExit(f"--both_judge {args.both_judge}: not an independent judge here ({[j.name for j in indep]})")
    both = f"{judge.name}+{lmks[-1].name}/both_margins_positive"
    id_s, attr_s = held_out_seeds(args.pairs)
    rows: dict[str, dict[str, list[torch.Tensor]]] = {}
    for b in range(0, args.pairs, args.batch):
        with torch.no_grad():
            zi, za = m.latents(id_s[b:b + args.batch]), m.latents(attr_s[b:b + args.batch])
            id_img, attr_img = m.render(zi), m.render(za)
        if args.start == "mid":  # the start itself, unsearched: what the search adds is measured against it
            with torch.no_grad():
                res = pair_metrics(m.render(start_latents(zi, za, "mid")), id_img, attr_img, ids, lmks)
            for k, v in res.items():
                rows.setdefault("start", {}).setdefault(k, []).append(v)
        for w in args.landmark_weights:
            z = search(m, id_img, attr_img, start_latents(zi, za, args.start), w, args.steps, args.lr,
                       members, args.augment, seed=b)
            with torch.no_grad():
                res = pair_metrics(m.render(z), id_img, attr_img, ids, lmks)
            for k, v in res.items():
                rows.setdefault(f"{w:g}", {}).setdefault(k, []).append(v)
        print(f"[{time.time() - t0:.0f} s] {min(args.pairs, b + args.batch)}/{args.pairs} pairs", flush=True)

    keys = [f"{j.name}/id_margin" for j in ids] + [f"{j.name}/lmk_margin" for j in lmks]
    summary = {}
    print(f"\nper-pair latent search from the {args.start} source's latent, {args.steps} Adam steps (lr {args.lr}), "
          f"loss: {' + '.join([type(m.identity_embedder).__name__, *args.ensemble])}{'' if args.augment == 'none' else f' (random views: {args.augment})'}, "
          f"{args.pairs} held-out pairs; margins mean ± std (landmark margins: % of the side)")
    print(f"{'source':<26}" + "".join(f"{k:>28}" for k in keys) + f"{'both > 0 (' + both.split('/')[0] + ')':>20}")
    first = next(iter(rows.values()))
    for label, method, table in [("corner: attribute latent", "attr_latent", first),
                                 ("corner: identity latent", "id_latent", first)] + \
            [("start: slerp midpoint" if w == "start" else f"search, landmark w {w}", "mapper", t)
             for w, t in rows.items()]:
        cat = {k: torch.cat(v) for k, v in table.items()}
        s = {k: (float(cat[f"{method}/{k}"].mean()), float(cat[f"{method}/{k}"].std())) for k in keys}
        s["both_positive"] = float(cat[f"{method}/{both}"].mean())
        s["both_positive_judges"] = both.split("/")[0]
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
