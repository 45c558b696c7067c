"""``exface benchmark``: face-verification accuracy of an identity embedder on pair sets.

Each dataset (an insightface ``.bin`` such as ``lfw.bin``/``cfp_fp.bin``/``agedb_30.bin``, or
an LFW ``pairs.txt`` with its image folder) is embedded once per image, pairs are scored by
cosine similarity, and :func:`~exface.evaluation.verification.evaluate_verification` runs the
k-fold protocol plus AUC, EER and TAR@FAR. Results go to ``results.json`` and a ``report.md``,
ROC curves to ``roc_<set>.png`` (all written atomically), and a table to stdout; when the
standard sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW) are among them, also the one-row table
the papers print, with their average.

An output folder holds the results of one embedder, aligner and list of sets
(:func:`benchmark_identity`, recorded in ``made_by.json`` and ``results.json`` ``made_by``): a run
with another embedder, aligner or other sets is refused before any embedding; the same ones
again (other protocol options: flip, folds, FARs) replace the results, and remove the ROC curves
the new run does not draw (:class:`~exface.report_dir.ReportDir`).

Test-time flip follows insightface's ``eval/verification.py``: the *raw* (unnormalized)
embeddings of an image and of its mirror image are summed, then the sum is L2-normalized.
On the insightface ``.bin`` sets the accuracy is also computed by insightface's own rule
(:func:`~exface.evaluation.verification.kfold_accuracy_insightface`: squared L2 distance of
the normalized embeddings, thresholds ``np.arange(0, 4, 0.01)``, "same" iff
``distance < threshold``, ``KFold(10, shuffle=False)``), the number the ArcFace/CosFace/
AdaFace papers print: the table's ``accuracy (insightface protocol)`` column, the papers'
one-row table, and ``insightface_protocol`` in ``results.json``, beside exface's own
accuracy (cosine scores, exact midpoint thresholds), which every set gets.

Photos (LFW ``pairs.txt`` sets) are aligned from a starting face box (``box``), or from the
face a detector finds nearest that box when a ``detector`` is configured; the report counts
(and names) images where no face or several faces were found. With ``save_embeddings`` the
embeddings of every image, plain and mirrored, are kept beside ``results.json`` and reused
by later runs with other protocol options (flip or not, folds, FARs).

The library form is :func:`benchmark_set` (one :class:`VerificationSet`) and
:func:`run_benchmark` (files in, result dicts out); the subcommand wraps the latter.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from exface.alignment.base import Aligner
from exface.commands import command
from exface.embedders.base import IdentityEmbedder
from exface.evaluation.datasets import VerificationSet, load_verification_set
from exface.evaluation.verification import (
    INSIGHTFACE_THRESHOLDS,
    contiguous_folds,
    cosine_scores,
    evaluate_verification,
    insightface_distances,
    kfold_accuracy_insightface,
    roc_curve,
    stratified_folds,
)

__all__ = [
    "default_aligner",
    "paper_flip",
    "insightface_protocol",
    "embed_images",
    "SetEmbeddings",
    "benchmark_set",
    "score_set",
    "run_benchmark",
    "format_table",
    "papers_table",
    "benchmark_command",
    "STANDARD_SETS",
]

#: The FARs the report shows by default (evaluate_verification's keys).
REPORT_FARS = (1e-3, 1e-2)

#: File stems of insightface's five standard verification sets -> the names papers print.
STANDARD_SETS = {"lfw": "LFW", "cfp_fp": "CFP-FP", "agedb_30": "AgeDB-30", "calfw": "CALFW", "cplfw": "CPLFW"}

#: Starting face box of LFW photos: face-api's SSD detector's median box on deep-funneled
#: images. The same box serves LFW's original images: the face boxes face-api's landmarks
#: give (:func:`~exface.alignment.landmarks.box_from_landmarks`, squared) have the medians
#: (0.26, 0.27, 0.73, 0.75) on fold 1's 150-px originals and (0.26, 0.28, 0.73, 0.75) on
#: its deep-funneled images (``benchmarks/lfw_photos.py`` prints them).
DEFAULT_PHOTO_BOX = "lfw_deepfunneled"

Box = tuple[float, float, float, float]


def paper_flip(vs: VerificationSet) -> bool:
    """Whether the published protocol of ``vs`` uses flip test-time augmentation.

    The insightface ``.bin`` sets are scored as the ArcFace/CosFace/AdaFace papers do
    (insightface's ``verification.py``: each image's embedding plus its mirror image's);
    LFW's own ``pairs.txt`` protocol, as dlib and face-api report it (99.38%), embeds each
    image once.
    """
    return bool(vs.aligned)


def insightface_protocol(vs: VerificationSet) -> bool:
    """Whether ``vs`` is an insightface ``.bin`` set (aligned crops, no official folds), whose
    published accuracies come from insightface's ``eval/verification.py`` rule."""
    return bool(vs.aligned) and vs.folds is None


def default_aligner(
    vs: VerificationSet,
    embedder: IdentityEmbedder,
    box: Box | str | None = None,
    detector: Any = None,
) -> Aligner:
    """The aligner the benchmark uses when none is given.

    Aligned sets (insightface ``.bin``: 112x112 ArcFace-template crops) go to 112x112
    embedders as they are, and to 150x150 dlib-chip embedders through the fixed similarity
    between the two templates (:class:`~exface.alignment.crops.TemplateMapAligner`; the
    chip's bottom edge lies below the ArcFace crop and stays black); other sizes are
    resized. Photos (LFW) get landmark alignment from face-api's 68-point net, started on
    ``box`` (default :data:`DEFAULT_PHOTO_BOX`) or on the ``detector``'s face nearest it:
    dlib face chips for 150x150 embedders (dlib/face-api's ResNet), the ArcFace template
    otherwise.
    """
    from exface.alignment import ArcFaceAligner, DlibChipAligner, ResizeAligner, TemplateMapAligner

    size = tuple(int(s) for s in embedder.input_size)
    if vs.aligned:
        if size == (150, 150):
            return TemplateMapAligner("arcface", "dlib")
        return ResizeAligner(size)
    from exface.alignment.landmarks import resolve_box

    box = DEFAULT_PHOTO_BOX if box is None else box
    faces: dict[str, Any] = {}
    if detector is not None:
        faces = {"detector": detector, "choose": "nearest_box", "expected_box": tuple(resolve_box(box, 1, 1, 1)[0].tolist())}
    if size == (150, 150):
        return DlibChipAligner(size=150, source_args={"box": box}, **faces)
    return ArcFaceAligner(output_size=size, source_args={"box": box}, **faces)


def _image_batches(vs: VerificationSet, batch_size: int) -> Iterator[tuple[int, Tensor]]:
    """``(first index, uint8 [B, 3, H, W])`` over all images; a batch holds one image size.

    Images stay uint8: aligners convert only the pixels a crop needs (a 12-Mpx photo as
    floats costs more than aligning it).
    """
    start, buf = 0, []
    for i in range(vs.num_images):
        img = vs.image(i)
        if buf and (len(buf) == batch_size or img.shape != buf[0].shape):
            yield start, torch.from_numpy(np.stack(buf)).permute(0, 3, 1, 2)
            start, buf = i, []
        buf.append(img)
    if buf:
        yield start, torch.from_numpy(np.stack(buf)).permute(0, 3, 1, 2)


@dataclass
class SetEmbeddings:
    """Unit embeddings ``[M, D]`` of every image of a set, of their mirror images (or None),
    the faces found per image (``None`` when the aligner does not detect faces), and the
    L2 norms ``[M]`` of the raw (unnormalized) embeddings, plain and mirrored: the raw
    embedding is ``unit * norm``, which the test-time flip sums."""

    plain: np.ndarray
    flipped: np.ndarray | None = None
    face_counts: list[int] | None = None
    plain_norm: np.ndarray | None = None
    flipped_norm: np.ndarray | None = None

    def summed(self, flip: bool) -> np.ndarray:
        """With ``flip``, the unnormalized sum of each image's and its mirror image's *raw*
        embeddings (what insightface's ``verification.py`` normalizes); else :attr:`plain`."""
        if not flip:
            return self.plain
        if self.flipped is None:
            raise ValueError("these embeddings were computed without their mirror images; flip needs them")
        if self.plain_norm is None or self.flipped_norm is None:
            raise ValueError(
                "flip sums the raw embeddings, and these embeddings lack the raw norms (saved by an older "
                "exface); embed the set again"
            )
        return (self.plain * self.plain_norm[:, None].astype(np.float32)
                + self.flipped * self.flipped_norm[:, None].astype(np.float32)).astype(np.float32)

    def combined(self, flip: bool) -> np.ndarray:
        """The embeddings the protocol scores: with ``flip``, the normalized sum of each
        image's and its mirror image's raw embeddings (insightface's test-time flip: the
        backbone outputs are summed, then normalized)."""
        if not flip:
            return self.plain
        e = self.summed(True)
        return (e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def _tally_of(aligner: Aligner) -> Any:
    """The face tally of an aligner's detector, or of its landmark source's (dlib HOG)."""
    tally = getattr(aligner, "tally", None)
    return tally if tally is not None else getattr(getattr(aligner, "source", None), "tally", None)


@torch.no_grad()
def compute_embeddings(
    vs: VerificationSet,
    embedder: IdentityEmbedder,
    aligner: Aligner,
    batch_size: int = 64,
    with_flip: bool = False,
    device: str | torch.device = "cpu",
) -> SetEmbeddings:
    """Align and embed every image of ``vs`` once (and its mirror crop with ``with_flip``).

    The embedder's network runs once per crop (:meth:`~exface.embedders.base.IdentityEmbedder.embed_raw`
    on its :meth:`~exface.embedders.base.IdentityEmbedder.preprocess`, as its ``forward`` does);
    the unit embeddings (``forward``'s output) and the raw norms are kept.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    embedder = embedder.to(device).eval()
    aligner = aligner.to(device).eval()
    tally = _tally_of(aligner)
    if tally is not None:
        tally.reset()
    plain = np.zeros((vs.num_images, embedder.embedding_dim), dtype=np.float32)
    flipped = np.zeros_like(plain) if with_flip else None
    plain_norm = np.zeros(vs.num_images, dtype=np.float32)
    flipped_norm = np.zeros_like(plain_norm) if with_flip else None

    def embed(crops: Tensor) -> tuple[np.ndarray, np.ndarray]:
        raw = embedder.embed_raw(embedder.preprocess(crops)).float()  # forward's own steps
        return F.normalize(raw, dim=1).cpu().numpy(), raw.norm(dim=1).cpu().numpy()

    for start, x in _image_batches(vs, batch_size):
        crops = aligner(x.to(device))
        if tuple(crops.shape[-2:]) != tuple(embedder.input_size):
            raise ValueError(
                f"the aligner {type(aligner).__name__} makes {tuple(crops.shape[-2:])} crops but "
                f"{type(embedder).__name__} takes {tuple(embedder.input_size)}; set the aligner's output size"
            )
        sl = slice(start, start + len(x))
        plain[sl], plain_norm[sl] = embed(crops)
        if flipped is not None:
            flipped[sl], flipped_norm[sl] = embed(crops.flip(-1))
    counts = list(tally.counts) if tally is not None else None
    return SetEmbeddings(plain, flipped, counts, plain_norm, flipped_norm)


def embed_images(
    vs: VerificationSet,
    embedder: IdentityEmbedder,
    aligner: Aligner,
    batch_size: int = 64,
    flip: bool = False,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Unit-length embeddings ``[M, D]`` of every image of ``vs`` (aligned, then embedded).

    With ``flip`` each crop's embedding is the normalized sum of the crop's and its mirror
    image's raw embeddings (insightface's test-time flip).
    """
    return compute_embeddings(vs, embedder, aligner, batch_size, flip, device).combined(flip)


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
    """A one-line description of an aligner (nn.Module's repr lists every layer); it keys
    saved embeddings, so it names everything that changes the crops."""
    parts = [f"output_size={tuple(aligner.output_size)}"]
    for attr in ("template", "mapping"):
        if hasattr(aligner, attr):
            parts.append(f"{attr}={getattr(aligner, attr)!r}")
    source = getattr(aligner, "source", None)
    if source is not None:
        sargs = []
        for attr in ("box", "refine", "points"):
            if getattr(source, attr, None) is not None:
                sargs.append(f"{attr}={getattr(source, attr)!r}")
        if getattr(source, "_detector", None) is not None:
            sargs.append("detector=dlib-HOG")
        parts.append(f"source={type(source).__name__}({', '.join(sargs)})")
    if getattr(aligner, "detector", None) is not None:
        parts.append(f"detector={type(aligner.detector).__name__}(choose={aligner.choose!r}, expected_box={aligner.expected_box})")
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


def _face_summary(vs: VerificationSet, counts: list[int] | None) -> dict[str, Any] | None:
    if counts is None:
        return None
    from exface.alignment.faces import FaceTally

    return FaceTally(list(counts)).summary([_image_name(vs, i) for i in range(vs.num_images)])


def score_set(
    vs: VerificationSet,
    embedder: IdentityEmbedder,
    aligner: Aligner | None = None,
    folds: int = 10,
    batch_size: int = 64,
    flip: bool | None = None,
    device: str | torch.device = "cpu",
    fars: Sequence[float] = REPORT_FARS,
    embeddings: SetEmbeddings | None = None,
    keep_mirror: bool = False,
    box: Box | str | None = None,
    detector: Any = None,
) -> tuple[dict[str, Any], SetEmbeddings, np.ndarray]:
    """:func:`benchmark_set`'s result plus what it was computed from: ``(result, embeddings,
    pair scores)``. ``result`` is a JSON-ready dict (NaN -> ``None``) with keys ``dataset``, ``num_pairs``,
    ``num_same``, ``accuracy``, ``accuracy_std``, ``threshold`` (cosine), ``auc``, ``eer``,
    ``tar_at_far``, ``fold_accuracies``, ``fold_thresholds``, ``folds`` (how pairs were
    split), ``aligner``, ``flip`` (and ``flip_is_paper_default``), ``faces`` (images with no
    face / several faces, when the aligner detects faces), ``seconds``, ``embedded`` (False
    when ``embeddings`` were given) and ``notes`` (caveats, e.g. a one-class set has no AUC).
    insightface ``.bin`` sets (:func:`insightface_protocol`) also get ``insightface_protocol``:
    ``accuracy``, ``accuracy_std``, ``fold_accuracies``, ``fold_thresholds`` (squared L2
    distance), ``threshold`` and ``rule`` by insightface's ``verification.py`` (the number
    their papers print); ``accuracy`` stays exface's (cosine, exact midpoint thresholds).
    ``flip`` ``None`` means the set's published protocol (:func:`paper_flip`). Pass
    ``embeddings`` (from an earlier run of the same embedder and aligner) to skip embedding;
    ``keep_mirror`` embeds the mirror crops even without flip (to save them for later runs).
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (the threshold is chosen on the other folds), got {folds}")
    if len(vs) < 2:
        raise ValueError(f"{vs.name} has {len(vs)} pair(s); the k-fold protocol needs at least 2")
    paper = paper_flip(vs)
    flip = paper if flip is None else bool(flip)
    aligner = default_aligner(vs, embedder, box, detector) if aligner is None else aligner
    t0 = time.perf_counter()
    embedded = embeddings is None
    if embeddings is None:
        embeddings = compute_embeddings(vs, embedder, aligner, batch_size, flip or keep_mirror, device)
    emb = embeddings.combined(flip)
    scores = cosine_scores(emb[vs.pairs[:, 0]], emb[vs.pairs[:, 1]])
    fold_ids, how = _fold_ids(vs, folds)
    notes = []
    if len(np.unique(fold_ids)) < folds:
        notes.append(f"only {len(vs)} pairs: used {how}")
    n_same = int(vs.issame.sum())
    if n_same in (0, len(vs)):
        kind = "matched" if n_same else "mismatched"
        notes.append(
            f"all {len(vs)} pairs are {kind}: accuracy is trivial (any threshold on the right side "
            f"of every score) and AUC, EER and TAR@FAR are undefined"
        )
    faces = _face_summary(vs, embeddings.face_counts)
    if faces is not None and faces["no_face"]:
        notes.append(
            f"the detector found no face in {faces['no_face']} of {faces['images']} images, embedded from "
            f"the starting box: {', '.join(faces['no_face_images'])}"
        )
    if faces is not None and faces["several_faces"]:
        notes.append(f"{faces['several_faces']} images had several faces: the one nearest the starting box was used")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="all pairs belong to one class")
        res = evaluate_verification(scores, vs.issame, fold_ids, fars=tuple(fars))
    extra = {}
    if insightface_protocol(vs):
        extra["insightface_protocol"] = insightface_result(embeddings.summed(flip), vs, min(folds, len(vs)))
    out = {
        "dataset": vs.name,
        **res.to_dict(),
        **extra,
        "folds": how,
        "aligner": _describe(aligner),
        "flip": flip,
        "flip_is_paper_default": flip == paper,
        "faces": faces,
        "score_mean_same": float(scores[vs.issame].mean()) if n_same else None,
        "score_mean_diff": float(scores[~vs.issame].mean()) if n_same < len(vs) else None,
        "seconds": round(time.perf_counter() - t0, 2),
        "embedded": embedded,
        "notes": notes,
    }
    return _nan_to_none(out), embeddings, scores


def insightface_result(embeddings: np.ndarray, vs: VerificationSet, folds: int = 10) -> dict[str, Any]:
    """Accuracy of ``vs`` by insightface's ``eval/verification.py``: ``embeddings`` (``[M, D]``:
    the raw sum of image and mirror with flip, as they sum them) are L2-normalized, pairs
    scored by squared L2 distance and searched on ``np.arange(0, 4, 0.01)`` with ``distance <
    threshold`` over ``KFold(folds, shuffle=False)``
    (:func:`~exface.evaluation.verification.kfold_accuracy_insightface`)."""
    dist = insightface_distances(embeddings[vs.pairs[:, 0]], embeddings[vs.pairs[:, 1]])
    accs, thr = kfold_accuracy_insightface(dist, vs.issame, folds)
    return {
        "accuracy": float(accs.mean()),
        "accuracy_std": float(accs.std()),
        "fold_accuracies": [float(a) for a in accs],
        "fold_thresholds": [float(t) for t in thr],
        "threshold": float(thr.mean()),
        "rule": (f"insightface eval/verification.py: squared L2 distance of L2-normalized embeddings, "
                 f"thresholds np.arange(0, 4, 0.01) ({len(INSIGHTFACE_THRESHOLDS)}), same iff distance < "
                 f"threshold, KFold({folds}, shuffle=False)"),
    }


def benchmark_set(
    vs: VerificationSet,
    embedder: IdentityEmbedder,
    aligner: Aligner | None = None,
    folds: int = 10,
    batch_size: int = 64,
    flip: bool | None = None,
    device: str | torch.device = "cpu",
    fars: Sequence[float] = REPORT_FARS,
) -> dict[str, Any]:
    """Verification figures of ``embedder`` on one set, as a JSON-ready dict (see
    :func:`score_set` for the keys; ``flip`` ``None`` = the set's published protocol)."""
    return score_set(vs, embedder, aligner, folds, batch_size, flip, device, fars)[0]


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}" if pct else f"{x:.4f}"


def _far_label(key: str) -> str:
    mant, exp = key.split("e")
    return f"{mant}e{int(exp)}" if mant != "1" else f"1e{int(exp)}"


def _insightface_accuracy(r: dict[str, Any]) -> float | None:
    ins = r.get("insightface_protocol")
    return None if not ins else ins["accuracy"]


def headline_accuracy(r: dict[str, Any]) -> tuple[float, float]:
    """``(accuracy, std over folds)`` of a :func:`benchmark_set` result as the papers table prints it:
    insightface's protocol for a ``.bin`` set, exface's for the others (LFW's ``pairs.txt``). Training's
    verification logs and checkpoints on this same figure."""
    ins = r.get("insightface_protocol")
    if ins:
        return float(ins["accuracy"]), float(ins.get("accuracy_std") or 0.0)
    return float(r["accuracy"]), float(r.get("accuracy_std") or 0.0)


def format_table(results: list[dict[str, Any]], markdown: bool = False) -> str:
    """The per-dataset figures as a text (or Markdown) table; rates in percent. When a set
    has insightface's protocol (``.bin``), its accuracy by their rule has its own column
    (``-`` for the other sets)."""
    far_keys = list(results[0].get("tar_at_far") or {}) if results else []
    with_ins = any(_insightface_accuracy(r) is not None for r in results)
    head = ["dataset", "pairs", "flip", "accuracy %"]
    head += ["accuracy (insightface protocol) %"] if with_ins else []
    head += ["threshold", "AUC %", "EER %"]
    head += [f"TAR@FAR={_far_label(k)} %" for k in far_keys]
    rows = []
    for r in results:
        tar = r.get("tar_at_far") or {}
        flip = ("yes" if r["flip"] else "no") + ("" if r.get("flip_is_paper_default", True) else "*")
        ins = r.get("insightface_protocol")
        rows.append([
            r["dataset"],
            str(r["num_pairs"]),
            flip,
            f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}",
            *([f"{100 * ins['accuracy']:.2f} ± {100 * ins['accuracy_std']:.2f}" if ins else "-"] if with_ins else []),
            _fmt(r["threshold"], pct=False),
            _fmt(r["auc"]),
            _fmt(r["eer"]),
            *(_fmt(tar.get(k)) for k in far_keys),
        ])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _standard_name(path: str | Path) -> str | None:
    """The paper name of a standard set from its file name (``agedb_30.bin`` -> ``AgeDB-30``)."""
    stem = Path(path).stem.lower()
    if stem == "pairs" or Path(path).is_dir():  # LFW's own pairs.txt (or its folder)
        return "LFW"
    return STANDARD_SETS.get(stem)


