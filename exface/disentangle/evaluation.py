"""Disentanglement metrics on held-out pairs, the corner baselines, the report and swap grids.

For a pair (identity source ``i``, attribute source ``a``) the output is
``o = G(mapper(E_id(i), A(a)))``. Measured per pair, by each *identity judge* (an aligner +
embedder) and each *landmark judge* (a landmark source):

- ``id_sim_to_id`` = cos(E(o), E(i)), ``id_sim_to_attr`` = cos(E(o), E(a)), and the identity
  margin ``id_sim_to_id - id_sim_to_attr`` (> 0: the output looks more like the identity source);
- ``lmk_err_to_attr`` / ``lmk_err_to_id``: mean distance of the 51 inner landmarks (points
  17..67) of ``o`` to those of ``a`` / ``i``, in percent of the image side, and the landmark
  margin ``lmk_err_to_id - lmk_err_to_attr`` (> 0: the output's landmarks are nearer the
  attribute source's);
- normalized margins: the identity margin divided by ``1 - cos(E(i), E(a))`` and the landmark
  margin divided by the sources' own landmark distance, both in [-1, 1] for outputs between
  the sources; ``balanced`` is the smaller of the two. The two trivial corners score -1 on it:
  the attribute source's own latent unchanged (output = ``a``: landmark margin +1, identity
  margin -1) and the identity source's own latent unchanged (output = ``i``: the reverse).
  They are evaluated as baselines in the same table.

Same-image pairs (``i = a``) measure reconstruction: pixel MSE and PSNR (in [0, 1] units) and
the identity similarity of the output to its source.

An identity judge that is the training loss's own embedder is marked as such in the report:
agreement with the loss network alone is not independent evidence (the report says so).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from exface.tensors import to_uint8

__all__ = [
    "IdentityJudge",
    "LandmarkJudge",
    "pair_metrics",
    "reconstruction_metrics",
    "summarize",
    "swap_grid",
    "save_png",
    "verdict",
    "report_identity",
    "write_report",
]

INNER = slice(17, 68)


@dataclass
class IdentityJudge:
    """A named identity measure: images in [-1, 1] -> unit embeddings."""

    name: str
    embed: Callable[[Tensor], Tensor]
    independent: bool


@dataclass
class LandmarkJudge:
    """A named landmark measure: images in [-1, 1] -> ``[N, 68, 2]`` pixel landmarks."""

    name: str
    landmarks: Callable[[Tensor], Tensor]
    independent: bool


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=1)


def _lmk_err(p: Tensor, q: Tensor, side: int) -> Tensor:
    """Mean inner-landmark distance ``[N]`` in percent of the image side."""
    return (p[:, INNER] - q[:, INNER]).float().norm(dim=-1).mean(1) / side * 100.0


@torch.no_grad()
def pair_metrics(out: Tensor, id_src: Tensor, attr_src: Tensor, identity_judges: Sequence[IdentityJudge],
                 landmark_judges: Sequence[LandmarkJudge]) -> dict[str, Tensor]:
    """Per-pair metrics of the outputs and of the two corner baselines, keyed
    ``<method>/<judge>/<metric>`` with method in ``mapper``, ``attr_latent``, ``id_latent``."""
    res: dict[str, Tensor] = {}
    side = out.shape[-1]
    methods = {"mapper": out, "attr_latent": attr_src, "id_latent": id_src}
    for j in identity_judges:
        e_i, e_a = j.embed(id_src), j.embed(attr_src)
        src = _cos(e_i, e_a)
        for m, img in methods.items():
            e_o = e_a if m == "attr_latent" else e_i if m == "id_latent" else j.embed(img)
            to_id, to_attr = _cos(e_o, e_i), _cos(e_o, e_a)
            res[f"{m}/{j.name}/id_sim_to_id"] = to_id
            res[f"{m}/{j.name}/id_sim_to_attr"] = to_attr
            res[f"{m}/{j.name}/id_margin"] = to_id - to_attr
            res[f"{m}/{j.name}/id_margin_norm"] = (to_id - to_attr) / (1 - src).clamp_min(1e-6)
    for j in landmark_judges:
        p_i, p_a = j.landmarks(id_src), j.landmarks(attr_src)
        src = _lmk_err(p_i, p_a, side)
        for m, img in methods.items():
            p_o = p_a if m == "attr_latent" else p_i if m == "id_latent" else j.landmarks(img)
            to_attr, to_id = _lmk_err(p_o, p_a, side), _lmk_err(p_o, p_i, side)
            res[f"{m}/{j.name}/lmk_err_to_attr"] = to_attr
            res[f"{m}/{j.name}/lmk_err_to_id"] = to_id
            res[f"{m}/{j.name}/lmk_margin"] = to_id - to_attr
            res[f"{m}/{j.name}/lmk_margin_norm"] = (to_id - to_attr) / src.clamp_min(1e-6)
    for m in methods:
        for ij in identity_judges:
            for lj in landmark_judges:
                a = res[f"{m}/{ij.name}/id_margin_norm"]
                b = res[f"{m}/{lj.name}/lmk_margin_norm"]
                res[f"{m}/{ij.name}+{lj.name}/balanced"] = torch.minimum(a, b)
                res[f"{m}/{ij.name}+{lj.name}/both_margins_positive"] = ((a > 0) & (b > 0)).float()
    return res


@torch.no_grad()
def reconstruction_metrics(out: Tensor, src: Tensor, identity_judges: Sequence[IdentityJudge]) -> dict[str, Tensor]:
    """Per-image reconstruction metrics of same-image pairs, keyed ``recon/<metric>``."""
    mse = ((out - src) / 2).float().pow(2).flatten(1).mean(1)
    res = {"recon/pixel/mse": mse, "recon/pixel/psnr": -10 * torch.log10(mse.clamp_min(1e-12))}
    for j in identity_judges:
        res[f"recon/{j.name}/id_sim_to_source"] = _cos(j.embed(out), j.embed(src))
    return res


def summarize(per_pair: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Mean, std and count of every per-pair metric."""
    out = {}
    for k, v in per_pair.items():
        v = v.double()
        out[k] = {"mean": float(v.mean()), "std": float(v.std()) if len(v) > 1 else 0.0, "n": int(len(v))}
    return out


