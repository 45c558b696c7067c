"""Does exface's synthetic data train face recognition? The whole chain on the CPU defaults, scored on LFW.

1. ``exface fit`` (recipes/dcgan_faceapi.yaml): bank of DCGANDigiFace latents embedded by
   FaceApiResNet34 (``--labeler HSEFaceRes``: by HSE's MobileNet instead, on the same face box
   at 224 px), one identity boundary per reference (``--references``).
2. ``exface synthesize`` (recipes/dcgan_faceapi_synthesize.yaml, both sides of every
   boundary as ExFaceGAN does: 2 x references identities x ``--images``; ``--one_side``: the
   reference's side only, references identities), storing the recipe's aligned crops
   (the ArcFace 112x112 crop): the **boundary** dataset.
3. The quality report's two baselines, same identities and image counts, rendered through
   the same generator and crop: **noise_same_distance** (the anchor latent + Gaussian noise
   whose mean latent distance from the reference equals the boundary samples') and
   **noise_equal_diversity** (noise whose pixel diversity equals the boundary dataset's),
   with exface.exfacegan.report's calibration functions.
4. The same small backbone (MobileFaceNet, ``--net_size`` px) trained on each dataset with
   the same loss, optimizer, schedule, seed and number of steps (``FaceRecognitionModule``
   + ``IdentityFolderDataModule``, the recipes' code path). The step count is the budget:
   given (``--steps``) or sized from a timing probe to fit what the data stages leave of
   ``--total_minutes`` (45 by default; or ``--train_minutes`` for the three trainings).
5. LFW fold 1 (../shared/data/lfw-fold1; 600 pairs, 10 stratified folds, exface.evaluation's
   protocol via ``benchmark_set``) for each trained model, loaded back from its checkpoint
   with ``FRCheckpointEmbedder``, and for the same backbone untrained; the untrained backbone is also
   scored from ``--untrained_seeds`` initializations (its spread: one init is one draw), and
   ``--train_seeds`` repeats every training from other seeds (initialization and order).

Every stage is resumable (bank, boundaries, datasets, checkpoints); the JSON records each
stage's time, where it ran, and the load average. Run::

    PYTHONPATH=. .venv/bin/python benchmarks/fr_end_to_end.py --work runs/fr_end_to_end
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA_STAGES = ("fit", "synthesize_boundary", "baselines", "lfw_align")  # what the training budget is left from
DATASETS = ("boundary", "noise_same_distance", "noise_equal_diversity")


def _stage(results: dict, name: str, t0: float, ran: bool = True, **extra) -> None:
    """Record a stage's time (and save the results file); a stage whose output an earlier run made keeps that record."""
    if not ran and name in results["stages"]:
        print(f"{name}: done by an earlier run ({results['stages'][name]['seconds']} s)", flush=True)
        return
    results["stages"][name] = {"seconds": round(time.time() - t0, 1), "loadavg": os.getloadavg()[0],
                               "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
    if "path" in results:
        Path(results["path"]).write_text(json.dumps(results, indent=1))
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {time.time() - t0:.1f} s {extra if extra else ''}", flush=True)


def fit_boundaries(work: Path, references: int, latents: int, labeler: str = "FaceApiResNet34") -> Path:
    """Bank + boundaries with the default recipe (skipped when boundaries.pt exists); ``labeler``
    replaces the recipe's embedder, its face box kept at the labeler's input size."""
    from exface.cli import main
    from exface.registry import get_registry

    bnd = work / "boundaries.pt"
    if not bnd.is_file():
        size = list(get_registry("embedders").get(labeler).input_size)  # a class attribute: no weights loaded
        main(["fit", "--config", str(REPO / "recipes" / "dcgan_faceapi.yaml"),
              "--data.init_args.embedder.class_path", labeler,
              "--data.init_args.aligner.init_args.output_size", json.dumps(size),
              "--data.init_args.bank_dir", str(work / "bank"), "--data.init_args.num_references", str(references),
              "--data.init_args.num_latents", str(latents), "--model.init_args.save_path", str(bnd),
              "--trainer.default_root_dir", str(work), "--trainer.logger.init_args.save_dir", str(work)])
    return bnd


def synthesize_boundary_set(work: Path, references: int, images: int, both_sides: bool = True) -> Path:
    from exface.cli import main

    out = work / "datasets" / "boundary"
    if not (out / "synthesis.json").is_file() or "identities" not in json.loads((out / "synthesis.json").read_text()):
        main(["synthesize", "--config", str(REPO / "recipes" / "dcgan_faceapi_synthesize.yaml"),
              "--bank", str(work / "bank"), "--boundaries", str(work / "boundaries.pt"), "--output_dir", str(out),
              "--num_identities", str(references), "--images_per_identity", str(images),
              "--both_sides", "true" if both_sides else "false",
              "--report", "false", "--accelerator", "cpu"])
    return out


def crop_aligner_of_recipe():
    """The crop aligner the synthesize recipe stores (FixedCropAligner, ArcFace box)."""
    from exface.registry import create_part

    cfg = yaml.safe_load((REPO / "recipes" / "dcgan_faceapi_synthesize.yaml").read_text())["crop_aligner"]
    return create_part("aligners", cfg["class_path"], **cfg.get("init_args", {})).eval()


@torch.no_grad()
def render_noise_set(out: Path, gan, crop, bnd, references, idents, k: int, sigma: float, normalize_z: bool,
                     seed: int, batch: int = 100) -> dict:
    """A baseline dataset: per identity, k anchor + N(0, sigma^2) latents, rendered and cropped like the boundary set."""
    from exface.exfacegan.crops import aligned_crops, encode_images
    from exface.exfacegan.report import _pixel_diversity, shrink
    from exface.exfacegan.samplers import NoiseSampler
    from exface.tensors import to_uint8

    done = out / "manifest.jsonl"
    sam = NoiseSampler(sigma, normalize_z=normalize_z)
    gen = torch.Generator().manual_seed(seed)
    lats = torch.cat([sam.sample(bnd, b, s, references[b], k, gen, gan) for _, b, s in idents]).float()
    labels = np.repeat([n for n, _, _ in idents], k)
    frames_small, rows = [], []
    for s0 in range(0, len(lats), batch):
        frames = to_uint8(gan.synthesize(lats[s0:s0 + batch], space=bnd.space))
        frames_small.append(shrink(frames))
        if done.is_file():
            continue
        crops, _ = aligned_crops(crop, frames, None)
        for q, data in enumerate(encode_images(crops)):
            i = s0 + q
            name, kk = labels[i], i % k
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / f"{kk}.png").write_bytes(data)
            rows.append(json.dumps({"identity": str(name), "file": f"{name}/{kk}.png", "k": kk}))
    if not done.is_file():
        tmp = out / ".manifest.tmp"
        tmp.write_text("\n".join(rows) + "\n")
        os.replace(tmp, done)
    div = _pixel_diversity(np.concatenate(frames_small), labels)  # the quality report's measure
    return {"sigma": sigma, "pixel_diversity": div, "images": len(lats)}


