"""``exface interfacegan-fit``: bank -> attribute scores -> one InterFaceGAN boundary per attribute.

Builds (or resumes) the latent bank, scores it with every attribute predictor (side files,
only what is missing: :mod:`exface.interfacegan.scores`), and fits the requested
attributes' boundaries at once (:class:`~exface.interfacegan.learner.InterFaceGANBoundary`)
in z, w or w+. The boundary file records the attribute names, the space, the bank's
generator (class, arguments, weights digest) and truncation, so ``exface edit`` and
``exface edit-report`` refuse it for another generator, checkpoint, truncation or space. ``<output>.json`` /
``<output>.md`` beside it list each boundary's validation and remaining-sample accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor

from exface.alignment.base import Aligner
from exface.attributes.base import AttributePredictor
from exface.boundaries.base import Boundaries, refuse_other_boundaries
from exface.commands import command
from exface.embedders.base import IdentityEmbedder
from exface.exfacegan.latent_bank import LatentBank
from exface.exfacegan.run_files import atomic_write_bytes
from exface.generators.base import Generator
from exface.interfacegan.learner import InterFaceGANBoundary
from exface.interfacegan.scores import BankScores

__all__ = ["bank_latents", "fit_attribute_boundaries", "interfacegan_fit"]


def bank_latents(bank: LatentBank, space: str, num_ws: int) -> Tensor:
    """All bank latents in ``space``: ``[N, d]`` for z/w, ``[N, num_ws, w_dim]`` for w+ (w repeated per layer)."""
    key = "w" if space == "w+" else space
    if key not in ("z", "w"):
        raise ValueError(f"space must be 'z', 'w' or 'w+', got {space!r}")
    x = bank.load((key,))[key].float()
    return x[:, None].expand(-1, num_ws, -1).contiguous() if space == "w+" else x


def generator_meta(generator: Generator, bank: LatentBank) -> dict:
    """What a boundary file records about where it applies."""
    return {
        "generator": bank.manifest["parts"]["generator"],
        "generator_dims": {"z_dim": int(generator.z_dim), "w_dim": int(generator.w_dim), "num_ws": int(generator.num_ws)},
        "bank": {"root": str(bank.root), "num_latents": bank.num_latents, "seed": bank.manifest["seed"],
                 "truncation_psi": bank.manifest.get("truncation_psi"),
                 "truncation_cutoff": bank.manifest.get("truncation_cutoff"), "parts": bank.manifest["parts"]},
    }


def fit_attribute_boundaries(bank: LatentBank, generator: Generator, learner: InterFaceGANBoundary,
                             attributes: list[str] | None, space: str, per_layer: bool = False) -> Boundaries:
    """Boundaries of ``attributes`` (default: every scored attribute) over the bank's latents."""
    generator.check_space(space)
    if per_layer and space != "w+":
        raise ValueError(f"per_layer boundaries exist only in w+, not {space!r}; pass space: w+ or per_layer: false")
    scores = BankScores(bank).load(attributes)
    names = list(scores)
    x = bank_latents(bank, space, generator.num_ws)
    if space != "w+":
        b = learner.fit_scores(x, scores, space, names)
    elif not per_layer:
        b = learner.fit_scores(x.flatten(1), scores, space, names)
    else:
        parts = [learner.fit_scores(x[:, layer], scores, space, names, layers=[layer] * len(names))
                 for layer in range(x.shape[1])]
        meta = dict(parts[0].meta)
        for key in ("attribute_names", "layers", "val_accuracy", "remaining_accuracy", "num_valid", "chosen_num",
                    "num_train_per_side"):
            meta[key] = [v for p in parts for v in p.meta[key]]
        b = Boundaries(torch.cat([p.normals for p in parts]), torch.cat([p.offsets for p in parts]), space,
                       torch.cat([p.val_balanced_accuracy for p in parts]), torch.cat([p.val_auc for p in parts]), meta)
    b.meta.update(generator_meta(generator, bank), per_layer=per_layer)
    return b