def swap_grid(id_src: Tensor, attr_src: Tensor, outputs: Tensor) -> np.ndarray:
    """uint8 HWC grid: top row the attribute sources, left column the identity sources,
    cell (r, c) the output for identity r and attributes c (``outputs`` is ``[R, C, 3, H, W]``)."""
    r, c = outputs.shape[:2]
    h, w = outputs.shape[-2:]
    grid = np.full(((r + 1) * h, (c + 1) * w, 3), 255, dtype=np.uint8)
    for j in range(c):
        grid[:h, (j + 1) * w:(j + 2) * w] = to_uint8(attr_src[j:j + 1])[0].permute(1, 2, 0).cpu().numpy()
    for i in range(r):
        grid[(i + 1) * h:(i + 2) * h, :w] = to_uint8(id_src[i:i + 1])[0].permute(1, 2, 0).cpu().numpy()
        cells = to_uint8(outputs[i]).permute(0, 2, 3, 1).cpu().numpy()
        for j in range(c):
            grid[(i + 1) * h:(i + 2) * h, (j + 1) * w:(j + 2) * w] = cells[j]
    return grid


def png_bytes(grid: np.ndarray, min_side: int = 512, text: dict[str, str] | None = None) -> bytes:
    """A uint8 HWC image as PNG bytes, nearest-upscaled by an integer factor to >= ``min_side`` px;
    ``text``: PNG text chunks (e.g. what made the image)."""
    import io

    from PIL import Image, PngImagePlugin

    k = max(1, math.ceil(min_side / max(grid.shape[:2])))
    img = Image.fromarray(grid)
    if k > 1:
        img = img.resize((grid.shape[1] * k, grid.shape[0] * k), Image.NEAREST)
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(grid: np.ndarray, path: str | Path, min_side: int = 512, text: dict[str, str] | None = None) -> Path:
    """Write a uint8 HWC image as PNG (atomically), nearest-upscaled by an integer factor to >= ``min_side`` px."""
    from exface.exfacegan.run_files import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png_bytes(grid, min_side, text))
    return path


_METHOD_NAMES = {
    "mapper": "mapper output",
    "attr_latent": "attr. source's own latent (baseline)",
    "id_latent": "identity source's own latent (baseline)",
}


def _fmt(s: dict[str, dict[str, float]], key: str, digits: int = 3) -> str:
    if key not in s:
        return "—"
    return f"{s[key]['mean']:.{digits}f} ± {s[key]['std']:.{digits}f}"