def papers_table(results: list[dict[str, Any]], embedder_name: str, markdown: bool = False) -> str | None:
    """The one-row table verification papers print (accuracy % on LFW, CFP-FP, AgeDB-30,
    CALFW, CPLFW and their average), or ``None`` when no standard set was benchmarked.
    Missing sets show "-" and the average is over the sets present (the header says so).
    A ``.bin`` set shows its accuracy by insightface's protocol, as the papers print it (LFW's
    ``pairs.txt`` has no such figure and shows exface's)."""
    acc = {}
    for r in results:
        name = _standard_name(r.get("path", r["dataset"]))
        if name is not None and name not in acc:
            acc[name] = (100 * headline_accuracy(r)[0], r["flip"])
    if not acc:
        return None
    names = list(STANDARD_SETS.values())
    avg_head = "average" if len(acc) == len(names) else f"average ({len(acc)} of {len(names)})"
    head = ["embedder", *names, avg_head, "flip"]
    flips = {f for _, f in acc.values()}
    row = [embedder_name, *(f"{acc[n][0]:.2f}" if n in acc else "-" for n in names),
           f"{np.mean([a for a, _ in acc.values()]):.2f}",
           "yes" if flips == {True} else "no" if flips == {False} else "mixed"]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(row) + " |"])
    widths = [max(len(h), len(c)) for h, c in zip(head, row)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in (head, row))


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


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_roc(scores: np.ndarray, issame: np.ndarray, title: str, path: Path) -> bool:
    """Write the ROC curve (TAR against log FAR) as a PNG (atomically); False when the set has one class."""
    png = roc_png(scores, issame, title)
    if png is None:
        return False
    from exface.exfacegan.run_files import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png)
    return True


