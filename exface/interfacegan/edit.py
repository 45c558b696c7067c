"""``exface edit``: InterFaceGAN's linear edit of chosen latents, with every score and identity per step.

Latents come from a latent bank (by index), from seeds, or from a ``.npy`` file; the
direction is one attribute boundary, optionally conditioned on others
(:func:`~exface.interfacegan.directions.select_direction`). Every latent is moved by
:func:`~exface.interfacegan.manipulation.linear_interpolate` from ``start_distance`` to
``end_distance`` in ``steps``; each step's face is rendered and scored by every attribute
predictor, and its identity is compared (cosine) with the unedited face by the recipe's
embedder. ``output_dir`` receives::

    grid_<k>.png   one row per latent: the unedited face, then the steps
    grid.png       every latent's row stacked
    edit.json      settings, distances, and per latent and step every score and the similarity
    edit.md        the mean of each attribute and of the similarity per step
    curves.png     each attribute (and the similarity) against distance: every latent and the mean
    made_by.json   what made the edit (:func:`edit_identity`)

The folder is a :class:`~exface.report_dir.ReportDir`: it holds one edit. An edit with another
boundary file, attribute, conditions, layer, latents, distance range or part is refused before
its work (write it into another folder); the same edit again regenerates it in place, and the
files of the earlier run that this one does not write are removed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from exface.alignment.base import Aligner
from exface.attributes.base import AttributePredictor
from exface.commands import command
from exface.embedders.base import IdentityEmbedder
from exface.exfacegan.samplers import render_latents
from exface.generators.base import Generator
from exface.interfacegan.directions import EditDirection, check_applicable, load_boundaries, select_direction
from exface.interfacegan.manipulation import distance_steps, linear_interpolate
from exface.interfacegan.scores import score_images
from exface.tensors import to_uint8

__all__ = ["render_edit_latents", "FaceEvaluator", "edit_latents", "load_edit_latents", "edit_identity", "edit"]


def render_edit_latents(generator: Generator, latents: Tensor, space: str) -> Tensor:
    """Images of (edited) latents rendered as the bank renders its own: banks store untruncated
    w, so boundaries in w and w+ live there, and the generator's ``truncation_psi`` (on its first
    ``truncation_cutoff`` layers) is applied at render time by
    :func:`~exface.exfacegan.samplers.render_latents`."""
    return render_latents(generator, latents, space, getattr(generator, "truncation_psi", None),
                          getattr(generator, "truncation_cutoff", None))


class FaceEvaluator:
    """Renders latents of one space and measures them: uint8 images, attribute scores, identity embeddings."""

    def __init__(self, generator: Generator, space: str, aligner: Aligner, embedder: IdentityEmbedder,
                 predictors: Sequence[AttributePredictor], attribute_aligner: Aligner | None = None,
                 batch_size: int = 64) -> None:
        self.generator, self.space = generator, space
        self.aligner, self.embedder = aligner, embedder
        self.predictors = list(predictors)
        self.attribute_aligner = attribute_aligner or aligner
        self.batch_size = int(batch_size)
        for m in (generator, aligner, embedder, self.attribute_aligner, *self.predictors):
            m.eval()
        self.attribute_names = [n for p in self.predictors for n in p.attribute_names]

    @torch.inference_mode()
    def __call__(self, latents: Tensor, keep_images: bool = False) -> dict[str, object]:
        """``{"scores": {name: [M]}, "embedding": [M, D], "image": uint8 [M, 3, H, W] (keep_images)}``."""
        scores: dict[str, list[Tensor]] = {}
        embs, imgs = [], []
        for b0 in range(0, len(latents), self.batch_size):
            lat = latents[b0 : b0 + self.batch_size].to(self.generator.device)
            images = render_edit_latents(self.generator, lat, self.space)
            embs.append(self.embedder(self.aligner(images).to(self.embedder.device)).float().cpu())
            for name, v in score_images(images, self.attribute_aligner, self.predictors).items():
                scores.setdefault(name, []).append(v)
            if keep_images:
                imgs.append(to_uint8(images).cpu())
        out: dict[str, object] = {"scores": {k: torch.cat(v) for k, v in scores.items()}, "embedding": torch.cat(embs)}
        if keep_images:
            out["image"] = torch.cat(imgs)
        return out


def edit_latents(evaluator: FaceEvaluator, latents: Tensor, direction: EditDirection, start_distance: float,
                 end_distance: float, steps: int, keep_images: bool = False,
                 start: dict[str, object] | None = None) -> dict[str, object]:
    """Edit ``latents`` ``[N, *shape]`` along ``direction`` and measure every step.

    Returns ``distances [S]``, ``scores {name: [N, S]}``, ``start_scores {name: [N]}``,
    ``similarity [N, S]`` (cosine of each step's identity embedding to the unedited face's),
    and with ``keep_images`` ``image`` ``[N, S, 3, H, W]`` / ``start_image`` ``[N, 3, H, W]``.
    ``start``: the evaluator's output for the unedited ``latents`` when already computed.
    """
    dist = distance_steps(start_distance, end_distance, steps)
    n = latents.shape[0]
    edited = linear_interpolate(latents.float(), direction, start_distance, end_distance, steps)  # [N, S, *]
    start = start if start is not None else evaluator(latents.float(), keep_images)
    moved = evaluator(edited.reshape(n * steps, *latents.shape[1:]), keep_images)
    e0 = torch.nn.functional.normalize(start["embedding"], dim=1)
    e = torch.nn.functional.normalize(moved["embedding"], dim=1).reshape(n, steps, -1)
    out: dict[str, object] = {
        "distances": dist,
        "scores": {k: v.reshape(n, steps) for k, v in moved["scores"].items()},
        "start_scores": start["scores"],
        "similarity": (e * e0[:, None]).sum(-1),
        "latents": edited,
    }
    if keep_images:
        out["image"] = moved["image"].reshape(n, steps, *moved["image"].shape[1:])
        out["start_image"] = start["image"]
    return out


def load_edit_latents(generator: Generator, space: str, bank_dir: str | None, indices: Sequence[int] | None,
                      seeds: Sequence[int] | None, latents: str | None) -> tuple[Tensor, list[str]]:
    """The latents to edit in ``space`` and a label for each (``bank[i]``, ``seed s``, ``file[i]``)."""
    given = [name for name, v in (("indices", indices), ("seeds", seeds), ("latents", latents)) if v]
    if len(given) != 1:
        raise ValueError(
            f"give the latents one way: --indices (bank indices, with --bank_dir), --seeds, or --latents file.npy "
            f"(got {given or 'none'})"
        )
    num_ws = int(generator.num_ws)
    if indices:
        if not bank_dir:
            raise ValueError("--indices are bank indices: pass --bank_dir too (or use --seeds / --latents)")
        from exface.exfacegan.latent_bank import LatentBank

        key = "w" if space == "w+" else space
        x = LatentBank(bank_dir).get(list(indices), (key,))[key].float()
        labels = [f"bank[{i}]" for i in indices]
    elif seeds:
        z = torch.cat([generator.sample_z(1, seed=int(s), device="cpu") for s in seeds])
        with torch.inference_mode():
            x = z if space == "z" else generator.to_w(z.to(generator.device), truncation_psi=1.0).float().cpu()
        labels = [f"seed {s}" for s in seeds]
    else:
        path = Path(latents)
        if not path.is_file():
            raise FileNotFoundError(f"latents file {path} does not exist")
        x = torch.from_numpy(np.load(path)).float()
        labels = [f"{path.name}[{i}]" for i in range(len(x))]
        want = {"z": (generator.z_dim,), "w": (generator.w_dim,), "w+": (num_ws, generator.w_dim)}[space]
        if x.ndim == 2 and space == "w+" and x.shape[1] == generator.w_dim:
            pass  # w given for a w+ edit: repeated per layer below
        elif tuple(x.shape[1:]) != want:
            raise ValueError(f"{path} holds latents of shape {tuple(x.shape[1:])}; {space} latents of this generator "
                             f"are {want}")
    if space == "w+" and x.ndim == 2:
        x = x[:, None].expand(-1, num_ws, -1).contiguous()
    return x, labels


def _grid(rows: Tensor, pad: int = 2) -> np.ndarray:
    """uint8 ``[R, C, 3, H, W]`` -> one HWC image with ``pad`` white pixels between faces."""
    r, c, _, h, w = rows.shape
    out = np.full((r * (h + pad) + pad, c * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(r):
        for j in range(c):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = rows[i, j].permute(1, 2, 0).numpy()
    return out


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="png")
    return buf.getvalue()


def _save_png(array: np.ndarray, path: Path) -> None:
    Path(path).write_bytes(_png_bytes(array))


def plot_curves(distances: Tensor, scores: dict[str, Tensor], similarity: Tensor, title: str,
                path: Path | None = None) -> bytes:
    """One panel per attribute and one for identity similarity: thin lines per latent, the mean in bold.

    Returns the PNG bytes (also written to ``path`` when given)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(scores.items()) + [("identity similarity", similarity)]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    d = distances.numpy()
    for ax, (name, v) in zip(axes.flat, panels):
        v = v.numpy()
        for line in v[:50]:
            ax.plot(d, line, color="0.7", lw=0.6)
        ax.plot(d, np.nanmean(v, 0), color="C3", lw=2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("distance", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    if path is not None:
        Path(path).write_bytes(buf.getvalue())
    return buf.getvalue()


def parts_identity(generator: Generator, aligner: Aligner, embedder: IdentityEmbedder,
                   predictors: Sequence[AttributePredictor], attribute_aligner: Aligner | None) -> dict:
    """What the parts of an edit are (:func:`~exface.report_dir.part_identity`: class, weights digest,
    non-path arguments), with the generator's truncation (it decides the rendered faces)."""
    from exface.report_dir import part_identity

    return {"generator": part_identity(generator), "aligner": part_identity(aligner),
            "attribute_aligner": part_identity(attribute_aligner if attribute_aligner is not None else aligner),
            "embedder": part_identity(embedder), "predictors": [part_identity(p) for p in predictors],
            "truncation_psi": getattr(generator, "truncation_psi", None),
            "truncation_cutoff": getattr(generator, "truncation_cutoff", None)}


def edit_identity(boundaries: str | Path, direction: EditDirection, parts: dict, start_distance: float,
                  end_distance: float, steps: int, latents: dict | None = None) -> dict:
    """What makes an edit (its ``made_by``): the boundary file's sha256, the direction (attribute,
    conditions, layer, space), the distance range, the parts (:func:`parts_identity`) and the
    latents (how they were given: bank indices, seeds or a file, and the number and sha256 of their
    values once read; None: not known). Not the batch size, nor where the edit is written."""
    from exface.report_dir import file_sha256

    ident = {"report": "exface edit",
             "boundaries": {"name": Path(boundaries).name, "sha256": file_sha256(boundaries)},
             "attribute": direction.name, "conditions": list(direction.conditions), "layer": direction.layer,
             "space": direction.space, "start_distance": float(start_distance), "end_distance": float(end_distance),
             "steps": int(steps), "parts": parts}
    if latents is not None:
        ident["latents"] = latents
    return ident


def _latents_source(indices: Sequence[int] | None, seeds: Sequence[int] | None, latents: str | None) -> dict:
    """How the latents were given (known before they are read)."""
    if indices:
        return {"bank_indices": [int(i) for i in indices]}
    if seeds:
        return {"seeds": [int(s) for s in seeds]}
    return {"file": Path(str(latents)).name} if latents else {}


def _latents_identity(x: Tensor, indices: Sequence[int] | None, seeds: Sequence[int] | None,
                      latents: str | None) -> dict:
    from exface.exfacegan.provenance import tensor_digest

    return {**_latents_source(indices, seeds, latents), "count": int(len(x)),
            "sha256": tensor_digest(x.float().contiguous())}


def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:.4g}"


@command("edit")
def edit(
    boundaries: str,
    attribute: str,
    generator: Generator,
    aligner: Aligner,
    embedder: IdentityEmbedder,
    attribute_predictors: list[AttributePredictor],
    output_dir: str,
    attribute_aligner: Aligner | None = None,
    conditions: list[str] | None = None,
    bank_dir: str | None = None,
    indices: list[int] | None = None,
    seeds: list[int] | None = None,
    latents: str | None = None,
    space: str | None = None,
    layer: int | None = None,
    start_distance: float = -3.0,
    end_distance: float = 3.0,
    steps: int = 7,
    batch_size: int = 64,
) -> None:
    """Edit latents along an InterFaceGAN attribute boundary: grids, scores and identity per step.

    Args:
        boundaries: boundary file from `exface interfacegan-fit`.
        attribute: the attribute to edit (a boundary of the file).
        generator: the generator of the bank the boundaries were fit on.
        aligner, embedder: identity embedding of each face (similarity to the unedited face).
        attribute_predictors: predictors that score every step. attribute_aligner: their crop (default aligner).
        output_dir: where grids, edit.json, edit.md and curves.png go. It holds one edit (made_by.json): a
            folder holding another edit is refused before the work; the same edit again regenerates it.
        conditions: attributes held fixed (the direction is projected off their boundaries).
        bank_dir, indices: latents by bank index. seeds: latents by seed. latents: a .npy of latents.
        space: the boundaries' space (default); another space is refused.
        layer: for per-layer w+ boundaries (``interfacegan-fit --per_layer true``), the layer whose boundary is
            edited along; only that layer moves. Required for such files (they are refused without it, with the
            layers they hold); refused for boundaries of the whole latent.
        start_distance, end_distance, steps: linear_interpolate's range (absolute distance for z/w, offset for w+).
        batch_size: images per forward pass.
    """
    t0 = time.time()
    distance_steps(start_distance, end_distance, steps)  # refuse a bad range before any work
    b = load_boundaries(boundaries)
    check_applicable(b, generator, space)
    direction = select_direction(b, attribute, conditions or (), layer)
    from exface.report_dir import ReportDir, refuse_other_report

    out = Path(output_dir)
    fix = (f"pass another --output_dir for this edit, or delete {out} to replace the edit there (the same edit "
           f"again regenerates it in place)")
    parts = parts_identity(generator, aligner, embedder, attribute_predictors, attribute_aligner)
    known = edit_identity(boundaries, direction, parts, start_distance, end_distance, steps,
                          _latents_source(indices, seeds, latents))
    refuse_other_report(out, known, "edit", fix=fix)  # before the latents are read and rendered
    x, labels = load_edit_latents(generator, b.space, bank_dir, indices, seeds, latents)
    made_by = edit_identity(boundaries, direction, parts, start_distance, end_distance, steps,
                            _latents_identity(x, indices, seeds, latents))
    with ReportDir(out, made_by, "edit", fix=fix) as rd:
        ev = FaceEvaluator(generator, b.space, aligner, embedder, attribute_predictors, attribute_aligner, batch_size)
        res = edit_latents(ev, x, direction, start_distance, end_distance, steps, keep_images=True)
        rows = torch.cat([res["start_image"][:, None], res["image"]], 1)  # [N, 1 + S, 3, H, W]
        for k in range(len(x)):
            rd.write_bytes(f"grid_{k}.png", _png_bytes(_grid(rows[k : k + 1])))
        rd.write_bytes("grid.png", _png_bytes(_grid(rows)))
        dist = res["distances"]
        names = list(res["scores"])
        per_latent = []
        for k, label in enumerate(labels):
            per_latent.append({
                "latent": label,
                "unedited": {"scores": {n: float(res["start_scores"][n][k]) for n in names}},
                "steps": [{"distance": float(dist[s]),
                           "scores": {n: float(res["scores"][n][k, s]) for n in names},
                           "identity_similarity": float(res["similarity"][k, s])} for s in range(steps)],
            })
        mean = {n: np.nanmean(res["scores"][n].numpy(), 0).tolist() for n in names}
        sim = res["similarity"].mean(0).tolist()
        settings = {"boundaries": str(boundaries), "attribute": attribute, "conditions": list(conditions or []),
                    "space": b.space, "layer": direction.layer, "start_distance": start_distance,
                    "end_distance": end_distance, "steps": steps, "generator": type(generator).__name__,
                    "embedder": type(embedder).__name__, "predictors": [type(p).__name__ for p in attribute_predictors]}
        doc = {"settings": settings, "made_by": rd.made_by, "distances": dist.tolist(), "mean_scores": mean,
               "mean_identity_similarity": sim, "latents": per_latent}
        rd.write_text("edit.json", json.dumps(doc, indent=1) + "\n")
        md = [f"# exface edit: {direction.label} ({b.space}, {len(x)} latents)", "",
              f"distances {start_distance} .. {end_distance} in {steps} steps; identity similarity is the "
              f"{type(embedder).__name__} cosine to the unedited face. Means over the latents:", "",
              "| distance | " + " | ".join(names) + " | identity similarity |",
              "| --- " * (len(names) + 2) + "|"]
        for s in range(steps):
            md.append(f"| {dist[s]:.2f} | " + " | ".join(_fmt(mean[n][s]) for n in names) + f" | {sim[s]:.4f} |")
        md.append("")
        md.append("Files: grid.png (rows: latents; first column the unedited face), grid_<k>.png, curves.png, "
                  "edit.json, made_by.json.")
        rd.write_text("edit.md", "\n".join(md) + "\n")
        rd.write_bytes("curves.png", plot_curves(dist, res["scores"], res["similarity"], f"edit {direction.label}"))
    print("\n".join(md[:2]) + f"\nwrote {out} in {time.time() - t0:.1f} s")