def _markdown(result: dict) -> str:
    s = result["summary"]
    ij, lj = result["identity_judges"], result["landmark_judges"]
    lines = [f"# Identity/attribute disentanglement report", ""]
    lines += [result["verdict"], ""]
    lines += [f"{result['pairs']} held-out cross-identity pairs and {result['recon_pairs']} same-image pairs "
              f"(generator seeds never used in training); mean ± std over pairs.", ""]
    for j in ij:
        flag = "" if j["independent"] else " — **the training loss's own embedder: not independent evidence**"
        lines.append(f"- identity judge `{j['name']}`{flag}")
    for j in lj:
        flag = "" if j["independent"] else " — the training loss's own landmark net"
        lines.append(f"- landmark judge `{j['name']}`{flag}")
    lines.append("")
    for ji in ij:
        n = ji["name"]
        lines += [f"## Identity ({n})", "", "| method | cos to identity source | cos to attribute source | margin | normalized margin |",
                  "| --- | --- | --- | --- | --- |"]
        for m, label in _METHOD_NAMES.items():
            lines.append(f"| {label} | {_fmt(s, f'{m}/{n}/id_sim_to_id')} | {_fmt(s, f'{m}/{n}/id_sim_to_attr')} | "
                         f"{_fmt(s, f'{m}/{n}/id_margin')} | {_fmt(s, f'{m}/{n}/id_margin_norm')} |")
        lines.append("")
    for jl in lj:
        n = jl["name"]
        lines += [f"## Landmarks ({n}; inner 51 points, % of the image side)", "",
                  "| method | error to attribute source | error to identity source | margin | normalized margin |",
                  "| --- | --- | --- | --- | --- |"]
        for m, label in _METHOD_NAMES.items():
            lines.append(f"| {label} | {_fmt(s, f'{m}/{n}/lmk_err_to_attr', 2)} | {_fmt(s, f'{m}/{n}/lmk_err_to_id', 2)} | "
                         f"{_fmt(s, f'{m}/{n}/lmk_margin', 2)} | {_fmt(s, f'{m}/{n}/lmk_margin_norm')} |")
        lines.append("")
    lines += ["## Combined (min of the two normalized margins; > 0 means both margins are positive)", "",
              "| method | judges | balanced | pairs with both margins > 0 |", "| --- | --- | --- | --- |"]
    for m, label in _METHOD_NAMES.items():
        for ji in ij:
            for jl in lj:
                k = f"{ji['name']}+{jl['name']}"
                frac = s.get(f"{m}/{k}/both_margins_positive", {}).get("mean", float("nan"))
                lines.append(f"| {label} | {k} | {_fmt(s, f'{m}/{k}/balanced')} | {frac:.1%} |")
    lines += ["", "## Reconstruction (same-image pairs)", "", "| metric | value |", "| --- | --- |"]
    for k in sorted(s):
        if k.startswith("recon/"):
            lines.append(f"| {k[6:]} | {_fmt(s, k)} |")
    lines += ["", "![swap grid](swap_grid.png)", "",
              "Swap grid: top row the attribute sources, left column the identity sources, "
              "cell (r, c) the output for identity r with the attributes of c.", ""]
    if result.get("settings"):
        lines += ["## Settings", "", "```json", json.dumps(result["settings"], indent=1, default=str), "```", ""]
    return "\n".join(lines)


def verdict(summary: dict[str, dict[str, float]], identity_judges: Sequence[str], landmark_judges: Sequence[str]) -> str:
    """One line per judge pair: are both mean margins of the mapper positive?"""
    parts = []
    for ji in identity_judges:
        for jl in landmark_judges:
            idm = summary[f"mapper/{ji}/id_margin"]["mean"]
            lmm = summary[f"mapper/{jl}/lmk_margin"]["mean"]
            ok = idm > 0 and lmm > 0
            parts.append(
                f"**{'Both margins positive' if ok else 'Not both margins positive'}** ({ji} + {jl}): "
                f"identity margin {idm:+.3f}, landmark margin {lmm:+.2f} % of the side."
            )
    return "\n".join(parts)


#: hyperparameters that say where or how fast the report is made, not what it measures
_NOT_IDENTITY = ("report_dir", "eval_batch_size")