def roc_png(scores: np.ndarray, issame: np.ndarray, title: str) -> bytes | None:
    """PNG bytes of the ROC curve (TAR against log FAR); None when the set has one class."""
    if issame.all() or not issame.any():
        return None
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(scores, issame)
    floor = 1.0 / max(1, int((~issame).sum()))
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(np.clip(fpr, floor / 2, 1), tpr, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------- saved embeddings


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _digest_module(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _digest_images(vs: VerificationSet) -> str:
    h = hashlib.sha1()
    if vs.paths is not None:
        for p in vs.paths:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode())
    else:
        h.update(np.ascontiguousarray(vs.images).tobytes())
    return h.hexdigest()


def _cache_key(vs: VerificationSet, embedder: IdentityEmbedder, aligner: Aligner) -> dict[str, Any]:
    """What the saved embeddings depend on: the images, the embedder's weights, the aligner."""
    return {
        "dataset": vs.name,
        "num_images": vs.num_images,
        "images_sha1": _digest_images(vs),
        "embedder": type(embedder).__name__,
        "embedder_sha1": _digest_module(embedder),
        "aligner": _describe(aligner),
        "aligner_sha1": _digest_module(aligner),
    }


def _cache_paths(out: Path, name: str) -> dict[str, Path]:
    stem = _file_stem(name)
    return {
        "key": out / f"{stem}.embeddings.json",
        "plain": out / f"{stem}.embeddings.npy",
        "flipped": out / f"{stem}.embeddings_flip.npy",
        "plain_norm": out / f"{stem}.embeddings_norm.npy",
        "flipped_norm": out / f"{stem}.embeddings_flip_norm.npy",
        "scores": out / f"{stem}.scores.npy",
    }


def load_saved_embeddings(out: Path, name: str, key: dict[str, Any]) -> tuple[SetEmbeddings | None, str]:
    """Embeddings saved by an earlier run under ``out`` for the same ``key``, and why not if none."""
    paths = _cache_paths(out, name)
    if not paths["key"].is_file() or not paths["plain"].is_file():
        return None, "none saved yet"
    try:
        saved = json.loads(paths["key"].read_text())
    except (OSError, json.JSONDecodeError):
        return None, f"{paths['key']} is unreadable"
    changed = [k for k in key if saved.get("key", {}).get(k) != key[k]]
    if changed:
        return None, f"saved embeddings differ in {', '.join(changed)}"
    plain = np.load(paths["plain"])
    flipped = np.load(paths["flipped"]) if paths["flipped"].is_file() else None
    if plain.shape[0] != key["num_images"] or (flipped is not None and flipped.shape != plain.shape):
        return None, "saved embeddings have the wrong shape"
    norms = {}
    for k, arr in (("plain_norm", plain), ("flipped_norm", flipped)):
        # raw-embedding norms (what flip sums); absent in folders of older runs
        norm = np.load(paths[k]) if arr is not None and paths[k].is_file() else None
        norms[k] = norm if norm is not None and norm.shape == (arr.shape[0],) else None
    return SetEmbeddings(plain, flipped, saved.get("face_counts"), **norms), f"reused {paths['plain']}"


def save_embeddings_files(out: Path, name: str, key: dict[str, Any], emb: SetEmbeddings, scores: np.ndarray) -> None:
    """Write a set's embeddings, mirror embeddings, pair scores and their key (atomically)."""
    paths = _cache_paths(out, name)
    _save_npy_atomic(paths["plain"], emb.plain)
    if emb.flipped is not None:
        _save_npy_atomic(paths["flipped"], emb.flipped)
    for k in ("plain_norm", "flipped_norm"):
        if getattr(emb, k) is not None:
            _save_npy_atomic(paths[k], getattr(emb, k))
    _save_npy_atomic(paths["scores"], scores.astype(np.float32))
    _write_atomic(paths["key"], json.dumps({"key": key, "face_counts": emb.face_counts}, indent=1) + "\n")


# --------------------------------------------------------------------------- report and runner


def _set_names(sets: Sequence[VerificationSet]) -> list[str]:
    """The name each set gets in the results: its own, ``name#2`` for a second set of that name."""
    seen: dict[str, int] = {}
    out = []
    for vs in sets:
        seen[vs.name] = seen.get(vs.name, 0) + 1
        out.append(vs.name if seen[vs.name] == 1 else f"{vs.name}#{seen[vs.name]}")
    return out


def benchmark_identity(datasets: Sequence[str | Path], sets: Sequence[VerificationSet], digests: Sequence[str | None],
                       embedder: IdentityEmbedder, aligner: Aligner | None, box: Any, detector: Any) -> dict[str, Any]:
    """What a benchmark folder's results are of (its ``made_by``): every set (name, path, sha256
    of the file, of its pairs and, for photo sets, of its images' paths, sizes and times), the
    embedder and aligner (class, weights sha256, arguments; the default aligner by its box and
    detector). Not the protocol options (flip, folds, fars): a run with other ones re-scores the
    same embeddings and replaces the results (their settings are in ``results.json``)."""
    from exface.report_dir import part_identity

    items = []
    for name, path, vs, digest in zip(_set_names(sets), datasets, sets, digests):
        h = hashlib.sha256()
        for arr in (vs.pairs, vs.issame, vs.folds):
            h.update(b"-" if arr is None else np.ascontiguousarray(arr).astype(np.int64).tobytes())
        item = {"name": name, "path": str(Path(path).resolve()), "sha256": digest, "pairs_sha256": h.hexdigest()}
        if vs.paths is not None:
            item["images_sha1"] = _digest_images(vs)
        items.append(item)
    return {
        "report": "exface benchmark",
        "datasets": items,
        "parts": {"embedder": part_identity(embedder), "aligner": part_identity(aligner),
                  "detector": part_identity(detector)},
        "settings": {"default_aligner_box": None if aligner is not None else (DEFAULT_PHOTO_BOX if box is None else box)},
    }


def _report(results: list[dict[str, Any]], settings: dict[str, Any], papers: str | None) -> str:
    lines = ["# Face-verification benchmark", ""]
    lines += [f"- {k}: `{v}`" for k, v in settings.items()]
    lines += [
        "",
        "Accuracy: mean ± std over folds of held-out accuracy, the cosine threshold chosen on the "
        "other folds (threshold: mean over folds). Accuracy (insightface protocol), on the insightface "
        ".bin sets: the same folds scored by insightface's eval/verification.py (squared L2 distance "
        "of the normalized embeddings, thresholds 0, 0.01, ..., 3.99, same iff distance < threshold), "
        "the figure the ArcFace/CosFace/AdaFace papers print. AUC, EER and TAR@FAR over all pairs. "
        "flip: each image's raw embedding plus its mirror image's, then normalized (insightface's "
        "test-time augmentation); `*` marks a flip setting other than the set's published protocol "
        "(the insightface .bin sets flip, LFW's pairs.txt protocol does not).",
        "",
        format_table(results, markdown=True),
        "",
    ]
    if papers is not None:
        lines += ["Accuracy % as verification papers print it (.bin sets: insightface's protocol):", "", papers, ""]
    for r in results:
        lines.append(f"## {r['dataset']}")
        lines.append(f"- pairs: {r['num_pairs']} ({r['num_same']} same person), split into {r['folds']}")
        lines.append(f"- aligner: `{r['aligner']}`; flip: {r['flip']}; {r['seconds']} s"
                     + ("" if r.get("embedded", True) else " (saved embeddings reused)"))
        lines.append("- fold accuracies %: " + ", ".join(f"{100 * a:.2f}" for a in r["fold_accuracies"]))
        ins = r.get("insightface_protocol")
        if ins:
            lines.append(f"- insightface protocol: {100 * ins['accuracy']:.2f} ± {100 * ins['accuracy_std']:.2f} %, "
                         f"fold accuracies %: " + ", ".join(f"{100 * a:.2f}" for a in ins["fold_accuracies"])
                         + f"; mean distance threshold {ins['threshold']:.2f}")
        faces = r.get("faces")
        if faces is not None:
            lines.append(f"- faces found: {faces['images']} images, {faces['no_face']} with no face, "
                         f"{faces['several_faces']} with several faces")
            for key, label in (("no_face_images", "no face"), ("several_faces_images", "several faces")):
                if faces[key]:
                    more = len(faces[key]) - 50
                    lines.append(f"  - {label}: " + ", ".join(f"`{n}`" for n in faces[key][:50])
                                 + (f" and {more} more (all in results.json)" if more > 0 else ""))
        if r.get("roc_png"):
            lines.append(f"- ROC curve: ![{r['dataset']} ROC]({Path(r['roc_png']).name})")
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
    flip: bool | None = None,
    output_dir: str | Path | None = None,
    device: str | None = None,
    image_dir: str | Path | None = None,
    box: Box | str | None = None,
    detector: Any = None,
    fars: Sequence[float] = REPORT_FARS,
    save_embeddings: bool = False,
    roc: bool = True,
) -> list[dict[str, Any]]:
    """Benchmark ``embedder`` on each dataset file; write ``results.json``/``report.md`` (and
    ROC PNGs, and with ``save_embeddings`` the ``.npy`` embeddings and scores) to
    ``output_dir`` when given. Returns one dict per dataset (see :func:`benchmark_set`).

    ``image_dir`` is the image folder of the ``pairs.txt`` sets; ``box``/``detector`` set the
    default aligner's starting face box and face detector (photos only).
    """
    if not datasets:
        raise ValueError("give at least one dataset in --datasets: an insightface .bin file or an LFW pairs.txt")
    if save_embeddings and output_dir is None:
        raise ValueError("save_embeddings needs an output_dir to keep them in")
    if aligner is not None and (box is not None or detector is not None):
        raise ValueError("--box and --detector configure the default aligner; with --aligner set them in its source_args")
    if not fars or any(not 0 < f < 1 for f in fars):
        raise ValueError(f"--fars must be false-accept rates in (0, 1), got {list(fars)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Fail on a bad path before any embedding.
    sets = [load_verification_set(p, image_dir if not str(p).endswith(".bin") else None) for p in datasets]
    if isinstance(detector, str):  # one instance for every set
        from exface.registry import create_part

        detector = create_part("detectors", detector)
    out = Path(output_dir) if output_dir is not None else None
    if out is None:
        return _run_sets(datasets, sets, [None] * len(sets), embedder, aligner, batch_size, folds, flip, None, dev,
                         box, detector, fars, save_embeddings, roc)
    # before any embedding: a folder that cannot be written, or that holds another run's results
    from exface.exfacegan.run_files import ensure_writable_dir
    from exface.report_dir import ReportDir

    ensure_writable_dir(out)
    from exface.zoo import sha256_of

    digests = [sha256_of(Path(p)) if Path(p).is_file() else None for p in datasets]
    made_by = benchmark_identity(datasets, sets, digests, embedder, aligner, box, detector)
    fix = (f"pass another --output_dir for this benchmark (e.g. {out.parent / f'{out.name}_{type(embedder).__name__}'}), "
           f"or delete {out} "
           f"to replace the results there (the same embedder, aligner and sets again replace them)")
    with ReportDir(out, made_by, "benchmark", fix=fix) as rd:
        return _run_sets(datasets, sets, digests, embedder, aligner, batch_size, folds, flip, rd, dev, box, detector,
                         fars, save_embeddings, roc)


def _run_sets(datasets, sets, digests, embedder, aligner, batch_size, folds, flip, rd, dev, box, detector, fars,
              save_embeddings, roc) -> list[dict[str, Any]]:
    """Score every set; with a :class:`~exface.report_dir.ReportDir` ``rd`` write the files through it."""
    out = rd.folder if rd is not None else None
    results = []
    for path, vs, name, digest in zip(datasets, sets, _set_names(sets), digests):
        set_aligner = aligner if aligner is not None else default_aligner(vs, embedder, box, detector)
        saved, key, why = None, None, None
        if save_embeddings:
            key = _cache_key(vs, embedder, set_aligner)
            saved, why = load_saved_embeddings(out, name, key)
            want_flip = paper_flip(vs) if flip is None else flip
            if saved is not None and want_flip and saved.flipped is None:
                saved, why = None, "saved embeddings have no mirror-image embeddings"
            elif saved is not None and want_flip and (saved.plain_norm is None or saved.flipped_norm is None):
                saved, why = None, "saved embeddings have no raw-embedding norms (flip sums raw embeddings)"
        if saved is None:  # one line per stage: embedding a set is most of a benchmark's time
            print(f"benchmark: embedding {name} ({vs.num_images} images, {len(vs)} pairs) with "
                  f"{type(embedder).__name__}", flush=True)
        r, emb, scores = score_set(
            vs, embedder, set_aligner, folds, batch_size, flip, dev, fars, saved, keep_mirror=save_embeddings
        )
        r["dataset"] = name
        r["path"] = str(path)
        if Path(path).is_file():  # what was scored, byte for byte (JPEG in a .bin has no checksum of its own)
            from exface.zoo import sha256_of

            r["sha256"] = digest if digest is not None else sha256_of(Path(path))
        if save_embeddings:
            if r["embedded"]:
                save_embeddings_files(out, name, key, emb, scores)
            else:
                _save_npy_atomic(_cache_paths(out, name)["scores"], scores.astype(np.float32))
            r["saved_embeddings"] = why if not r["embedded"] else f"saved to {_cache_paths(out, name)['plain']} ({why})"
        if rd is not None:  # saved embeddings of this run's sets, embedder and aligner belong to its results
            for p in _cache_paths(out, name).values():
                rd.keep(p.name)
        if roc and out is not None:
            png = roc_png(scores, vs.issame, f"{name}: {type(embedder).__name__}, AUC {_fmt(r['auc'])}%")
            if png is not None:
                r["roc_png"] = str(rd.write_bytes(f"roc_{_file_stem(name)}.png", png))
        results.append(r)
    if rd is not None:
        settings = {
            "embedder": type(embedder).__name__,
            "aligner": type(aligner).__name__ if aligner is not None else "default per dataset",
            "box": box if box is not None else (None if aligner is not None else DEFAULT_PHOTO_BOX),
            "detector": type(detector).__name__ if detector is not None else None,
            "folds": folds,
            "flip": flip if flip is not None else "paper protocol per set",
            "fars": list(fars),
            "batch_size": batch_size,
            "device": str(dev),
            "threads": torch.get_num_threads(),
        }
        papers = papers_table(results, type(embedder).__name__, markdown=True)
        payload = {"settings": settings, "made_by": rd.made_by, "results": results}
        rd.write_text("results.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
        rd.write_text("report.md", _report(results, settings, papers))
    return results


@command("benchmark")
def benchmark_command(
    datasets: list[str] | str,
    embedder: IdentityEmbedder | str | None = None,
    aligner: Aligner | None = None,
    image_dir: str | None = None,
    box: tuple[float, float, float, float] | str | None = None,
    detector: str | None = None,
    batch_size: int = 64,
    folds: int = 10,
    flip: bool | None = None,
    fars: list[float] = [1e-3, 1e-2],
    save_embeddings: bool = False,
    threads: int | None = None,
    roc: bool = True,
    output_dir: str = "runs/benchmark",
    device: str | None = None,
) -> None:
    """Face-verification accuracy (k-fold), AUC, EER and TAR@FAR of an embedder on pair sets.

    insightface .bin sets also get their accuracy by insightface's protocol (squared L2
    distance, thresholds 0..3.99 step 0.01), the figure papers print: a column of its own,
    and the papers' one-row table.

    Args:
        datasets: insightface verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin,
            calfw.bin, cplfw.bin ...) and/or LFW ``pairs.txt`` files (or folders holding one).
        embedder: the identity embedder (default: FaceApiResNet34, face-api's dlib ResNet),
            or the path of a checkpoint an embedder class loads (e.g. a FaceRecognitionModule
            training checkpoint).
        aligner: crops for the embedder (default: for .bin sets the crop as it is, or mapped to
            the dlib chip for 150x150 embedders; for LFW photos landmark alignment, dlib chips
            for 150x150 embedders, ArcFace otherwise).
        image_dir: the image folder of the pairs.txt sets (default: found beside pairs.txt:
            lfw-deepfunneled/, lfw_funneled/, lfw/, images_deepfunneled/, ...).
        box: where the face starts in photos: relative (x0, y0, x1, y1), or a named box
            (lfw_deepfunneled: LFW's 250-px framing, also right for its originals; full).
        detector: a registered face detector (e.g. SSDMobileNetV1) finding the face in photos:
            the one nearest the box when there are several; the box where there is none.
        batch_size: images per forward pass.
        folds: number of folds of the protocol (10 is LFW's and insightface's).
        flip: add the mirror image's raw embedding before normalizing (insightface's
            test-time flip); default: as the set's papers do (on for the insightface .bin
            sets, off for LFW's pairs.txt).
        fars: false-accept rates the true-accept rate is reported at.
        save_embeddings: keep each set's embeddings (plain and mirrored) and pair scores as .npy
            beside results.json, and reuse them when a later run has the same images, embedder
            and aligner (then flip, folds and fars can change without embedding again).
        threads: CPU threads for torch (default: torch's own choice).
        roc: write each set's ROC curve as roc_<set>.png.
        output_dir: where results.json, report.md and the PNGs go: one folder per embedder,
            aligner and list of sets (a folder holding another's results is refused; the same
            ones again, with other protocol options, replace them).
        device: torch device (default: cuda when available, else cpu).
    """
    if isinstance(datasets, str):
        datasets = [datasets]
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    embedder = resolve_embedder(embedder)
    results = run_benchmark(
        datasets, embedder, aligner, batch_size, folds, flip, output_dir, device,
        image_dir=image_dir, box=box, detector=detector, fars=fars, save_embeddings=save_embeddings, roc=roc,
    )
    print(format_table(results))
    papers = papers_table(results, type(embedder).__name__)
    if papers is not None:
        print(papers)
    for r in results:
        if r.get("faces"):
            f = r["faces"]
            print(f"{r['dataset']}: {f['no_face']} of {f['images']} images with no face, {f['several_faces']} with several faces")
        if r.get("saved_embeddings"):
            print(f"{r['dataset']}: {r['saved_embeddings']}")
        for note in r["notes"]:
            print(f"{r['dataset']}: {note}")
    print(f"wrote {Path(output_dir) / 'results.json'} and {Path(output_dir) / 'report.md'}")


def resolve_embedder(embedder: IdentityEmbedder | str | Path | None) -> IdentityEmbedder:
    """The embedder to benchmark: given, the default (FaceApiResNet34), or a training
    checkpoint of ``FaceRecognitionModule`` given by path (loaded by the registered
    ``FRCheckpointEmbedder``, which rebuilds the backbone from the checkpoint alone)."""
    if isinstance(embedder, IdentityEmbedder):
        return embedder
    if embedder is None:
        from exface.embedders import FaceApiResNet34

        return FaceApiResNet34()
    path = Path(embedder)
    if not path.is_file():
        raise FileNotFoundError(
            f"--embedder {embedder!r} is neither a registered embedder nor a checkpoint file; "
            f"`exface plugins --kind embedders` lists the embedders"
        )
    from exface.registry import get_registry

    reg = get_registry("embedders")
    if "FRCheckpointEmbedder" not in reg:
        raise ValueError(
            f"--embedder {path}: this exface has no FRCheckpointEmbedder to read FR training checkpoints; "
            f"pass --embedder with a class name and its weights option (e.g. IResNetEmbedder --embedder.weights PATH)"
        )
    return reg.create("FRCheckpointEmbedder", ckpt=str(path))
