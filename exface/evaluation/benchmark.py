"""``exface benchmark``: face-verification accuracy of an identity embedder on pair sets.

Each dataset (an insightface ``.bin`` such as ``lfw.bin``/``cfp_fp.bin``/``agedb_30.bin``, or
an LFW ``pairs.txt`` with its image folder beside it) is embedded once per image, pairs are
scored by cosine similarity, and :func:`~exface.evaluation.verification.evaluate_verification`
runs the k-fold protocol plus AUC, EER and TAR@FAR. Results go to ``results.json`` and a
``report.md`` (both written atomically) and a table on stdout.

The library form is :func:`benchmark_set` (one :class:`VerificationSet`) and
:func:`run_benchmark` (files in, result dicts out); the subcommand wraps the latter.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from exface.alignment.base import Aligner
from exface.commands import command
from exface.embedders.base import IdentityEmbedder
from exface.evaluation.datasets import VerificationSet, load_verification_set
from exface.evaluation.verification import (
    contiguous_folds,
    cosine_scores,
    evaluate_verification,
    stratified_folds,
)

__all__ = ["default_aligner", "embed_images", "benchmark_set", "run_benchmark", "format_table", "benchmark_command"]

#: The FARs the report shows (evaluate_verification's keys).
REPORT_FARS = (1e-3, 1e-2)


def default_aligner(vs: VerificationSet, embedder: IdentityEmbedder) -> Aligner:
    """The aligner the benchmark uses when none is given.

    Aligned sets (insightface ``.bin``: ArcFace-aligned 112x112 crops) are only resized to
    the embedder's input. Photos (LFW) get landmark alignment from face-api's 68-point net,
    started on LFW's usual face box: dlib face chips for 150x150 embedders (dlib/face-api's
    ResNet), the ArcFace template otherwise.
    """
    from exface.alignment import ArcFaceAligner, DlibChipAligner, ResizeAligner

    size = tuple(int(s) for s in embedder.input_size)
    if vs.aligned:
        return ResizeAligner(size)
    box = {"box": "lfw_deepfunneled"}
    if size == (150, 150):
        return DlibChipAligner(size=150, source_args=box)
    return ArcFaceAligner(output_size=size, source_args=box)


def _image_batches(vs: VerificationSet, batch_size: int) -> Iterator[tuple[int, Tensor]]:
    """``(first index, [B, 3, H, W] in [-1, 1])`` over all images; a batch holds one image size."""
    start, buf = 0, []
    for i in range(vs.num_images):
        img = vs.image(i)
        if buf and (len(buf) == batch_size or img.shape != buf[0].shape):
            yield start, torch.from_numpy(np.stack(buf)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            start, buf = i, []
        buf.append(img)
    if buf:
        yield start, torch.from_numpy(np.stack(buf)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def embed_images(
    vs: VerificationSet,
    embedder: IdentityEmbedder,
    aligner: Aligner,
    batch_size: int = 64,
    flip: bool = False,
    device: str | torch.device = "cpu",
    no_face: list[int] | None = None,
) -> np.ndarray:
    """Unit-length embeddings ``[M, D]`` of every image of ``vs`` (aligned, then embedded).

    With ``flip`` each crop's embedding is the normalized sum of the crop's and its mirror
    image's embeddings (insightface's test-time flip). When the aligner runs a face detector
    (it sets ``last_found``), the indices of images without a face are appended to
    ``no_face`` (they are embedded from the aligner's fallback box).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    embedder = embedder.to(device).eval()
    aligner = aligner.to(device).eval()
    out = np.zeros((vs.num_images, embedder.embedding_dim), dtype=np.float32)
    for start, x in _image_batches(vs, batch_size):
        crops = aligner(x.to(device))
        found = getattr(aligner, "last_found", None)
        if no_face is not None and found is not None:
            no_face.extend(start + int(i) for i in torch.nonzero(~found.cpu()).flatten())
        if tuple(crops.shape[-2:]) != tuple(embedder.input_size):
            raise ValueError(
                f"the aligner {type(aligner).__name__} makes {tuple(crops.shape[-2:])} crops but "
                f"{type(embedder).__name__} takes {tuple(embedder.input_size)}; set the aligner's output size"
            )
        e = embedder(crops).float()
        if flip:
            e = torch.nn.functional.normalize(e + embedder(crops.flip(-1)).float(), dim=1)
        out[start : start + len(x)] = e.cpu().numpy()
    return out


def _fold_ids(vs: VerificationSet, folds: int) -> tuple[np.ndarray, str]:
    """The fold split for ``vs`` and a description of it."""
    n = len(vs)
    k = min(folds, n)
    if vs.folds is not None and len(np.unique(vs.folds)) == folds:
        return vs.folds, f"the {folds} official folds"
    if vs.folds is not None:  # class-ordered pairs (LFW): keep both classes in every fold
        return stratified_folds(vs.issame, k), f"{k} stratified folds"
    return contiguous_folds(n, k), f"{k} contiguous folds (insightface's split)"


def _describe(aligner: Aligner) -> str:
    """A one-line description of an aligner (nn.Module's repr lists every layer)."""
    parts = [f"output_size={tuple(aligner.output_size)}"]
    if hasattr(aligner, "template"):
        parts.append(f"template={aligner.template!r}")
    source = getattr(aligner, "source", None)
    if source is not None:
        box = getattr(source, "box", None)
        parts.append(f"source={type(source).__name__}" + (f"(box={box!r})" if box is not None else ""))
    return f"{type(aligner).__name__}({', '.join(parts)})"


def _image_name(vs: VerificationSet, i: int) -> str:
    """A readable name of image ``i``: its file name (``Name/Name_0001.jpg``) or ``#i``."""
    if vs.paths is not None:
        p = Path(vs.paths[i])
        return f"{p.parent.name}/{p.name}"
    return f"#{i}"


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def benchmark_set(
    vs: VerificationSet,
    embedder: IdentityEmbedder,
    aligner: Aligner | None = None,
    folds: int = 10,
    batch_size: int = 64,
    flip: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Verification figures of ``embedder`` on one set: a JSON-ready dict (NaN -> ``None``).

    Keys: ``dataset``, ``num_pairs``, ``num_same``, ``accuracy``, ``accuracy_std``,
    ``threshold`` (cosine), ``auc``, ``eer``, ``tar_at_far``, ``fold_accuracies``,
    ``fold_thresholds``, ``folds`` (how pairs were split), ``aligner``, ``seconds``,
    ``notes`` (caveats, e.g. a set with a single class has no AUC).
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (the threshold is chosen on the other folds), got {folds}")
    if len(vs) < 2:
        raise ValueError(f"{vs.name} has {len(vs)} pair(s); the k-fold protocol needs at least 2")
    aligner = default_aligner(vs, embedder) if aligner is None else aligner
    t0 = time.perf_counter()
    no_face: list[int] = []
    emb = embed_images(vs, embedder, aligner, batch_size, flip, device, no_face)
    scores = cosine_scores(emb[vs.pairs[:, 0]], emb[vs.pairs[:, 1]])
    fold_ids, how = _fold_ids(vs, folds)
    notes = []
    no_face_names = [_image_name(vs, i) for i in no_face]
    if no_face_names:
        notes.append(
            f"the detector found no face in {len(no_face_names)} image(s), embedded from the "
            f"aligner's fallback box: {', '.join(no_face_names)}"
        )
    if len(np.unique(fold_ids)) < folds:
        notes.append(f"only {len(vs)} pairs: used {how}")
    n_same = int(vs.issame.sum())
    if n_same in (0, len(vs)):
        kind = "matched" if n_same else "mismatched"
        notes.append(
            f"all {len(vs)} pairs are {kind}: accuracy is trivial (any threshold on the right side "
            f"of every score) and AUC, EER and TAR@FAR are undefined"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="all pairs belong to one class")
        res = evaluate_verification(scores, vs.issame, fold_ids, fars=REPORT_FARS)
    out = {
        "dataset": vs.name,
        **res.to_dict(),
        "folds": how,
        "aligner": _describe(aligner),
        "flip": bool(flip),
        "score_mean_same": float(scores[vs.issame].mean()) if n_same else None,
        "score_mean_diff": float(scores[~vs.issame].mean()) if n_same < len(vs) else None,
        "seconds": round(time.perf_counter() - t0, 2),
        "no_face": no_face_names,
        "notes": notes,
    }
    return _nan_to_none(out)


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}" if pct else f"{x:.4f}"


def format_table(results: list[dict[str, Any]], markdown: bool = False) -> str:
    """The per-dataset figures as a text (or Markdown) table; rates in percent."""
    head = ["dataset", "pairs", "accuracy %", "threshold", "AUC %", "EER %", "TAR@FAR=1e-3 %", "TAR@FAR=1e-2 %"]
    rows = []
    for r in results:
        tar = r.get("tar_at_far") or {}
        rows.append([
            r["dataset"],
            str(r["num_pairs"]),
            f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}",
            _fmt(r["threshold"], pct=False),
            _fmt(r["auc"]),
            _fmt(r["eer"]),
            _fmt(tar.get("1e-03")),
            _fmt(tar.get("1e-02")),
        ])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _report(results: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = ["# Face-verification benchmark", ""]
    lines += [f"- {k}: `{v}`" for k, v in settings.items()]
    lines += [
        "",
        "Accuracy: mean ± std over folds of held-out accuracy, the cosine threshold chosen on the "
        "other folds (threshold: mean over folds). AUC, EER and TAR@FAR over all pairs.",
        "",
        format_table(results, markdown=True),
        "",
    ]
    for r in results:
        lines.append(f"## {r['dataset']}")
        lines.append(f"- pairs: {r['num_pairs']} ({r['num_same']} same person), split into {r['folds']}")
        lines.append(f"- aligner: `{r['aligner']}`; flip: {r['flip']}; {r['seconds']} s")
        lines.append("- fold accuracies %: " + ", ".join(f"{100 * a:.2f}" for a in r["fold_accuracies"]))
        for note in r["notes"]:
            lines.append(f"- note: {note}")
        lines.append("")
    return "\n".join(lines)


def run_benchmark(
    datasets: list[str | Path],
    embedder: IdentityEmbedder,
    aligner: Aligner | None = None,
    batch_size: int = 64,
    folds: int = 10,
    flip: bool = False,
    output_dir: str | Path | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Benchmark ``embedder`` on each dataset file; write ``results.json``/``report.md`` to
    ``output_dir`` when given. Returns one dict per dataset (see :func:`benchmark_set`)."""
    if not datasets:
        raise ValueError("give at least one dataset: an insightface .bin file or an LFW pairs.txt")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sets = [load_verification_set(p) for p in datasets]  # fail on a bad path before any embedding
    names: dict[str, int] = {}
    results = []
    for path, vs in zip(datasets, sets):
        r = benchmark_set(vs, embedder, aligner, folds, batch_size, flip, dev)
        names[vs.name] = names.get(vs.name, 0) + 1
        if names[vs.name] > 1:
            r["dataset"] = f"{vs.name}#{names[vs.name]}"
        r["path"] = str(path)
        results.append(r)
    if output_dir is not None:
        out = Path(output_dir)
        settings = {
            "embedder": type(embedder).__name__,
            "aligner": type(aligner).__name__ if aligner is not None else "default per dataset",
            "folds": folds,
            "flip": flip,
            "batch_size": batch_size,
            "device": str(dev),
        }
        payload = {"settings": settings, "results": results}
        _write_atomic(out / "results.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
        _write_atomic(out / "report.md", _report(results, settings))
    return results


@command("benchmark")
def benchmark_command(
    datasets: list[str] | str,
    embedder: IdentityEmbedder | None = None,
    aligner: Aligner | None = None,
    batch_size: int = 64,
    folds: int = 10,
    flip: bool = False,
    output_dir: str = "runs/benchmark",
    device: str | None = None,
) -> None:
    """Face-verification accuracy (k-fold), AUC, EER and TAR@FAR of an embedder on pair sets.

    Args:
        datasets: insightface verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin ...)
            and/or LFW ``pairs.txt`` files (the per-person image folders beside them).
        embedder: the identity embedder (default: FaceApiResNet34, face-api's dlib ResNet).
        aligner: crops for the embedder (default: resize for aligned .bin sets; landmark
            alignment for LFW photos, dlib chips for 150x150 embedders, ArcFace otherwise).
        batch_size: images per forward pass.
        folds: number of folds of the protocol (10 is LFW's and insightface's).
        flip: add the mirror image's embedding (insightface's test-time flip).
        output_dir: where results.json and report.md go.
        device: torch device (default: cuda when available, else cpu).
    """
    if isinstance(datasets, str):
        datasets = [datasets]
    if embedder is None:
        from exface.embedders import FaceApiResNet34

        embedder = FaceApiResNet34()
    results = run_benchmark(datasets, embedder, aligner, batch_size, folds, flip, output_dir, device)
    print(format_table(results))
    for r in results:
        for note in r["notes"]:
            print(f"{r['dataset']}: {note}")
    print(f"wrote {Path(output_dir) / 'results.json'} and {Path(output_dir) / 'report.md'}")