def _summary_md(b: Boundaries) -> str:
    m = b.meta
    lines = [f"# InterFaceGAN boundaries ({b.space}, {m['generator']['class']})", "",
             f"bank {m['bank']['root']} ({m['bank']['num_latents']} latents); chosen_num_or_ratio "
             f"{m['chosen_num_or_ratio']}, split_ratio {m['split_ratio']}, C {m['C']}", "",
             "| attribute | layer | valid | per side (train) | val accuracy | remaining accuracy |",
             "| --- | --- | --- | --- | --- | --- |"]
    for i, name in enumerate(m["attribute_names"]):
        layer = m["layers"][i]
        lines.append(f"| {name} | {'all' if layer is None else layer} | {m['num_valid'][i]} | {m['chosen_num'][i]} "
                     f"({m['num_train_per_side'][i]}) | {m['val_accuracy'][i]:.4f} | {m['remaining_accuracy'][i]:.4f} |")
    return "\n".join(lines) + "\n"


@command("interfacegan-fit")
def interfacegan_fit(
    bank_dir: str,
    generator: Generator,
    aligner: Aligner,
    embedder: IdentityEmbedder,
    attribute_predictors: list[AttributePredictor],
    output: str,
    attribute_aligner: Aligner | None = None,
    attributes: list[str] | None = None,
    space: str = "z",
    per_layer: bool = False,
    num_latents: int = 10000,
    chunk_size: int = 1000,
    seed: int = 0,
    chosen_num_or_ratio: float = 0.02,
    split_ratio: float = 0.7,
    invalid_value: float | None = None,
    C: float = 1.0,
    batch_size: int = 64,
    accelerator: str = "auto",
    devices: int | str = 1,
    progress: bool = True,
) -> None:
    """Learn InterFaceGAN attribute boundaries from a latent bank's attribute scores.

    Args:
        bank_dir: latent bank folder (built or resumed with generator/aligner/embedder).
        generator, aligner, embedder: the bank's parts (the embedder only builds the bank).
        attribute_predictors: predictors that score the bank's faces (only missing scores are computed).
        output: the boundary file to write (<output>.json and <output>.md summarize it).
        attribute_aligner: crop given to the predictors (default: aligner).
        attributes: attributes to fit (default: every scored one).
        space: z, w or w+ (w+ flattened, or one boundary per layer with per_layer).
        per_layer: in w+, one boundary per layer and attribute.
        num_latents, chunk_size, seed: the bank's size, chunking and seed.
        chosen_num_or_ratio: positives (and negatives) per attribute: a fraction of N in (0, 1] or a count.
        split_ratio: train share of each side. invalid_value: scores equal to it are dropped (NaN always is).
        C: the SVM's C. batch_size: images per forward pass. accelerator, devices: Lightning's.
        progress: progress bars for the bank and scoring stages (named by stage).
    """
    t0 = time.time()
    learner = InterFaceGANBoundary(chosen_num_or_ratio, split_ratio, invalid_value, C, seed)
    generator.check_space(space)
    bank = LatentBank.build(bank_dir, generator, aligner, embedder, num_latents=num_latents, chunk_size=chunk_size,
                            seed=seed, batch_size=batch_size, accelerator=accelerator, devices=devices,
                            enable_progress_bar=progress)
    done = BankScores(bank).score(generator, attribute_aligner or aligner, attribute_predictors,
                                  batch_size=batch_size, accelerator=accelerator, devices=devices,
                                  enable_progress_bar=progress)
    out = Path(output)
    # an output made with other settings or from another bank is refused before the fit (and again, in full, at save)
    refuse_other_boundaries(out, {**learner._meta(), **generator_meta(generator, bank), "per_layer": per_layer},
                            space=space, complete=False, setting="output")
    b = fit_attribute_boundaries(bank, generator, learner, attributes, space, per_layer)
    out.parent.mkdir(parents=True, exist_ok=True)
    b.save(out, setting="output")
    summary = {k: b.meta[k] for k in ("attribute_names", "layers", "val_accuracy", "remaining_accuracy", "num_valid",
                                      "chosen_num", "num_train_per_side")}
    summary.update(space=b.space, boundaries=str(out), scored_chunks=done, seconds=round(time.time() - t0, 1))
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(summary, indent=1) + "\n").encode())
    md = _summary_md(b)
    atomic_write_bytes(out.with_suffix(".md"), md.encode())
    print(md + f"\nwrote {out} in {time.time() - t0:.1f} s")
