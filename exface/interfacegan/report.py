"""``exface edit-report``: InterFaceGAN's re-scoring analysis over held-out latents.

For every edited direction (each attribute boundary, and each conditional direction such
as "age given gender_male") the held-out latents are moved by ``linear_interpolate`` over
the distance range and every step is scored again by every attribute predictor. The
report gives:

- the change matrix: edited direction x measured attribute, the mean over latents of the
  least-squares slope of the score against distance (score units per unit of distance),
  as a table and as a heat map in units of each attribute's standard deviation over the
  unedited held-out faces (so years and probabilities share one colour scale);
- for the edited attribute itself: the fraction of latents whose score rises at every step
  (monotonic), the mean score at the first and last step, and the identity similarity of
  the last step to the unedited face (by the recipe's embedder, which had no part in the
  attribute scores the boundaries were learned from);
- the cosine matrix of the boundaries' normals.

Each direction's re-scored steps are kept in ``output_dir/steps/``, keyed by what made them
(the direction, the latents, the distances, and the fingerprint of every part: class,
arguments and weights digest of the generator, the aligners, the embedder and each
predictor, plus the generator's truncation): an interrupted report resumes, runs over
overlapping direction lists share the work, and a changed part or checkpoint recomputes.

The output folder is a :class:`~exface.report_dir.ReportDir`: ``made_by.json`` records what
made the report (:func:`report_identity`: the boundary file's sha256, the directions with their
layer, the held-out latents' count and seed, the distances and every part). A folder holding
another report (other directions, say) is refused before any face is rendered; the same report
again regenerates it, and its files this run does not write (a ``conditional_matrix.png`` of a
report without conditional directions, say) are removed. Directions run as separate processes
share their re-scored steps through ``cache_dir`` (default ``output_dir/steps``): give each
such run its own ``output_dir`` and the same ``cache_dir``.

Per-layer w+ boundary files (``interfacegan-fit --per_layer true``) need ``layer``: every
direction is then that layer's boundary (labelled ``age@layer 3``); without it they are refused.

Held-out latents are fresh draws ``generator.sample_z(num_latents, seed=seed)`` (mapped to w
for w/w+ boundaries), not bank latents: the boundaries never saw them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from exface.alignment.base import Aligner
from exface.attributes.base import AttributePredictor
from exface.boundaries.base import Boundaries
from exface.commands import command
from exface.embedders.base import IdentityEmbedder
from exface.exfacegan.provenance import part_fingerprint
from exface.generators.base import Generator
from exface.interfacegan.directions import EditDirection, check_applicable, load_boundaries, select_direction
from exface.interfacegan.edit import FaceEvaluator, edit_latents
from exface.interfacegan.manipulation import distance_steps

__all__ = ["score_slopes", "monotonic_fraction", "held_out_latents", "rescoring_report", "report_identity",
           "write_report", "edit_report"]


def score_slopes(distances: Tensor, scores: Tensor) -> Tensor:
    """``[N]`` least-squares slope of ``scores [N, S]`` against ``distances [S]``, over each row's finite scores."""
    d = distances.double()[None].expand_as(scores)
    ok = torch.isfinite(scores)
    w = ok.double()
    cnt = w.sum(1)
    s = torch.where(ok, scores.double(), torch.zeros_like(scores, dtype=torch.float64))
    md = (d * w).sum(1) / cnt
    ms = (s * w).sum(1) / cnt
    cov = ((d - md[:, None]) * (s - ms[:, None]) * w).sum(1)
    var = ((d - md[:, None]) ** 2 * w).sum(1)
    out = cov / var
    out[cnt < 2] = float("nan")
    return out.float()


def monotonic_fraction(scores: Tensor) -> float:
    """Share of rows of ``scores [N, S]`` that rise at every step (rows with a NaN count as not rising)."""
    return float((scores.diff(dim=1) > 0).all(1).double().mean())


def held_out_latents(generator: Generator, space: str, num_latents: int, seed: int) -> Tensor:
    """Fresh latents of ``space`` drawn from ``seed``: z, or untruncated w as banks store it (w+: w per layer)."""
    z = generator.sample_z(num_latents, seed=seed, device="cpu")
    if space == "z":
        return z
    with torch.inference_mode():
        w = torch.cat([generator.to_w(z[i : i + 256].to(generator.device), truncation_psi=1.0).float().cpu() for i in range(0, len(z), 256)])
    return w[:, None].expand(-1, generator.num_ws, -1).contiguous() if space == "w+" else w