def make_baselines(work: Path, boundary_dir: Path, seed: int) -> dict:
    from exface.boundaries.base import Boundaries
    from exface.exfacegan.report import _pixel_diversity, calibrate_noise_sigma, calibrate_sigma_to_diversity, render_set
    from exface.exfacegan.synthesis import load_bank_references
    from exface.generators import DCGANDigiFace

    settings = json.loads((boundary_dir / "synthesis.json").read_text())
    rows = [json.loads(ln) for ln in (boundary_dir / "manifest.jsonl").read_text().splitlines() if ln.strip()]
    idents = [tuple(x) for x in settings["identities"]]
    k, space = settings["images_per_identity"], settings["space"]
    normalize_z = bool(settings["sampler"].get("normalize_z", False))
    bnd = Boundaries.load(settings["boundaries"])
    _, refs = load_bank_references(settings["bank"])
    references = refs[space].float()
    gan = DCGANDigiFace().eval()
    lat = torch.from_numpy(np.load(boundary_dir / "latents.npy"))
    labels = np.array([r["identity"] for r in rows])
    frames, _ = render_set(gan, [], lat.float(), space, 100)
    target = _pixel_diversity(frames, labels)
    pos = torch.tensor([r["side"] > 0 for r in rows])
    ref_of = references[torch.tensor([r["boundary"] for r in rows])]
    spread = float((lat[pos] - ref_of[pos]).norm(dim=1).mean())  # as the quality report matches it
    sigma = calibrate_noise_sigma(bnd, references, [(b, s) for _, b, s in idents], spread, normalize_z, seed=seed)
    sub = [(b, s) for _, b, s in idents[:24]]
    trunc = (settings.get("truncation_psi"), settings.get("truncation_cutoff"))  # applied at render time
    sigma_div, reached = calibrate_sigma_to_diversity(gan, bnd, references, sub, k, space, target, sigma, normalize_z,
                                                      trunc, seed=seed)
    crop = crop_aligner_of_recipe()
    out = {"boundary": {"pixel_diversity": target, "latent_spread": spread, "images": len(rows),
                        "identities": len(idents), "dropped": settings.get("dropped", 0)}}
    for name, sg in (("noise_same_distance", sigma), ("noise_equal_diversity", sigma_div)):
        d = work / "datasets" / name
        d.mkdir(parents=True, exist_ok=True)
        out[name] = render_noise_set(d, gan, crop, bnd, references, idents, k, sg, normalize_z, seed + 1)
    out["noise_equal_diversity"]["calibration_reached_on_subset"] = reached
    return out