def report_identity(settings: dict | None, pairs: int, recon_pairs: int, identity_judges: Sequence[IdentityJudge],
                    landmark_judges: Sequence[LandmarkJudge], checkpoint_sha256: str | None = None) -> dict:
    """What makes a disentanglement report (its ``made_by``): the checkpoint (resolved path, sha256,
    global step) when it was read from one, the recipe's parts and hyperparameters (without
    ``report_dir`` and ``eval_batch_size``), the identity-centring seed, the pair counts (they
    pick the held-out seeds) and the judges. Not timings, nor where the report is written."""
    from exface.report_dir import file_sha256

    s = dict(settings or {})
    hp = s.get("hparams")
    ident: dict = {"report": "exface disentangle report"}
    ck = s.get("checkpoint")
    if ck is not None:
        path = Path(str(ck))
        digest = checkpoint_sha256 or (file_sha256(path) if path.is_file() else None)
        ident["checkpoint"] = {"path": str(path.resolve()), "sha256": digest, "global_step": s.get("global_step")}
    ident["hparams"] = {k: v for k, v in hp.items() if k not in _NOT_IDENTITY} if isinstance(hp, dict) else hp
    ident["identity_mean_first_seed"] = s.get("identity_mean_first_seed")
    ident["pairs"], ident["recon_pairs"] = int(pairs), int(recon_pairs)
    ident["identity_judges"] = [{"name": j.name, "independent": j.independent} for j in identity_judges]
    ident["landmark_judges"] = [{"name": j.name, "independent": j.independent} for j in landmark_judges]
    return ident


def report_fix(out_dir: str | Path) -> str:
    """The way out when ``out_dir`` holds another disentanglement report."""
    return (f"pass another output_dir (disentangle-report) or report_dir (the recipe) for this report, or delete "
            f"{out_dir} to replace the report there (the same checkpoint, recipe and pairs again replace it)")


def refuse_other_disentangle_report(out_dir: str | Path, settings: dict | None, pairs: int,
                                    identity_judges: Sequence[IdentityJudge],
                                    landmark_judges: Sequence[LandmarkJudge]) -> None:
    """Before the evaluation (minutes) or the training that ends in the report: refuse ``out_dir`` when it
    holds another report, on the part of :func:`report_identity` known then (all but the number of
    same-image pairs, and what ``settings`` lacks)."""
    from exface.report_dir import refuse_other_report

    known = report_identity(settings, pairs, 0, identity_judges, landmark_judges)
    del known["recon_pairs"]
    for key in ("checkpoint", "identity_mean_first_seed"):
        if (settings or {}).get(key) is None:
            known.pop(key, None)
    refuse_other_report(out_dir, known, "disentangle report", fix=report_fix(out_dir))


def write_report(out_dir: str | Path, per_pair: dict[str, Tensor], grid: np.ndarray,
                 identity_judges: Sequence[IdentityJudge], landmark_judges: Sequence[LandmarkJudge],
                 settings: dict | None = None) -> dict:
    """Write ``report.json``, ``report.md``, ``per_pair.npz`` and ``swap_grid.png`` to ``out_dir``.

    Through :class:`~exface.report_dir.ReportDir`: every file atomically, ``made_by.json`` (and
    ``report.json`` ``made_by``) recording :func:`report_identity`; a folder holding another
    report (another checkpoint, recipe or pair count) is refused, the same report replaces it.
    """
    import io

    from exface.report_dir import ReportDir

    out_dir = Path(out_dir)
    summary = summarize(per_pair)
    first = next(k for k in per_pair if k.startswith("mapper/"))
    recon = next((k for k in per_pair if k.startswith("recon/")), None)
    pairs, recon_pairs = int(len(per_pair[first])), int(len(per_pair[recon])) if recon else 0
    made_by = report_identity(settings, pairs, recon_pairs, identity_judges, landmark_judges)
    result = {
        "format": "exface-disentangle-report",
        "pairs": pairs,
        "recon_pairs": recon_pairs,
        "identity_judges": [{"name": j.name, "independent": j.independent} for j in identity_judges],
        "landmark_judges": [{"name": j.name, "independent": j.independent} for j in landmark_judges],
        "verdict": verdict(summary, [j.name for j in identity_judges], [j.name for j in landmark_judges]),
        "summary": summary,
        "settings": settings or {},
    }
    fix = report_fix(out_dir)
    npz = io.BytesIO()
    np.savez(npz, **{k.replace("/", "__"): v.cpu().numpy() for k, v in per_pair.items()})
    with ReportDir(out_dir, made_by, "disentangle report", fix=fix) as rd:
        result["made_by"] = rd.made_by
        rd.write_bytes("swap_grid.png", png_bytes(grid))
        rd.write_bytes("per_pair.npz", npz.getvalue())
        rd.write_text("report.json", json.dumps(result, indent=1, default=str))
        rd.write_text("report.md", _markdown(result))
    return result