def _heatmap(matrix: np.ndarray, rows: list[str], cols: list[str], title: str, unit: str) -> bytes:
    """The PNG bytes of a labelled heat map of ``matrix`` (a symmetric colour scale)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(cols), 1.2 + 0.5 * len(rows)))
    lim = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=unit)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _fingerprint(*tensors: Tensor, extra: object = None) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _cached(path: Path | None, key: str, compute):
    """``compute()``, or the result stored at ``path`` under the same ``key`` (written atomically)."""
    if path is not None and path.is_file():
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("key") == key:
            return data["value"]
    value = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
        torch.save({"key": key, "value": value}, tmp)
        tmp.replace(path)
    return value


def evaluator_parts(evaluator: FaceEvaluator) -> dict:
    """What the evaluator's scores depend on: every part's fingerprint, the truncation and the space."""
    g = evaluator.generator
    return {"generator": part_fingerprint(g), "aligner": part_fingerprint(evaluator.aligner),
            "attribute_aligner": part_fingerprint(evaluator.attribute_aligner),
            "embedder": part_fingerprint(evaluator.embedder),
            "predictors": [part_fingerprint(p) for p in evaluator.predictors],
            "truncation_psi": getattr(g, "truncation_psi", None), "truncation_cutoff": getattr(g, "truncation_cutoff", None),
            "space": evaluator.space}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label)


def rescoring_report(boundaries: Boundaries, directions: Sequence[EditDirection], evaluator: FaceEvaluator,
                     latents: Tensor, start_distance: float, end_distance: float, steps: int,
                     cache_dir: Path | None = None) -> dict:
    """The numbers of the report (see the module docstring) as a JSON-able dict.

    With ``cache_dir`` each direction's re-scored steps are kept there (keyed by the
    direction, the latents, the distances and :func:`evaluator_parts`), so an interrupted
    report resumes, reports over overlapping direction lists share their work, and a report
    with another part (arguments, crop, checkpoint, truncation) recomputes instead of reusing.
    """
    parts = evaluator_parts(evaluator)
    lat_key = _fingerprint(latents, extra=parts)
    start = _cached(cache_dir and cache_dir / "start.pt", lat_key,
                    lambda: {k: v for k, v in evaluator(latents.float()).items() if k != "image"})
    std = {n: float(np.nanstd(v.numpy())) for n, v in start["scores"].items()}
    rows = []
    for direction in directions:
        t0 = time.time()
        key = _fingerprint(direction.normal, latents, extra=[direction.label, direction.offset, direction.layer, parts,
                                                              start_distance, end_distance, steps])

        def run(direction=direction):
            r = edit_latents(evaluator, latents, direction, start_distance, end_distance, steps, start=start)
            return {"distances": r["distances"], "scores": r["scores"], "similarity": r["similarity"]}

        res = _cached(cache_dir and cache_dir / f"{_slug(direction.label)}.pt", key, run)
        names = list(res["scores"])
        slopes = {n: float(np.nanmean(score_slopes(res["distances"], res["scores"][n]).numpy())) for n in names}
        own = res["scores"][direction.name]
        rows.append({
            "direction": direction.label, "attribute": direction.name, "conditions": direction.conditions,
            "slope": slopes,
            "slope_in_std": {n: slopes[n] / std[n] if std[n] > 0 else float("nan") for n in names},
            "monotonic_fraction": monotonic_fraction(own),
            "rises_end_vs_start": float((own[:, -1] > own[:, 0]).double().mean()),
            "mean_first_step": {n: float(np.nanmean(res["scores"][n][:, 0].numpy())) for n in names},
            "mean_last_step": {n: float(np.nanmean(res["scores"][n][:, -1].numpy())) for n in names},
            "mean_change_first_to_last": {
                n: float(np.nanmean((res["scores"][n][:, -1] - res["scores"][n][:, 0]).numpy())) for n in names},
            "identity_similarity_per_step": res["similarity"].mean(0).tolist(),
            "identity_similarity_last_step": float(res["similarity"][:, -1].mean()),
            "identity_similarity_first_step": float(res["similarity"][:, 0].mean()),
            "seconds": round(time.time() - t0, 1),
        })
    names_b = list(boundaries.meta.get("attribute_names") or [])
    n = torch.nn.functional.normalize(boundaries.normals.double(), dim=1)
    return {"distances": distance_steps(start_distance, end_distance, steps).tolist(), "num_latents": len(latents),
            "attribute_std": std, "directions": rows, "boundary_names": names_b,
            "boundary_cosine": (n @ n.T).tolist(), "parts": parts}


def _md_table(rows: list[dict], names: list[str], key: str) -> list[str]:
    out = ["| edited \\ measured | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
    for r in rows:
        out.append(f"| {r['direction']} | " + " | ".join(f"{r[key][n]:+.4g}" for n in names) + " |")
    return out


def report_identity(boundaries: str | Path, directions: Sequence[EditDirection], parts: dict, num_latents: int,
                    seed: int, start_distance: float, end_distance: float, steps: int, space: str) -> dict:
    """What makes a re-scoring report (its ``made_by``): the boundary file's sha256, every direction
    (its label: attribute, ``@layer K``, ``given`` conditions), the held-out latents (count and
    seed), the distance range, the space and the parts
    (:func:`~exface.interfacegan.edit.parts_identity`). Not the batch size, the cache folder, nor
    where the report is written."""
    from exface.report_dir import file_sha256

    return {"report": "exface edit-report",
            "boundaries": {"name": Path(boundaries).name, "sha256": file_sha256(boundaries)},
            "directions": [d.label for d in directions],  # attribute, @layer and conditions: one line per report
            "num_latents": int(num_latents), "seed": int(seed), "start_distance": float(start_distance),
            "end_distance": float(end_distance), "steps": int(steps), "space": space, "parts": parts}


def write_report(report: dict, out: "Path | ReportDir", made_by: dict | None = None) -> str:
    """report.json, report.md and the heat maps; returns the markdown.

    ``out``: a :class:`~exface.report_dir.ReportDir` held for the report, or a folder (then opened
    as one for ``made_by``, default ``report["made_by"]``). Only the files of this report are
    written, so an earlier same-identity report's map this one does not draw is removed.
    """
    from exface.report_dir import ReportDir

    if not isinstance(out, ReportDir):
        ident = made_by if made_by is not None else report.get("made_by")
        if ident is None:
            raise ValueError("write_report into a folder needs the report's made_by (see report_identity)")
        with ReportDir(out, ident, "edit report") as rd:
            return write_report(report, rd)
    rd = out
    report["made_by"] = rd.made_by
    rd.write_text("report.json", json.dumps(report, indent=1) + "\n")
    rows = report["directions"]
    names = list(rows[0]["slope"])
    plain = [r for r in rows if not r["conditions"]]
    cond = [r for r in rows if r["conditions"]]
    md = [f"# InterFaceGAN re-scoring report ({report['num_latents']} held-out latents)", "",
          f"distances {report['distances'][0]} .. {report['distances'][-1]} in {len(report['distances'])} steps.", "",
          "## The edited attribute", "",
          "| direction | monotonic rise | end > start | first step | last step | identity similarity (last / first step) |",
          "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        a = r["attribute"]
        md.append(f"| {r['direction']} | {r['monotonic_fraction']:.3f} | {r['rises_end_vs_start']:.3f} | "
                  f"{r['mean_first_step'][a]:.4g} | {r['mean_last_step'][a]:.4g} | "
                  f"{r['identity_similarity_last_step']:.4f} / {r['identity_similarity_first_step']:.4f} |")
    md += ["", "## Mean change per unit distance (score units)", ""] + _md_table(rows, names, "slope")
    md += ["", "## Same, in standard deviations of each attribute over the unedited faces", ""]
    md += _md_table(rows, names, "slope_in_std")
    md += ["", "## Cosine of the boundaries' normals", "",
           "| | " + " | ".join(report["boundary_names"]) + " |", "| --- " * (len(report["boundary_names"]) + 1) + "|"]
    for name, row in zip(report["boundary_names"], report["boundary_cosine"]):
        md.append(f"| {name} | " + " | ".join(f"{v:+.3f}" for v in row) + " |")
    md += ["", "Files: change_matrix.png, conditional_matrix.png (when conditional directions were edited), "
           "cosine_matrix.png, report.json."]
    text = "\n".join(md) + "\n"
    rd.write_text("report.md", text)
    for subset, fname, title in ((plain, "change_matrix.png", "change per unit distance"),
                                 (cond, "conditional_matrix.png", "conditional edits: change per unit distance")):
        if subset:
            m = np.array([[r["slope_in_std"][n] for n in names] for r in subset])
            rd.write_bytes(fname, _heatmap(m, [r["direction"] for r in subset], names, title,
                                           "attribute std per unit distance"))
    cos = np.array(report["boundary_cosine"])
    rd.write_bytes("cosine_matrix.png", _heatmap(cos, report["boundary_names"], report["boundary_names"],
                                                 "cosine of boundary normals", "cosine"))
    return text


@command("edit-report")
def edit_report(
    boundaries: str,
    generator: Generator,
    aligner: Aligner,
    embedder: IdentityEmbedder,
    attribute_predictors: list[AttributePredictor],
    output_dir: str,
    attribute_aligner: Aligner | None = None,
    attributes: list[str] | None = None,
    conditional: list[list[str]] | None = None,
    num_latents: int = 200,
    seed: int = 1000,
    start_distance: float = -3.0,
    end_distance: float = 3.0,
    steps: int = 7,
    batch_size: int = 64,
    layer: int | None = None,
    cache_dir: str | None = None,
) -> None:
    """Re-score edits over held-out latents: change matrix, conditional edits, boundary cosines.

    Args:
        boundaries: boundary file from `exface interfacegan-fit`.
        generator: the bank's generator. aligner, embedder: identity similarity to the unedited face.
        attribute_predictors: predictors that re-score every step. attribute_aligner: their crop (default aligner).
        output_dir: report.md, report.json and the heat maps. It holds one report (made_by.json): a folder
            holding another report (other directions, latents, distances, boundaries or parts) is refused before
            any face is rendered; the same report again regenerates it without the earlier run's leftovers.
        attributes: boundaries to edit along (default: all in the file).
        conditional: conditional directions, each [edited, held fixed, ...], e.g. [[age, gender_male]].
        num_latents: held-out latents (fresh draws from seed). seed: their seed.
        start_distance, end_distance, steps: linear_interpolate's range.
        batch_size: images per forward pass.
        layer: for per-layer w+ boundaries (``interfacegan-fit --per_layer true``), the layer every direction
            edits (its boundaries; directions are labelled ``age@layer K``). Required for such files (they are
            refused without it, with the layers they hold); refused for boundaries of the whole latent.
        cache_dir: where each direction's re-scored steps are kept (default output_dir/steps); reports in other
            output_dirs that share a cache_dir share the work of their common directions.
    """
    t0 = time.time()
    distance_steps(start_distance, end_distance, steps)
    b = load_boundaries(boundaries)
    check_applicable(b, generator)
    names = list(dict.fromkeys(b.meta.get("attribute_names") or [])) if attributes is None else list(attributes)
    directions = [select_direction(b, a, layer=layer) for a in names]
    for entry in conditional or []:
        if len(entry) < 2:
            raise ValueError(f"a conditional direction is [edited, held fixed, ...]; got {entry}")
        directions.append(select_direction(b, entry[0], entry[1:], layer=layer))
    if not directions:
        raise ValueError("nothing to edit: pass --attributes (boundaries to edit along) and/or --conditional")
    if num_latents < 2:
        raise ValueError(f"num_latents must be >= 2, got {num_latents}")
    from exface.interfacegan.edit import parts_identity
    from exface.report_dir import ReportDir

    out = Path(output_dir)
    made_by = report_identity(boundaries, directions, parts_identity(generator, aligner, embedder, attribute_predictors,
                                                                     attribute_aligner),
                              num_latents, seed, start_distance, end_distance, steps, b.space)
    fix = (f"pass another --output_dir for this report (with --cache_dir {Path(cache_dir or out / 'steps')} its "
           f"directions already re-scored are reused), or delete {out} to replace the report there (the same report "
           f"again regenerates it in place)")
    with ReportDir(out, made_by, "edit report", fix=fix) as rd:  # refuses another report before any face is rendered
        ev = FaceEvaluator(generator, b.space, aligner, embedder, attribute_predictors, attribute_aligner, batch_size)
        latents = held_out_latents(generator, b.space, num_latents, seed)
        report = rescoring_report(b, directions, ev, latents, start_distance, end_distance, steps,
                                  cache_dir=Path(cache_dir) if cache_dir else out / "steps")
        report["settings"] = {"boundaries": str(boundaries), "seed": seed, "embedder": type(embedder).__name__,
                              "predictors": [type(p).__name__ for p in attribute_predictors], "space": b.space,
                              "layer": layer}
        text = write_report(report, rd)
    print(text + f"\nwrote {output_dir} in {time.time() - t0:.1f} s")