def lfw_crops(work: Path, lfw: Path):
    """LFW fold 1 as 112x112 ArcFace crops (the benchmark's default aligner for 112-px embedders), cached."""
    from exface.embedders.mobilefacenet import MobileFaceNetEmbedder
    from exface.evaluation import load_lfw_pairs
    from exface.evaluation.benchmark import default_aligner
    from exface.evaluation.datasets import VerificationSet
    from exface.fr.verification_callback import aligned_copy

    vs = load_lfw_pairs(lfw / "pairs.txt")
    cache = work / "lfw_fold1_arcface112.npy"
    if not cache.is_file():
        np.save(cache, aligned_copy(vs, default_aligner(vs, MobileFaceNetEmbedder(input_size=112))).images)
    return VerificationSet(name=vs.name + " (ArcFace 112 crops)", pairs=vs.pairs, issame=vs.issame, folds=vs.folds,
                           images=np.load(cache), aligned=True)


def score(vs, embedder) -> dict:
    from exface.alignment import ResizeAligner
    from exface.evaluation.benchmark import benchmark_set

    r = benchmark_set(vs, embedder.eval(), ResizeAligner((112, 112)), folds=10, batch_size=100, flip=False)
    return {k: r[k] for k in ("accuracy", "accuracy_std", "auc", "eer", "score_mean_same", "score_mean_diff")}


def _spread(accuracies: list[float], seeds: list[int]) -> dict:
    """Mean, sample sd, min and max of LFW accuracies (in %) over seeds."""
    a = 100 * np.asarray(accuracies, dtype=np.float64)
    return {"n": len(a), "seeds": seeds, "accuracies": [round(float(x), 2) for x in a], "mean": float(a.mean()),
            "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "min": float(a.min()), "max": float(a.max())}


def make_backbone(args, seed: int | None = None):
    """The small MobileFaceNet, initialized from ``seed`` (default ``--seed``)."""
    from exface.embedders.mobilefacenet import MobileFaceNetEmbedder

    torch.manual_seed(args.seed if seed is None else seed)
    return MobileFaceNetEmbedder(embedding_dim=args.embedding_dim, input_size=112, net_size=args.net_size,
                                 width=args.width)


def make_loss(args):
    from exface.losses.margin import CosFace

    return lambda d, c: CosFace(d, c, s=args.s, m=args.m)


def train(args, data_dir: Path, out_dir: Path, steps: int, log_every: int = 10, seed: int | None = None):
    """Train the backbone on ``data_dir`` for ``steps`` (resumes from ``out_dir``); ``seed`` (default ``--seed``)
    fixes the initialization and the training order."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from exface.fr.datamodule import IdentityFolderDataModule
    from exface.fr.module import FaceRecognitionModule

    last = out_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and torch.load(str(last), map_location="cpu", weights_only=True)["global_step"] >= steps:
        return last, None
    seed = args.seed if seed is None else seed
    pl.seed_everything(seed, workers=True)
    dm = IdentityFolderDataModule(str(data_dir), (112, 112), batch_size=args.batch, num_workers=0, flip=True,
                                  randaugment=args.randaugment, in_memory=True, seed=seed)
    dm.setup("fit")
    per_epoch = max(1, len(dm.train_dataloader()))
    model = FaceRecognitionModule(make_backbone(args, seed), make_loss(args), lr=args.lr, weight_decay=5e-4,
                                  schedule="poly", warmup_epochs=args.warmup * steps / per_epoch, clip_grad_norm=5.0)
    ckpt = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0,
                           every_n_train_steps=max(1, steps // 4))
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=CSVLogger(out_dir, name="logs"),
                         callbacks=[ckpt], enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=log_every, num_sanity_val_steps=0, limit_val_batches=0)
    t0 = time.time()
    trainer.fit(model, datamodule=dm, ckpt_path="last" if last.is_file() else None)
    trainer.save_checkpoint(last)
    return last, time.time() - t0


def probe_step_seconds(args, data_dir: Path, n: int = 4) -> float:
    """Median seconds of one training step on real images of the boundary set: the batch's
    augmentation (flip, RandAugment when asked; images already decoded, as the in-memory
    training reads them) + backbone + loss + SGD."""
    from exface.fr.datamodule import Augmentation, IdentityFolderDataset, list_identity_folder

    paths, labels, names = list_identity_folder(data_dir)
    idx_all = [i % len(paths) for i in range(n * args.batch)]
    ds = IdentityFolderDataset([paths[i] for i in idx_all], [labels[i] for i in idx_all], (112, 112),
                               Augmentation(True, args.randaugment), in_memory=True)
    net, loss = make_backbone(args), make_loss(args)(args.embedding_dim, len(names))
    opt = torch.optim.SGD(list(net.parameters()) + list(loss.parameters()), lr=0.01, momentum=0.9)
    times = []
    for b in range(n):
        t = time.time()
        batch = [ds[i] for i in range(b * args.batch, (b + 1) * args.batch)]
        xs = torch.stack([x for x, _ in batch])
        ys = torch.tensor([y for _, y in batch])
        out = loss(net.embed_raw(xs), ys)
        opt.zero_grad()
        out.backward()
        opt.step()
        times.append(time.time() - t)
    return float(np.median(times[1:]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "fr_end_to_end")
    ap.add_argument("--lfw", type=Path, default=Path(os.environ.get("EXFACE_SHARED_DATA", REPO.parent / "shared" / "data"))
                    / "lfw-fold1")
    ap.add_argument("--references", type=int, default=250, help="boundaries; both sides: 2x identities")
    ap.add_argument("--one_side", action="store_true",
                    help="one identity per boundary (the reference's side) instead of ExFaceGAN's two")
    ap.add_argument("--labeler", default="FaceApiResNet34", choices=["FaceApiResNet34", "HSEFaceRes"],
                    help="the identity network that embeds the bank (labels, boundaries)")
    ap.add_argument("--latents", type=int, default=12000, help="bank size")
    ap.add_argument("--images", type=int, default=20, help="images per identity")
    ap.add_argument("--net_size", type=int, default=64)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--embedding_dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--warmup", type=float, default=0.05, help="warm-up, fraction of the steps")
    ap.add_argument("--s", type=float, default=64.0, help="CosFace scale")
    ap.add_argument("--m", type=float, default=0.35, help="CosFace margin")
    ap.add_argument("--steps", type=int, default=None, help="training steps per model (default: fit --train_minutes)")
    ap.add_argument("--train_minutes", type=float, default=None,
                    help="time for the three trainings together (default: what --total_minutes leaves)")
    ap.add_argument("--total_minutes", type=float, default=45.0,
                    help="budget of the whole chain: the trainings get what the data stages leave of it")
    ap.add_argument("--randaugment", type=int, nargs=2, default=None, metavar=("NUM_OPS", "MAGNITUDE"),
                    help="torchvision RandAugment in training, besides the flip; default off (ExFaceGAN's "
                         "4 16 is its own variant: see exface/fr/datamodule.py)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train_seeds", type=int, nargs="+", default=None,
                    help="train every dataset once per seed (initialization and order; default: --seed only); "
                         "the budget is split over all the trainings")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS,
                    help="which training sets to train on (default: the boundary set and both baselines)")
    ap.add_argument("--untrained_seeds", type=int, default=10,
                    help="score this many untrained initializations (seeds --seed, --seed + 1, ...): the spread "
                         "of the untrained backbone's LFW accuracy")
    args = ap.parse_args(argv)
    if not (args.lfw / "pairs.txt").is_file():
        print(f"no LFW fold-1 data at {args.lfw} (see ../shared/data/README.md)", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    rpath = work / "results.json"
    results = json.loads(rpath.read_text()) if rpath.is_file() else {"stages": {}}
    budget = results.get("budget", {})
    for opt, value in (("steps", args.steps), ("batch", args.batch)):
        if opt in budget and value is not None and value != budget[opt]:
            # the models trained so far used the recorded value: the three would not be comparable
            print(f"{work} was started with --{opt} {budget[opt]} (its results.json budget); --{opt} {value} differs "
                  f"and the three models would be trained differently: rerun with --{opt} {budget[opt]} "
                  f"{'(or without --steps) ' if opt == 'steps' else ''}or use a fresh --work", file=sys.stderr)
            return 2
    seeds = args.train_seeds or [args.seed]
    trainings = [(name, seed) for seed in seeds for name in args.datasets]
    results["path"] = str(rpath)
    results["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results["threads"], results["cpus"] = torch.get_num_threads(), os.cpu_count()
    t_all = time.time()

    t0 = time.time()
    ran = not (work / "boundaries.pt").is_file()
    fit_boundaries(work, args.references, args.latents, args.labeler)
    _stage(results, "fit", t0, ran)
    t0 = time.time()
    ran = not (work / "datasets" / "boundary" / "manifest.jsonl").is_file()
    bdir = synthesize_boundary_set(work, args.references, args.images, both_sides=not args.one_side)
    _stage(results, "synthesize_boundary", t0, ran)
    t0 = time.time()
    results["datasets"] = make_baselines(work, bdir, args.seed)
    _stage(results, "baselines", t0)
    t0 = time.time()
    ran = not (work / "lfw_fold1_arcface112.npy").is_file()
    vs = lfw_crops(work, args.lfw)
    _stage(results, "lfw_align", t0, ran)

    if "steps" in budget:  # a rerun: the three models keep the step count an earlier run fixed
        steps = budget["steps"]
        print(f"budget: {steps} steps per model, fixed by an earlier run in {work}", flush=True)
    else:
        t0 = time.time()
        step_s = probe_step_seconds(args, bdir)
        # only the data stages: a rerun's results also hold probe, train_* and lfw_* times
        spent = sum(results["stages"][k]["seconds"] for k in DATA_STAGES if k in results["stages"])
        # the LFW scoring of four models and Lightning's per-step overhead (~10% measured) come out of the budget
        train_s = args.train_minutes * 60 if args.train_minutes else (args.total_minutes * 60 - spent - 60) / 1.1
        steps = args.steps or max(10, int(train_s / len(trainings) / step_s))
        results["budget"] = {"steps": steps, "batch": args.batch, "images_seen": steps * args.batch,
                             "epochs_of_boundary_set": steps * args.batch / results["datasets"]["boundary"]["images"]}
        _stage(results, "probe", t0, step_seconds=step_s, steps=steps, data_stages_seconds=round(spent, 1))
    from exface.fr.checkpoint_embedder import FRCheckpointEmbedder

    models = {"untrained": None}
    t0 = time.time()
    results.setdefault("lfw", {})["untrained"] = score(vs, make_backbone(args))
    # the untrained figure is one draw of the initialization: its spread says how far "above untrained" is
    inits = [results["lfw"]["untrained"]["accuracy"]] + [
        score(vs, make_backbone(args, args.seed + i))["accuracy"] for i in range(1, args.untrained_seeds)]
    inits = inits[:args.untrained_seeds]
    if inits:
        results["untrained_inits"] = _spread(inits, seeds=[args.seed + i for i in range(len(inits))])
    _stage(results, "lfw_untrained", t0)
    for name, seed in trainings:
        key = name if seed == args.seed else f"{name}_seed{seed}"  # --seed keeps the single-seed run's folders
        t0 = time.time()
        ckpt, secs = train(args, work / "datasets" / name, work / "fr" / key, steps, seed=seed)
        models[key] = ckpt
        _stage(results, f"train_{key}", t0, secs is not None)
        secs = results["stages"][f"train_{key}"]["seconds"] if secs is None else secs
        t0 = time.time()
        final_step = int(torch.load(str(ckpt), map_location="cpu", weights_only=True)["global_step"])
        if final_step != steps:
            print(f"warning: {key} was trained {final_step} steps, not the budget's {steps}", file=sys.stderr)
        results["lfw"][key] = {**score(vs, FRCheckpointEmbedder(ckpt)), "train_seconds": secs,
                               "global_step": final_step, "dataset": name, "seed": seed}
        _stage(results, f"lfw_{key}", t0)  # saves the results file
    if len(seeds) > 1:
        results["over_train_seeds"] = {
            name: _spread([results["lfw"][name if s == args.seed else f"{name}_seed{s}"]["accuracy"] for s in seeds],
                          seeds=seeds) for name in args.datasets}
    results["total_seconds_this_invocation"] = round(time.time() - t_all, 1)
    results["total_seconds_all_stages"] = round(sum(s["seconds"] for s in results["stages"].values()), 1)
    rpath.write_text(json.dumps(results, indent=1))

    ds = results["datasets"]
    aug = f"flip + RandAugment{tuple(args.randaugment)}" if args.randaugment else "flip"
    print(f"\nMobileFaceNet (width {args.width}, {args.net_size} px, {args.embedding_dim}-d), CosFace s={args.s} "
          f"m={args.m}, SGD lr {args.lr}, batch {args.batch}, {aug}, {steps} steps "
          f"({results['budget']['epochs_of_boundary_set']:.2f} epochs), {torch.get_num_threads()} threads")
    print(f"{'training data':<24} {'ids x imgs':>11} {'pix div':>8} {'LFW acc':>13} {'AUC':>6} {'train s':>8}")
    for name, r in results["lfw"].items():
        d = ds.get(r.get("dataset", name), {})
        size = f"{d.get('identities', ds['boundary']['identities'])}x{args.images}" if d else "-"
        div = f"{d['pixel_diversity']:.4f}" if d else "-"
        acc = f"{100 * r['accuracy']:.2f}+-{100 * r['accuracy_std']:.2f}"
        ts = f"{r.get('train_seconds') or 0:.0f}"
        print(f"{name:<24} {size:>11} {div:>8} {acc:>13} {r['auc']:.3f} {ts:>8}")
    spreads = ([("untrained", results["untrained_inits"])] if "untrained_inits" in results else []) + \
        list(results.get("over_train_seeds", {}).items())
    for name, sp in spreads:
        print(f"{name + ' over seeds':<24} {sp['n']:>3} seeds: LFW {sp['mean']:.2f} +- {sp['sd']:.2f} (sd), "
              f"min {sp['min']:.2f}, max {sp['max']:.2f}")
    print(f"total {results['total_seconds_all_stages'] / 60:.1f} min over all stages; results in {rpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
