"""Quality report of a synthetic identity dataset, against two baselines.

For the dataset (the boundary sampler's images) and two baselines rendered with the same
generator, aligner and embedder and the same identities x images:

- ``random``: every "identity" is K independent random latents: the chance floor;
- ``noise``: every identity's anchor latent (the reference; its mirror across the boundary
  for a negative-side identity) plus Gaussian noise, with sigma chosen so the mean latent
  distance of the samples from their reference equals the boundary sampler's,
- ``noise_equal_diversity``: the same noise baseline with sigma chosen (by bisection on
  rendered images of a subset of identities) so its pixel diversity equals the boundary
  sampler's: the comparison at equal diversity that the verdict uses,

it computes genuine (same identity) and impostor (different identity) cosine similarity
distributions, the EER (:func:`exface.evaluation.verification.equal_error_rate`), Fisher's
discriminant ratio ``(mu_g - mu_i)^2 / (var_g + var_i)``, per-identity mean genuine
similarity, and intra-identity diversity: mean pairwise RMS pixel distance (images in
[0, 1], so resolution-independent) and mean pairwise feature distance ``1 - cos``.
Embeddings are always of the uint8 images as stored (full resolution); pixel diversity and
the grids use copies area-downscaled to at most :data:`REPORT_SIZE` pixels, so the report's
memory does not grow with the generator's resolution (10k StyleGAN 1024 px images would be
31 GB) and diversities of different generators are measured at one scale.

Like for like: the dataset's images passed synthesize's face check (failures resampled for
``filter_rounds`` rounds, then dropped); given the dataset's landmark ``crop_aligner`` the
baselines are face-checked the same way (:func:`render_checked_set`), and their counts of
failures and drops are reported. A dataset made with an ``identity_filter`` (cosine to the
identity's anchor embedding by the labeler, on the labeler's crop of the frame) has its
baselines filtered the same way: the same threshold, anchors (:func:`anchor_embeddings`) and
``filter_rounds``, draws below it resampled, and where the rounds run out the most similar
rejects kept, as synthesize keeps them; the counts are reported. The ``random`` set is not
filtered: it is the chance floor (unconditioned latents, no identity to pass a filter for),
and filtering it would make it another sampler at up to ``filter_rounds`` times the renders.
The dataset side is always
measured on lossless frames, as the baselines are: the stored PNG frames, or frames
re-rendered from the latents where the files are crops or JPEGs. What stays unlike (no crop
aligner given for a landmark face check; different image counts) is named in the verdict.

Reproducible for any eval ``batch_size``: every baseline candidate (identity, image slot,
resampling round) draws its latent from its own seeded stream (:func:`candidate_rng`), and
the forward passes that render, face-check and embed it hold only its identity's candidates
of that round (:func:`render_checked_set`), so no draw, check or filter decision depends on
the other identities, on their order, or on how many images a forward pass takes, as long
as ``batch_size`` is at least ``images_per_identity`` (a smaller one splits an identity's
pass, and conv/matmul kernels can round differently for another batch shape). The dataset's
evaluator embeddings are taken per identity likewise. Networks are put in eval mode.

Every set is scored twice: by the labeler (the embedder that made the bank's labels and
the boundaries) and by an independent **evaluator**, a face network that had no part in the
labels (:mod:`exface.exfacegan.evaluator`: face-api labels are judged by HSE's MobileNet,
an IResNet's by face-api). The verdict uses the evaluator's figures; the labeler's stand
beside them. Without an evaluator (none known for the labeler, or its weights missing) the
verdict says it is the labeler judging its own labels.

Writes ``report.md`` (its first lines say whether the boundary sampler beats the noise
baseline: lower EER than noise of equal pixel diversity), ``report.json``,
``similarity_hist.png`` and one image grid per set (``grid.png``, ``grid_random.png``,
``grid_noise.png``), each atomically, and ``made_by.json``: the report's identity (the dataset's
path and file digests, the parts, seed, identities, baselines; :func:`report_identity`), also in
``report.json`` as ``made_by``. A report folder holding another report (another dataset, parts or
settings) is refused before anything is computed; the same report again replaces it
(:class:`~exface.report_dir.ReportDir`).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from exface.alignment.base import Aligner
from exface.boundaries.base import Boundaries
from exface.commands import command
from exface.embedders.base import IdentityEmbedder
from exface.errors import ExfaceFileError, ExfaceStateError
from exface.evaluation.verification import equal_error_rate
from exface.exfacegan.samplers import NoiseSampler, RandomSampler, anchor_latent, render_latents
from exface.generators.base import Generator
from exface.tensors import module_device, to_uint8

__all__ = [
    "set_metrics",
    "shrink",
    "calibrate_noise_sigma",
    "calibrate_sigma_to_diversity",
    "render_set",
    "candidate_rng",
    "candidate_draw",
    "anchor_embeddings",
    "render_checked_set",
    "report_face_check",
    "check_report_parts",
    "check_report_sources",
    "read_dataset_settings",
    "report_identity",
    "quality_report",
    "report",
]

log = logging.getLogger(__name__)

#: pixel diversity counts as "equal" within this relative tolerance
DIVERSITY_TOLERANCE = 0.02
#: images larger than this (pixels per side) are area-downscaled for pixel diversity and grids
REPORT_SIZE = 64


def shrink(images_u8: Tensor | np.ndarray, size: int = REPORT_SIZE) -> np.ndarray:
    """uint8 ``[N, 3, H, W]`` -> uint8 with the longer side at most ``size`` (area averaging)."""
    arr = images_u8.numpy() if isinstance(images_u8, Tensor) else np.asarray(images_u8)
    h, w = arr.shape[-2:]
    if max(h, w) <= size:
        return arr
    scale = size / max(h, w)
    out = torch.nn.functional.interpolate(torch.from_numpy(arr.astype(np.float32)), size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                          mode="area")
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def _pair_scores(emb: np.ndarray, labels: np.ndarray, max_impostors: int, rng: np.random.Generator):
    """All genuine pair cosines and up to ``max_impostors`` random impostor pair cosines."""
    genuine = []
    per_identity = []
    feat_div = []
    for lab in np.unique(labels):
        e = emb[labels == lab]
        s = e @ e.T
        iu = np.triu_indices(len(e), 1)
        g = s[iu]
        genuine.append(g)
        per_identity.append(float(g.mean()) if len(g) else math.nan)
        feat_div.append(float((1 - g).mean()) if len(g) else math.nan)
    n = len(emb)
    a = rng.integers(0, n, size=max_impostors * 2)
    b = rng.integers(0, n, size=max_impostors * 2)
    keep = labels[a] != labels[b]
    a, b = a[keep][:max_impostors], b[keep][:max_impostors]
    impostor = np.einsum("ij,ij->i", emb[a], emb[b])
    return np.concatenate(genuine), impostor, per_identity, feat_div


def _pixel_diversity(images: np.ndarray, labels: np.ndarray, scale: float = 255.0, rms: bool = True) -> float:
    """Mean over identities of the mean pairwise RMS distance of images in [0, 1].

    With ``scale=1, rms=False`` it is the mean pairwise L2 distance of rows (used for latents).
    """
    out = []
    for lab in np.unique(labels):
        x = torch.from_numpy(np.asarray(images[labels == lab])).double().flatten(1) / scale
        if len(x) < 2:
            continue
        d = torch.cdist(x, x) / (math.sqrt(x.shape[1]) if rms else 1.0)
        iu = torch.triu_indices(len(x), len(x), 1)
        out.append(float(d[iu[0], iu[1]].mean()))
    return float(np.mean(out)) if out else math.nan


def set_metrics(emb: np.ndarray, labels: np.ndarray, images: np.ndarray | None = None,
                max_impostors: int = 200_000, seed: int = 0, latents: np.ndarray | None = None) -> dict:
    """Genuine/impostor statistics, EER, FDR and diversity of one set of embeddings.

    ``emb`` ``[N, D]`` unit rows, ``labels`` ``[N]`` identity ids, ``images`` ``[N, 3, H, W]`` uint8,
    ``latents`` ``[N, d]`` (for the within-identity latent spread).
    """
    emb = np.asarray(emb, dtype=np.float32)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    labels = np.asarray(labels)
    g, i, per_id, feat_div = _pair_scores(emb, labels, max_impostors, np.random.default_rng(seed))
    scores = np.concatenate([g, i])
    issame = np.concatenate([np.ones(len(g), bool), np.zeros(len(i), bool)])
    mu_g, mu_i, var_g, var_i = float(g.mean()), float(i.mean()), float(g.var()), float(i.var())
    return {
        "num_identities": int(len(np.unique(labels))),
        "num_images": int(len(labels)),
        "num_genuine_pairs": int(len(g)),
        "num_impostor_pairs": int(len(i)),
        "eer": equal_error_rate(scores, issame),
        "fdr": (mu_g - mu_i) ** 2 / (var_g + var_i) if var_g + var_i > 0 else math.inf,
        "genuine_mean": mu_g, "genuine_std": math.sqrt(var_g),
        "impostor_mean": mu_i, "impostor_std": math.sqrt(var_i),
        "per_identity_genuine_mean": per_id,
        "per_identity_genuine_min": float(np.nanmin(per_id)),
        "per_identity_genuine_median": float(np.nanmedian(per_id)),
        "feature_diversity": float(np.nanmean(feat_div)),
        "pixel_diversity": _pixel_diversity(images, labels) if images is not None else math.nan,
        "latent_pairwise_distance": _pixel_diversity(latents, labels, 1.0, False) if latents is not None else math.nan,
        "_genuine": g, "_impostor": i,
    }


#: An (aligner, embedder) pair that turns uint8 images into identity embeddings.
Judge = tuple[Aligner, IdentityEmbedder]
#: How latents are truncated when rendered: (psi, cutoff) or (psi, cutoff, centre), as
#: :func:`~exface.exfacegan.samplers.render_latents` takes them.
Truncation = tuple[float | None, int | None] | tuple[float | None, int | None, str]
#: synthesize's face check: (landmark crop aligner, max_error, rounds), see :func:`report_face_check`.
FaceCheck = tuple[Aligner, float, int]
#: synthesize's identity filter: (the labeler's judge, cosine threshold, unit anchor embeddings
#: ``[identities, D]`` (:func:`anchor_embeddings`), rounds), see :func:`render_checked_set`.
IdentityFilter = tuple[Judge, float, Tensor, int]
#: One random stream per baseline set (:func:`candidate_rng`); the equal-diversity calibration
#: draws from the stream of the set it calibrates, so it measures that set's own noise.
BASELINE_STREAMS = {"random": 1, "noise": 2, "noise_equal_diversity": 3}


def check_report_parts(settings: dict, generator: Generator, aligner: Aligner, embedder: IdentityEmbedder,
                       where: object = None) -> None:
    """Refuse parts other than the dataset's (``synthesis.json`` ``parts``; the comparison resume uses).

    The report re-renders the dataset's latents and its baselines with ``generator`` and embeds
    them with ``aligner`` + ``embedder``: with other parts it would measure other images or
    another network's similarities, and compare them with the dataset's stored embeddings.
    """
    from exface.errors import ExfaceError
    from exface.exfacegan.provenance import part_differences, part_fingerprint

    parts = settings.get("parts")
    if not isinstance(parts, dict):
        warnings.warn(f"{where or 'the dataset'} records no parts (made by an older exface); the report's "
                      f"generator, aligner and embedder cannot be checked against it", stacklevel=2)
        return
    diffs: list[str] = []
    for role, part in (("generator", generator), ("aligner", aligner), ("embedder", embedder)):
        rec = parts.get(role)
        if isinstance(rec, str):  # an older dataset recorded class names only
            rec = {"class": rec}
        if rec is not None:
            diffs += part_differences(role, rec, part_fingerprint(part))
    if diffs:
        raise ExfaceError(
            "the report was given other parts than the dataset was made with:\n  " + "\n  ".join(diffs),
            where=where, fix="pass the dataset's generator, aligner and embedder (synthesis.json 'parts'; "
                             "`exface synthesize` writes its report with them itself)",
        )


def check_report_sources(settings: dict, boundaries: Boundaries, references: dict[str, Tensor],
                         where: object = None) -> None:
    """Refuse a bank or boundaries file (reloaded by their recorded paths) that is not the dataset's.

    ``synthesis.json`` records their content digests (``bank_references_sha256``,
    ``boundaries_sha256``); a bank rebuilt or boundaries refit at the same path since then
    would give baselines around other references and normals than the dataset's identities.
    """
    from exface.errors import ExfaceError
    from exface.exfacegan.latent_bank import references_digest
    from exface.exfacegan.provenance import tensor_digest

    now = {"bank_references_sha256": (references_digest(references), "bank", "bank"),
           "boundaries_sha256": (tensor_digest({"normals": boundaries.normals, "offsets": boundaries.offsets}),
                                 "boundaries", "boundaries")}
    diffs, missing = [], []
    for key, (digest, path_key, what) in now.items():
        recorded = settings.get(key)
        if recorded is None:
            missing.append(key)
        elif recorded != digest:
            diffs.append(f"{key}: the dataset was made from {what} {recorded[:12]}..., {settings.get(path_key)!r} "
                         f"now holds {digest[:12]}...")
    if missing:
        warnings.warn(f"{where or 'the dataset'} does not record {missing} (made by an older exface); the bank "
                      f"and boundaries the report reloads cannot be checked", stacklevel=2)
    if diffs:
        raise ExfaceError(
            "the bank or boundaries at the dataset's recorded paths changed since it was made:\n  "
            + "\n  ".join(diffs),
            where=where, fix="restore the bank and boundaries the dataset was made from, or synthesize the dataset "
                             "again from the current ones (a new output_dir), then report on it",
        )


#: the files of a dataset the report reads, whose sha256 are part of the report's identity
DATASET_FILES = ("manifest.jsonl", "latents.npy", "embeddings.npy")


def read_dataset_settings(root: str | Path) -> dict:
    """``synthesis.json`` of the dataset in ``root``; an :class:`~exface.errors.ExfaceFileError` naming
    the file where ``root`` is no complete dataset of ``exface synthesize``."""
    from exface.exfacegan.synthesis import SETTINGS

    root = Path(root)
    spath = root / SETTINGS
    fix = "pass the output_dir of `exface synthesize` as dataset_dir"
    if not root.is_dir():
        raise ExfaceFileError("the dataset folder does not exist" if not root.exists() else
                              "the dataset_dir is a file, not a dataset folder", where=root, fix=fix)
    if not spath.is_file():
        raise ExfaceFileError(f"the folder is not a dataset of `exface synthesize`: it holds no {SETTINGS}",
                              where=spath, fix=fix)
    try:
        settings = json.loads(spath.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ExfaceFileError(f"{SETTINGS} is not valid JSON", where=spath,
                              fix="restore it, or synthesize the dataset again into a new output_dir") from None
    except OSError as err:
        raise ExfaceFileError(f"cannot read {SETTINGS} ({err.strerror or err})", where=spath, fix=fix) from None
    if not isinstance(settings, dict) or settings.get("format", "exface-synthetic-dataset") != "exface-synthetic-dataset":
        raise ExfaceFileError(f"{SETTINGS} is not the settings file of an `exface synthesize` dataset", where=spath,
                              fix=fix)
    missing = [k for k in ("identities", "images_per_identity", "space", "sampler") if k not in settings]
    if missing:
        raise ExfaceFileError(f"{SETTINGS} lacks {missing}: not a complete dataset record", where=spath,
                              fix="synthesize the dataset again into a new output_dir")
    if settings.get("status", "complete") != "complete":
        raise ExfaceStateError(f"the dataset is not complete ({SETTINGS} status {settings.get('status')!r}): "
                               f"its synthesize run stopped before the end", where=spath,
                               fix="run the same synthesize command again to finish it, then report on it")
    return settings


def _read_dataset_arrays(root: Path) -> tuple[list[dict], np.ndarray, Tensor]:
    """The dataset's manifest rows, embeddings and latents (a damaged file is named)."""
    paths = {name: root / name for name in DATASET_FILES}
    for name, p in paths.items():
        if not p.is_file():
            raise ExfaceFileError(f"the dataset has no {name}", where=p,
                                  fix="run the same synthesize command again to finish the dataset")
    try:
        rows = [json.loads(ln) for ln in paths["manifest.jsonl"].read_text().splitlines() if ln.strip()]
    except (ValueError, UnicodeDecodeError):
        raise ExfaceFileError("manifest.jsonl is not valid JSON lines", where=paths["manifest.jsonl"],
                              fix="run the same synthesize command again to rewrite it") from None
    arrays = {}
    for name in ("embeddings.npy", "latents.npy"):
        try:
            arrays[name] = np.load(paths[name])
        except (ValueError, OSError, EOFError) as err:
            raise ExfaceFileError(f"{name} is not a readable array ({type(err).__name__}: {str(err)[:200]})",
                                  where=paths[name], fix="run the same synthesize command again to rewrite it") from None
    emb, lat = arrays["embeddings.npy"], arrays["latents.npy"]
    if len(emb) != len(rows) or len(lat) != len(rows):
        raise ExfaceFileError(f"manifest.jsonl lists {len(rows)} images, embeddings.npy holds {len(emb)} and "
                              f"latents.npy {len(lat)}", where=root,
                              fix="run the same synthesize command again to rewrite them")
    return rows, emb, torch.from_numpy(lat)


def report_identity(root: Path, settings: dict, generator: Generator, aligner: Aligner, embedder: IdentityEmbedder,
                    crop_aligner: Aligner | None, evaluator_judge: tuple[Aligner, IdentityEmbedder] | None, seed: int,
                    max_identities: int | None, baselines: bool) -> dict:
    """What makes a quality report (its ``made_by``): the dataset (path, settings key, sha256 of the
    files it reads), the parts, the evaluator and the settings that change a figure (not batch_size,
    which does not for any batch_size >= images_per_identity, nor where the report is written)."""
    from exface.report_dir import file_sha256, part_identity

    return {
        "report": "exface quality report",
        "dataset": {"path": str(Path(root).resolve()), "settings_key": settings.get("settings_key"),
                    **{f"{name.split('.')[0]}_sha256": file_sha256(Path(root) / name) for name in DATASET_FILES}},
        "parts": {"generator": part_identity(generator), "aligner": part_identity(aligner),
                  "embedder": part_identity(embedder), "crop_aligner": part_identity(crop_aligner),
                  "evaluator": part_identity(evaluator_judge[1]) if evaluator_judge else None,
                  "evaluator_aligner": part_identity(evaluator_judge[0]) if evaluator_judge else None},
        "settings": {"seed": int(seed), "report_identities": max_identities, "baselines": bool(baselines)},
    }


def _stage(what: str) -> None:
    """One progress line per report stage (the report is most of a synthesize run's time)."""
    print(f"quality report: {what}", flush=True)


@torch.no_grad()
def render_set(gan: Generator, judges: list[Judge], latents: Tensor, space: str,
               batch_size: int = 64, truncation: Truncation | None = None,
               ) -> tuple[np.ndarray, list[np.ndarray]]:
    """uint8 images ``[N, 3, h, w]`` (downscaled by :func:`shrink`) and, per judge, embeddings.

    The embeddings are of the full-resolution uint8 images (as a dataset stores them). With
    no judges only the images are rendered. ``truncation`` (psi, cutoff[, centre]) is applied
    at render time to untruncated w (:func:`~exface.exfacegan.samplers.render_latents`).
    """
    from exface.exfacegan.synthesis import embed_images

    imgs: list[np.ndarray] = []
    embs: list[list[np.ndarray]] = [[] for _ in judges]
    for s in range(0, len(latents), batch_size):
        u8 = to_uint8(render_latents(gan, latents[s:s + batch_size], space, *(truncation or (None, None)))).cpu()
        imgs.append(shrink(u8))
        for out, (aligner, embedder) in zip(embs, judges):
            out.append(embed_images(aligner, embedder, u8).cpu().numpy())
    return np.concatenate(imgs), [np.concatenate(e) for e in embs]


def candidate_rng(seed: int, stream: int, boundary: int, side: int, slot: int, rnd: int) -> torch.Generator:
    """The random stream of one baseline candidate: image ``slot`` of (``boundary``, ``side``) in round ``rnd``.

    Seeded from these numbers alone (``stream``: the set, :data:`BASELINE_STREAMS`), so a
    candidate's latent does not depend on which other candidates were drawn before it: not
    on the other identities, their order or their failures, nor on the other sets.
    """
    state = np.random.SeedSequence([int(seed), int(stream), int(boundary), int(side) + 1, int(slot),
                                    int(rnd)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def candidate_draw(sampler, boundaries: Boundaries, references: Tensor, idents: list[tuple[int, int]],
                   gan: Generator, seed: int, stream: int):
    """``draw(j, i, r)`` for :func:`render_checked_set`: one latent of identity ``idents[j]`` = (boundary, side).

    Each candidate is sampled alone (``num=1``) from :func:`candidate_rng`: a sampler that runs
    a network (``RandomSampler`` in w maps z) then sees the same input shape for every candidate.
    """
    def draw(j: int, i: int, r: int) -> Tensor:
        b, s = idents[j]
        return sampler.sample(boundaries, b, s, references[b], 1, candidate_rng(seed, stream, b, s, i, r), gan)[0]

    return draw


@torch.no_grad()
def anchor_embeddings(gan: Generator, judge: Judge, boundaries: Boundaries, references: Tensor,
                      reference_embeddings: Tensor, idents: list[tuple[int, int]], space: str,
                      truncation: Truncation | None = None) -> Tensor:
    """``[len(idents), D]`` unit anchors of the identity filter, as synthesize takes them.

    Side +1: the bank's embedding of the reference; side -1: the labeler ``judge``'s
    embedding of the mirrored reference (:func:`~exface.exfacegan.samplers.anchor_latent`),
    rendered with ``truncation``, one identity per forward pass (so an anchor does not depend
    on which other identities the report covers).
    """
    from exface.exfacegan.synthesis import embed_images

    out = []
    for b, s in idents:
        if s > 0:
            out.append(torch.nn.functional.normalize(reference_embeddings[b].float().cpu(), dim=0))
        else:
            lat = anchor_latent(boundaries, b, -1, references[b]).unsqueeze(0)
            u8 = to_uint8(render_latents(gan, lat, space, *(truncation or (None, None)))).cpu()
            out.append(embed_images(judge[0], judge[1], u8)[0].float().cpu())
    return torch.stack(out) if out else torch.zeros(0, reference_embeddings.shape[1])


@torch.no_grad()
def render_checked_set(gan: Generator, judges: list[Judge], draw, num_identities: int, k: int, space: str,
                       batch_size: int = 64, truncation: Truncation | None = None,
                       face_check: FaceCheck | None = None, identity_filter: IdentityFilter | None = None,
                       ) -> tuple[np.ndarray, list[np.ndarray], Tensor, np.ndarray, dict]:
    """:func:`render_set` of ``num_identities`` x ``k`` images, face-checked and filtered as synthesize does.

    ``draw(j, i, r)`` gives the latent of identity ``j``'s image slot ``i`` in round ``r``
    (:func:`candidate_draw`). With ``face_check`` (crop aligner, max_error, rounds) images
    failing :func:`~exface.exfacegan.crops.aligned_crops`' check are resampled the next round;
    with ``identity_filter`` (labeler judge, threshold, anchors, rounds) so are images whose
    labeler embedding has cosine below the threshold to their identity's anchor. After the
    rounds (the larger of the two) a slot still open takes the most similar of the identity's
    below-threshold rejects (synthesize's "best rejects"), else it is dropped. Without either
    (or for a crop aligner without landmarks, whose check every image passes) it is one
    round: the draws and the images of :func:`render_set`.

    Identities are done one after the other, and each forward pass (render, face check,
    embeddings) holds one identity's candidates of one round, in slot order, at most
    ``batch_size`` of them: with ``batch_size >= k`` nothing about a candidate depends on the
    batch size, on the other identities or on their order.

    Returns the images, per judge the embeddings, the latents, each row's identity index (rows
    by identity: its passing images in slot order, then the rejects kept, most similar first)
    and ``{"face_check_failed", "dropped"}``; with ``identity_filter`` also
    ``"candidates_drawn"``, ``"identity_filter_failed"`` (draws that passed the face check but
    not the filter, resampled), ``"kept_below_filter"`` (rejects kept for open slots) and
    ``"passed_filter"`` (images kept that passed it).
    """
    from exface.alignment.landmark_aligner import LandmarkAligner
    from exface.exfacegan.crops import aligned_crops
    from exface.exfacegan.synthesis import embed_images

    checking = face_check is not None and face_check[1] is not None and isinstance(face_check[0], LandmarkAligner)
    filtering = identity_filter is not None
    rounds = max([1] + ([int(face_check[2])] if checking else []) + ([int(identity_filter[3])] if filtering else []))
    if filtering:
        (f_aligner, f_embedder), threshold, anchors = identity_filter[0], float(identity_filter[1]), identity_filter[2]
        anchors = anchors.float().cpu()
        if len(anchors) != num_identities:
            raise ValueError(f"identity_filter has {len(anchors)} anchors for {num_identities} identities")
        # the labeler is usually judges[0]: reuse its embeddings
        f_judge = next((q for q, (a, e) in enumerate(judges) if a is f_aligner and e is f_embedder), None)
    counts = {"face_check_failed": 0, "dropped": 0}
    if filtering:
        counts.update(candidates_drawn=0, identity_filter_failed=0, kept_below_filter=0, passed_filter=0)
    rows: list[tuple[int, np.ndarray, Tensor, list[np.ndarray]]] = []  # (identity, image, latent, embeddings)
    latent_shape: tuple[int, ...] = (0,)
    for j in range(num_identities):
        open_slots = list(range(int(k)))
        filled: dict[int, tuple] = {}  # slot -> (image, latent, embeddings)
        rejects: list[tuple] = []  # (-similarity, round, slot, (image, latent, embeddings))
        for r in range(rounds):
            if not open_slots:
                break
            lat = torch.stack([draw(j, i, r).float() for i in open_slots])
            latent_shape = tuple(lat.shape[1:])
            if filtering:
                counts["candidates_drawn"] += len(open_slots)
            still_open: list[int] = []
            for s in range(0, len(open_slots), batch_size):
                slots, part = open_slots[s:s + batch_size], lat[s:s + batch_size]
                u8 = to_uint8(render_latents(gan, part, space, *(truncation or (None, None)))).cpu()
                if checking:
                    ok = aligned_crops(face_check[0], u8, face_check[1], module_device(face_check[0]))[1].bool()
                else:
                    ok = torch.ones(len(u8), dtype=torch.bool)
                counts["face_check_failed"] += int((~ok).sum())
                still_open += [slots[q] for q in (~ok).nonzero().flatten().tolist()]  # no face: resampled
                if not ok.any():
                    continue
                keep = ok.nonzero().flatten()
                small = shrink(u8[keep])
                embs = [embed_images(a, e, u8[keep]).cpu().numpy() for a, e in judges]
                if filtering:
                    fe = torch.from_numpy(embs[f_judge]) if f_judge is not None else \
                        embed_images(f_aligner, f_embedder, u8[keep]).float().cpu()
                    sims = (fe.float() @ anchors[j]).tolist()  # as synthesize: emb . anchor
                for q, i in enumerate(keep.tolist()):
                    rec = (small[q], part[i], [e[q] for e in embs])
                    if not filtering or sims[q] >= threshold:
                        filled[slots[i]] = rec
                    else:  # below the threshold: resampled, kept aside as a reject
                        counts["identity_filter_failed"] += 1
                        rejects.append((-sims[q], r, slots[i], rec))
                        still_open.append(slots[i])
            open_slots = sorted(still_open)
            # only the k - filled most similar rejects can ever be used (filled only grows)
            rejects = sorted(rejects, key=lambda t: t[:3])[:int(k) - len(filled)]
        fill = [t[3] for t in rejects[:len(open_slots)]]
        if filtering:
            counts["kept_below_filter"] += len(fill)
            counts["passed_filter"] += len(filled)
        counts["dropped"] += len(open_slots) - len(fill)
        rows += [(j, *filled[i]) for i in sorted(filled)] + [(j, *rec) for rec in fill]
    imgs = np.stack([r[1] for r in rows]) if rows else np.zeros((0, 3, 1, 1), np.uint8)
    embs = [np.stack([r[3][i] for r in rows]) if rows else np.zeros((0, 0), np.float32) for i in range(len(judges))]
    lats = torch.stack([r[2] for r in rows]) if rows else torch.zeros(0, *latent_shape)
    return imgs, embs, lats, np.array([r[0] for r in rows], dtype=np.int64), counts


def report_face_check(settings: dict, crop_aligner: Aligner | None, where: object = None) -> tuple[FaceCheck | None, str]:
    """The face check the baselines get (None: none) and what it is, from ``synthesis.json``.

    ``"same"``: the dataset's landmark face check, with its rounds; ``"none"``: the dataset had
    no landmark face check (none, or a crop aligner without landmarks, which every image
    passes), so neither side has one; ``"not applied"``: the dataset's images passed a landmark
    face check but no ``crop_aligner`` was given, so the baselines' were not checked (the
    verdict says so). A given crop aligner must be the dataset's (the comparison resume uses).
    """
    from exface.errors import ExfaceError
    from exface.exfacegan.crops import crop_part_fingerprints, describe_crop
    from exface.exfacegan.provenance import part_differences

    crop, max_error = settings.get("crop"), settings.get("face_check")
    if crop is None or max_error is None or "template" not in crop:  # describe_crop: landmark aligners only
        return None, "none"
    if crop_aligner is None:
        warnings.warn(f"the dataset's images passed a face check by its {crop.get('class')} crop aligner, but the "
                      f"report was given no crop_aligner: its baselines are not face-checked (the verdict says "
                      f"so); pass the dataset's crop_aligner", stacklevel=3)
        return None, "not applied"
    recorded = {r: v for r, v in (settings.get("parts") or {}).items() if r.startswith("crop_aligner")}
    given = crop_part_fingerprints(crop_aligner)
    diffs = [d for role in sorted(set(recorded) | set(given))
             for d in part_differences(role, recorded.get(role), given.get(role))]
    now = json.loads(json.dumps(describe_crop(crop_aligner), sort_keys=True))
    if now != json.loads(json.dumps(crop, sort_keys=True)):
        diffs.append(f"crop: the dataset's is {crop}, the given aligner's {now}")
    if diffs:
        raise ExfaceError(
            "the report was given another crop_aligner than the dataset was made with:\n  " + "\n  ".join(diffs),
            where=where, fix="pass the dataset's crop_aligner (synthesis.json 'parts'), or none (the baselines are "
                             "then not face-checked, and the verdict says so)",
        )
    return (crop_aligner.eval(), float(max_error), max(1, int(settings.get("filter_rounds") or 1))), "same"


def _identity_batches(labels, batch_size: int) -> list[slice]:
    """Forward-pass slices of rows grouped by identity: each run of one identity's rows, split at ``batch_size``.

    The dataset's images are embedded one identity per pass, as the baselines' are
    (:func:`render_checked_set`), so their embeddings do not change with the batch size
    (for ``batch_size >= images_per_identity``) or with the identities the report covers.
    """
    out, start, labels = [], 0, list(labels)
    for q in range(1, len(labels) + 1):
        if q == len(labels) or labels[q] != labels[start] or q - start == batch_size:
            out.append(slice(start, q))
            start = q
    return out


@torch.no_grad()
def _embed_files(root: Path, rows: list[dict], judge: Judge, batch_size: int) -> np.ndarray:
    """Embeddings of a dataset's stored frames (full resolution) by one judge, one identity per pass."""
    from PIL import Image

    from exface.exfacegan.synthesis import embed_images

    out = []
    for sl in _identity_batches([r["identity"] for r in rows], batch_size):
        u8 = torch.from_numpy(np.stack([np.asarray(Image.open(root / r.get("frame", r["file"])).convert("RGB"))
                                        .transpose(2, 0, 1)
                                        for r in rows[sl]]))
        out.append(embed_images(judge[0], judge[1], u8).cpu().numpy())
    return np.concatenate(out)


def calibrate_sigma_to_diversity(gan: Generator, boundaries: Boundaries, references: Tensor,
                                 idents: list[tuple[int, int]], k: int, space: str, target: float,
                                 start_sigma: float, normalize_z: bool,
                                 truncation: Truncation | None,
                                 seed: int = 0, batch_size: int = 64, steps: int = 7,
                                 face_check: FaceCheck | None = None,
                                 identity_filter: IdentityFilter | None = None,
                                 stream: int = BASELINE_STREAMS["noise_equal_diversity"]) -> tuple[float, float]:
    """Noise sigma whose rendered images have pixel diversity ``target``, and the diversity reached.

    Pixel diversity grows with sigma, so it is found by geometric bisection, each step
    rendering ``k`` images for each of ``idents`` (a subset of the identities keeps it cheap),
    with ``truncation`` (psi, cutoff[, centre]; None: none) applied at render time, and
    ``face_check`` and ``identity_filter`` (anchors of ``idents``) as the set it calibrates
    gets them (:func:`render_checked_set`). Every step draws the same candidates' noise
    (``stream``: by default the equal-diversity set's own, so the subset's draws are that
    set's), scaled by its sigma. When even very large noise stays below ``target`` the
    largest sigma tried is returned.
    """
    def diversity(sigma: float) -> float:
        draw = candidate_draw(NoiseSampler(sigma, normalize_z=normalize_z), boundaries, references, idents, gan,
                              seed, stream)
        imgs, _, _, owner, _ = render_checked_set(gan, [], draw, len(idents), k, space, batch_size, truncation,
                                                  face_check, identity_filter)
        return _pixel_diversity(imgs, owner)

    lo, hi = 0.0, max(start_sigma, 1e-3)
    d_hi = diversity(hi)
    while d_hi < target and hi < 1e3:
        lo, hi = hi, hi * 2
        d_hi = diversity(hi)
    if d_hi < target:
        return hi, d_hi
    best = (hi, d_hi)
    for _ in range(steps):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        d = diversity(mid)
        if abs(d - target) < abs(best[1] - target):
            best = (mid, d)
        lo, hi = (mid, hi) if d < target else (lo, mid)
    return best


def calibrate_noise_sigma(boundaries: Boundaries, references: Tensor, idents: list[tuple[int, int]],
                          target_spread: float, normalize_z: bool, samples: int = 16, seed: int = 0) -> float:
    """Sigma whose noise samples lie ``target_spread`` (mean L2) from their anchor, by bisection.

    Without the z sphere projection this is the chi mean ``sigma * E||eps||``; with it the
    projection shrinks the spread, so the sigma is found numerically on a fixed noise draw.
    """
    d = references.shape[1]
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.stack([anchor_latent(boundaries, b, s, references[b]) for b, s in idents])
    eps = torch.randn(len(anchors), samples, d, generator=gen)

    def spread(sigma: float) -> float:
        x = anchors[:, None] + sigma * eps
        if boundaries.space == "z" and normalize_z:
            x = x / x.norm(dim=-1, keepdim=True) * math.sqrt(d)
        return float((x - anchors[:, None]).norm(dim=-1).mean())

    lo, hi = 0.0, 1.0
    while spread(hi) < target_spread and hi < 1e4:
        hi *= 2
    if spread(hi) < target_spread:
        return hi  # projection caps the spread; the largest sigma tried
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spread(mid) < target_spread else (lo, mid)
    return (lo + hi) / 2


def _grid(images: np.ndarray, labels: np.ndarray, rows: int = 8, cols: int = 10) -> bytes:
    """PNG bytes of up to ``rows`` identities x ``cols`` images."""
    import io

    from PIL import Image

    ids = list(dict.fromkeys(labels.tolist()))[:rows]
    h, w = images.shape[2:]
    canvas = np.full((len(ids) * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for r, lab in enumerate(ids):
        for c, img in enumerate(images[labels == lab][:cols]):
            canvas[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = img.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def _histogram(sets: dict[str, dict]) -> bytes:
    """PNG bytes of the genuine / impostor similarity histograms of every set."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), sharey=False)
    # one x range for every panel, from the lowest score of any set (face-api scores, say,
    # all lie above 0.7: a [-1, 1] axis would squeeze them into a few bins)
    lo = min(float(min(m["_genuine"].min(initial=1.0), m["_impostor"].min(initial=1.0))) for m in sets.values())
    lo = max(-1.0, math.floor(lo * 20) / 20)
    for ax, (name, m) in zip(np.atleast_1d(axes), sets.items()):
        bins = np.linspace(lo, 1, 81)
        ax.hist(m["_impostor"], bins=bins, density=True, alpha=0.55, label="impostor")
        ax.hist(m["_genuine"], bins=bins, density=True, alpha=0.55, label="genuine")
        ax.set_title(f"{name}: EER {m['eer']:.3f}, FDR {m['fdr']:.2f}")
        ax.set_xlabel("cosine similarity")
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def quality_report(
    dataset_dir: str | Path,
    report_dir: str | Path,
    generator: Generator,
    aligner: Aligner,
    embedder: IdentityEmbedder,
    batch_size: int = 64,
    seed: int = 0,
    max_identities: int | None = None,
    baselines: bool = True,
    evaluator: IdentityEmbedder | None = None,
    evaluator_aligner: Aligner | None = None,
    independent_evaluator: bool = True,
    crop_aligner: Aligner | None = None,
) -> dict:
    """Write the report for the dataset in ``dataset_dir`` (made by ``exface synthesize``).

    ``crop_aligner``: the dataset's crop aligner; with a landmark one the baselines get the
    dataset's face check (:func:`report_face_check`).

    ``evaluator`` (with ``evaluator_aligner``; default: the labeler's crop at its size) scores
    every set beside the labeler ``embedder`` and decides the verdict. None picks
    :func:`~exface.exfacegan.evaluator.default_evaluator` unless ``independent_evaluator`` is
    False (then the labeler judges alone, and the verdict says so).
    """
    from exface.exfacegan.evaluator import default_evaluator, evaluator_aligner as retarget, is_same_network
    from exface.exfacegan.synthesis import SETTINGS, load_bank_references, load_boundaries
    from exface.report_dir import ReportDir

    root, out = Path(dataset_dir), Path(report_dir)
    settings = read_dataset_settings(root)
    for m in (generator, aligner, embedder):  # inference: batch norm on its running statistics, not the batch's
        m.eval()
    check_report_parts(settings, generator, aligner, embedder, where=root / SETTINGS)

    why = "given"
    if evaluator is None:
        evaluator, why = default_evaluator(embedder) if independent_evaluator else (None, "independent_evaluator=False")
    if evaluator is not None and is_same_network(evaluator, embedder):
        # the labeler judging its own labels is no independent check: say so, as without an evaluator
        why = (f"the evaluator given is the labeler itself ({type(embedder).__name__}, the same weights), so it "
               f"is no independent judge; pass another network as evaluator")
        log.warning("quality report: %s", why)
        evaluator = None
    judges: list[Judge] = [(aligner, embedder)]
    if evaluator is not None:
        evaluator.eval()
        ev_aligner = evaluator_aligner if evaluator_aligner is not None else retarget(aligner, evaluator)
        judges.append((ev_aligner.eval(), evaluator))
    if baselines:  # the baselines' inputs, checked before anything is computed or written
        face_check, fc_status = report_face_check(settings, crop_aligner, where=root / SETTINGS)
        for key in ("bank", "boundaries"):
            if not settings.get(key):
                raise ExfaceFileError(f"{SETTINGS} records no {key} path: the baselines cannot be rendered",
                                      where=root / SETTINGS,
                                      fix="pass baselines=False (--baselines false) for a report without them")
        bnd = load_boundaries(settings["boundaries"])
        _, refs = load_bank_references(settings["bank"], generator, embedder, aligner)
        check_report_sources(settings, bnd, refs, where=root / SETTINGS)
    arrays = _read_dataset_arrays(root)
    made_by = report_identity(root, settings, generator, aligner, embedder, crop_aligner,
                              judges[1] if evaluator is not None else None, seed, max_identities, baselines)
    fix = (f"pass another report_dir (`exface report --dataset_dir {root} --report_dir NEW` reports on this dataset "
           f"without synthesizing it again), or delete {out} to replace the report there")
    with ReportDir(out, made_by, "quality report", fix=fix) as rd:
        result = _quality_report_into(rd, root, settings, arrays, generator, embedder, judges, evaluator, why,
                                      batch_size, seed, max_identities, baselines, made_by,
                                      (face_check, fc_status, bnd, refs) if baselines else None)
    lines = _markdown(result)
    print("\n".join(lines[: lines.index("") if "" in lines else 3]))
    print(_table(result, "evaluator_sets" if result.get("evaluator_sets") else "sets"))
    return result


def _quality_report_into(rd, root: Path, settings: dict, arrays: tuple, generator: Generator,
                         embedder: IdentityEmbedder, judges: list, evaluator, why: str, batch_size: int, seed: int,
                         max_identities: int | None, baselines: bool, made_by: dict, sources) -> dict:
    """The body of :func:`quality_report`: compute the sets and write every file through ``rd``."""
    from PIL import Image

    rows, emb, lat = arrays
    idents = [tuple(x) for x in settings["identities"]]
    if max_identities is not None:
        idents = idents[:max_identities]
    names = {n for n, _, _ in idents}
    sel = np.array([r["identity"] in names for r in rows])
    rows = [r for r, s in zip(rows, sel) if s]
    emb, lat = emb[sel], lat[torch.from_numpy(sel)]
    labels = np.array([r["identity"] for r in rows])
    k = settings["images_per_identity"]
    space = settings["space"]
    if baselines and batch_size < k:
        log.warning("quality report: batch_size %d < images_per_identity %d splits each identity's baseline pass; "
                    "the report then depends on the batch size through kernel rounding (pass batch_size >= %d for "
                    "one that does not)", batch_size, k, k)
    # applied when rendering latents, as synthesize did
    trunc = (settings.get("truncation_psi"), settings.get("truncation_cutoff"),
             settings.get("truncation_center", "w_avg"))
    ev_emb = None
    _stage(f"reading the dataset's {len(rows)} images ({len(idents)} identities)")
    # the baselines are lossless frames: measure the dataset on its PNG frames where they are on
    # disk, else (crops, or JPEG files) on frames re-rendered from its latents
    lossless_files = settings.get("crop") is None and settings.get("image_format", "png") != "jpeg"
    measured_on = "stored frames" if lossless_files or all("frame" in r for r in rows) else "re-rendered frames"
    if measured_on == "stored frames":
        images = np.concatenate([shrink(np.asarray(Image.open(root / r.get("frame", r["file"])).convert("RGB"))
                                        .transpose(2, 0, 1)[None]) for r in rows])
        if evaluator is not None:
            _stage(f"embedding the dataset's {len(rows)} images with the evaluator {type(evaluator).__name__}")
            ev_emb = _embed_files(root, rows, judges[1], batch_size)
    else:  # crops or JPEGs on disk: re-render the frames, as the baselines are measured on frames
        parts = [render_set(generator, judges[1:], lat[sl].float(), space, batch_size, trunc)
                 for sl in _identity_batches(labels, batch_size)]
        images = np.concatenate([p[0] for p in parts])
        ev_emb = np.concatenate([p[1][0] for p in parts]) if evaluator is not None else None

    sets = {"boundary": set_metrics(emb, labels, images, seed=seed, latents=lat.numpy())}
    ev_sets: dict[str, dict] = {}
    if ev_emb is not None:
        ev_sets["boundary"] = set_metrics(ev_emb, labels, images, seed=seed, latents=lat.numpy())
    result: dict = {"dataset": str(root), "sampler": settings["sampler"], "images_per_identity": k,
                    "num_identities": len(idents), "space": space, "labeler": type(embedder).__name__,
                    "evaluator": type(evaluator).__name__ if evaluator is not None else None,
                    "evaluator_choice": why,
                    "face_check": {k2: settings.get(k2) for k2 in ("crop", "face_check", "face_check_failed", "dropped")},
                    "identity_filter": settings.get("identity_filter"),
                    "image_format": settings.get("image_format", "png"), "jpeg_quality": settings.get("jpeg_quality"),
                    "dataset_measured_on": measured_on}
    grids = {"boundary": "grid.png"}
    rd.write_bytes("grid.png", _grid(images, labels))
    if baselines:
        face_check, fc_status, bnd, refs = sources
        result["baseline_face_check"] = {"status": fc_status, "face_check": face_check[1] if face_check else None,
                                         "rounds": face_check[2] if face_check else None, "sets": {}}
        references = refs[space].float()
        pos = np.array([r["side"] > 0 for r in rows])
        ref_of = references[torch.tensor([r["boundary"] for r in rows])]
        spread = float((lat[torch.from_numpy(pos)] - ref_of[torch.from_numpy(pos)]).norm(dim=1).mean()) if pos.any() \
            else float((lat - ref_of).norm(dim=1).mean())
        normalize_z = bool(settings["sampler"].get("normalize_z", False))
        sigma = calibrate_noise_sigma(bnd, references, [(b, s) for _, b, s in idents], spread, normalize_z, seed=seed)
        samplers = {"random": RandomSampler(), "noise": NoiseSampler(sigma, normalize_z=normalize_z)}
        names_of = np.array([n for n, _, _ in idents])
        pairs = [(b, s) for _, b, s in idents]
        # synthesize's identity filter, applied to the baselines alike: same threshold, the labeler's
        # embedding of the same crop, the same anchors and rounds
        id_filter: IdentityFilter | None = None
        threshold = settings.get("identity_filter")
        result["baseline_identity_filter"] = {"status": "none", "identity_filter": threshold, "sets": {}}
        if threshold is not None:
            filter_rounds = max(1, int(settings.get("filter_rounds") or 1))
            _stage(f"embedding the anchors of the identity filter ({len(idents)} identities)")
            anchors = anchor_embeddings(generator, judges[0], bnd, references, refs["embedding"], pairs, space, trunc)
            id_filter = (judges[0], float(threshold), anchors, filter_rounds)
            result["baseline_identity_filter"].update(
                status="same", rounds=filter_rounds,
                dataset={"images": len(rows), "kept_below_filter": sum(not r.get("passed_filter", True) for r in rows)})
        face_keys = ("face_check_failed", "dropped")

        def baseline(name: str, sam) -> tuple[np.ndarray, list[np.ndarray], Tensor, np.ndarray, dict]:
            draw = candidate_draw(sam, bnd, references, pairs, generator, seed, BASELINE_STREAMS[name])
            # the random set is the chance floor: never filtered (see the module docstring)
            res = render_checked_set(generator, judges, draw, len(idents), k, space, batch_size, trunc, face_check,
                                     None if name == "random" else id_filter)
            counts = res[4]
            result["baseline_face_check"]["sets"][name] = {k2: counts[k2] for k2 in face_keys}
            if id_filter is not None and name != "random":
                result["baseline_identity_filter"]["sets"][name] = {k2: v for k2, v in counts.items()
                                                                    if k2 not in face_keys}
            return res

        for name, sam in samplers.items():
            _stage(f"rendering and embedding the {name} baseline ({len(idents) * k} images)")
            imgs, es, lats, owner, counts = baseline(name, sam)
            lab = names_of[owner]
            sets[name] = set_metrics(es[0], lab, imgs, seed=seed, latents=lats.numpy())
            if evaluator is not None:
                ev_sets[name] = set_metrics(es[1], lab, imgs, seed=seed, latents=lats.numpy())
            if name == "noise":
                sets[name]["latent_spread"] = float(
                    (lats - torch.stack([anchor_latent(bnd, b, s, references[b]) for _, b, s in idents])[owner])
                    .norm(dim=1).mean())
            rd.write_bytes(f"grid_{name}.png", _grid(imgs, lab))
            grids[name] = f"grid_{name}.png"
        sets["boundary"]["latent_spread"] = spread
        result["noise_sigma"] = sigma
        result["matched_latent_spread"] = spread
        # The comparison the verdict uses: noise of the same pixel diversity as the boundary sampler.
        target = sets["boundary"]["pixel_diversity"]
        sub = pairs[:24]
        sub_filter = None if id_filter is None else (id_filter[0], id_filter[1], id_filter[2][:len(sub)], id_filter[3])
        _stage("calibrating the noise baseline to the dataset's pixel diversity")
        sigma_div, reached = calibrate_sigma_to_diversity(
            generator, bnd, references, sub, k, space, target, sigma, normalize_z, trunc, seed=seed,
            batch_size=batch_size, face_check=face_check, identity_filter=sub_filter,
            stream=BASELINE_STREAMS["noise_equal_diversity"])
        sam = NoiseSampler(sigma_div, normalize_z=normalize_z)
        _stage(f"rendering and embedding the equal-diversity noise baseline ({len(idents) * k} images)")
        imgs, es, lats, owner, counts = baseline("noise_equal_diversity", sam)
        lab = names_of[owner]
        sets["noise_equal_diversity"] = set_metrics(es[0], lab, imgs, seed=seed, latents=lats.numpy())
        if evaluator is not None:
            ev_sets["noise_equal_diversity"] = set_metrics(es[1], lab, imgs, seed=seed, latents=lats.numpy())
        rd.write_bytes("grid_noise_equal_diversity.png", _grid(imgs, lab))
        grids["noise_equal_diversity"] = "grid_noise_equal_diversity.png"
        result["noise_equal_diversity_sigma"] = sigma_div
        result["noise_equal_diversity_calibration"] = {"target": target, "reached_on_subset": reached,
                                                       "subset_identities": len(sub)}
    rd.write_bytes("similarity_hist.png", _histogram(ev_sets or sets))
    result["sets"] = {n: {k2: v for k2, v in m.items() if not k2.startswith("_")} for n, m in sets.items()}
    if ev_sets:
        for name in ("noise", "boundary"):  # the latent spreads are properties of the latents
            if name in sets and "latent_spread" in sets[name]:
                ev_sets[name]["latent_spread"] = sets[name]["latent_spread"]
        result["evaluator_sets"] = {n: {k2: v for k2, v in m.items() if not k2.startswith("_")}
                                    for n, m in ev_sets.items()}
    result["grids"] = grids

    result["made_by"] = made_by
    lines = _markdown(result)
    result["verdict"] = lines[0]
    rd.write_text("report.json", json.dumps(result, indent=1))
    rd.write_text("report.md", "\n".join(lines) + "\n")
    return result


def _judged_by(result: dict) -> str:
    if result.get("evaluator_sets"):
        return (f"judged by the independent evaluator {result['evaluator']} "
                f"(labels by {result.get('labeler')})")
    return (f"judged by the labeler {result.get('labeler')} itself, the network the boundaries were fit to: "
            f"not an independent check ({result.get('evaluator_choice', 'no evaluator')})")


def _unlike(result: dict) -> list[str]:
    """What differs between the dataset's images and the baselines' besides the sampler (for the verdict)."""
    out = []
    fc, ds = result.get("baseline_face_check") or {}, result.get("face_check") or {}
    if fc.get("status") == "not applied":
        out.append(f"the dataset's images passed the face check ({ds.get('face_check_failed') or 0} draws failed and "
                   f"were resampled, {ds.get('dropped') or 0} dropped), the baselines' were not face-checked (the "
                   f"report was given no crop_aligner)")
    bif = result.get("baseline_identity_filter") or {}
    # the baselines get the dataset's identity filter; only a report.json made before they did lacks it
    if result.get("identity_filter") is not None and bif.get("status") != "same":
        out.append(f"only the dataset's images passed the identity filter (cosine >= {result['identity_filter']} to "
                   f"the anchor by the labeler {result.get('labeler')}, resampled below it)")
    sets = result.get("evaluator_sets") or result["sets"]
    counts = {n: m["num_images"] for n, m in sets.items()}
    if len(set(counts.values())) > 1:
        out.append("image counts differ (" + ", ".join(f"{n} {c}" for n, c in counts.items()) + ")")
    return out


def _verdict(result: dict) -> str:
    s = result.get("evaluator_sets") or result["sets"]
    if "noise" not in s:
        return "No baselines were computed (baselines=False): no verdict."
    b = s["boundary"]
    n = s.get("noise_equal_diversity", s["noise"])
    d = s["noise"]
    eer_better = b["eer"] < n["eer"]
    div_ok = b["pixel_diversity"] >= n["pixel_diversity"] * (1 - DIVERSITY_TOLERANCE)
    nums = (f"EER {b['eer']:.4f} vs {n['eer']:.4f} for noise of pixel diversity {n['pixel_diversity']:.4f} "
            f"(boundary {b['pixel_diversity']:.4f}), FDR {b['fdr']:.2f} vs {n['fdr']:.2f}; against noise at the same "
            f"latent distance: EER {b['eer']:.4f} vs {d['eer']:.4f}, pixel diversity {b['pixel_diversity']:.4f} vs "
            f"{d['pixel_diversity']:.4f}")
    nums = f"{nums}; {_judged_by(result)}"
    unlike = _unlike(result)
    if unlike:
        nums = f"{nums}; not like for like: {'; '.join(unlike)}"
    if eer_better and div_ok:
        return f"**Yes: the boundary sampler beats the noise baseline** (lower EER at equal or greater diversity): {nums}."
    why = []
    if not eer_better:
        why.append("its EER is not lower")
    if not div_ok:
        why.append("its images are less diverse than the noise it is compared with")
    return f"**No: the boundary sampler does not beat the noise baseline** ({' and '.join(why)}): {nums}."


def _table(result: dict, key: str = "sets") -> str:
    head = ("| set | EER | FDR | genuine mean | impostor mean | per-id genuine min / median | pixel diversity "
            "| feature diversity | latent pairwise dist |")
    out = [head, "|" + "---|" * 9]
    for name, m in result[key].items():
        out.append(
            f"| {name} | {m['eer']:.4f} | {m['fdr']:.3f} | {m['genuine_mean']:.3f} | {m['impostor_mean']:.3f} | "
            f"{m['per_identity_genuine_min']:.3f} / {m['per_identity_genuine_median']:.3f} | "
            f"{m['pixel_diversity']:.4f} | {m['feature_diversity']:.4f} | {m['latent_pairwise_distance']:.3f} |"
        )
    return "\n".join(out)


def _markdown(result: dict) -> list[str]:
    lines = [_verdict(result), ""]
    lines.append(f"# Synthetic dataset quality: {result['dataset']}")
    lines.append("")
    lines.append(
        f"{result['num_identities']} identities x {result['images_per_identity']} images, latent space "
        f"{result['space']}, sampler {json.dumps(result['sampler'])}."
    )
    if "noise_sigma" in result:
        lines.append(
            f"Baselines use the same generator, aligner, embedder, identities and image counts. `random`: K independent "
            f"random latents per identity (chance floor). `noise`: anchor latent + N(0, sigma^2 I) with "
            f"**sigma = {result['noise_sigma']:.4f}**, chosen so the mean latent distance from the reference matches the "
            f"boundary sampler's ({result['matched_latent_spread']:.4f}; noise set: "
            f"{result['sets']['noise'].get('latent_spread', float('nan')):.4f})"
            + (" -- sigma is matched on unfiltered noise; the identity filter then keeps the nearer draws, so the "
               "noise set's own spread is the one to read." if (result.get("baseline_identity_filter") or {}).get(
                   "status") == "same" else ".")
        )
    if "noise_equal_diversity_sigma" in result:
        cal = result["noise_equal_diversity_calibration"]
        lines.append(
            f"`noise_equal_diversity`: the same noise with **sigma = {result['noise_equal_diversity_sigma']:.4f}**, "
            f"found by bisection so that its pixel diversity matches the boundary sampler's ({cal['target']:.4f}; "
            f"{cal['reached_on_subset']:.4f} on the {cal['subset_identities']} identities it was calibrated on). "
            f"The verdict compares against this set: equal diversity, so the EER decides."
        )
    fc = result.get("face_check") or {}
    if fc.get("crop"):
        lines.append(
            f"Stored images: {fc['crop']['class']} crops {fc['crop']['output_size']}; face check "
            f"{'off' if fc.get('face_check') is None else fc['face_check']}: {fc.get('face_check_failed') or 0} draws "
            f"failed it (resampled), {fc.get('dropped') or 0} images dropped. Pixel diversity is measured on the frames."
        )
    bfc = result.get("baseline_face_check") or {}
    if bfc.get("status") == "same":
        lines.append(
            f"The baselines got the same face check (max error {bfc['face_check']}, {bfc['rounds']} rounds): "
            + ", ".join(f"{n} {c['face_check_failed']} draws failed, {c['dropped']} dropped"
                        for n, c in bfc["sets"].items()) + "."
        )
    elif bfc.get("status") == "not applied":
        lines.append("The baselines were not face-checked (no crop_aligner was given to the report): not like for "
                     "like, see the verdict.")
    bif = result.get("baseline_identity_filter") or {}
    if bif.get("status") == "same":
        ds = bif.get("dataset") or {}
        lines.append(
            f"The baselines got the dataset's identity filter (cosine >= {bif['identity_filter']} to the identity's "
            f"anchor by the labeler {result.get('labeler')}, {bif['rounds']} rounds; draws below it resampled, and "
            f"where the rounds ran out the most similar rejects kept, as synthesize keeps them): "
            + ", ".join(f"{n} {c['identity_filter_failed']} of {c['candidates_drawn']} draws below it, "
                        f"{c['kept_below_filter']} images kept below it" for n, c in bif["sets"].items())
            + f"; the dataset: {ds.get('kept_below_filter', 0)} of {ds.get('images', 0)} images kept below it. "
            f"`random`, the chance floor, is not filtered."
        )
    if result.get("image_format") == "jpeg" and result.get("dataset_measured_on") == "re-rendered frames":
        lines.append(f"The dataset stores JPEG (quality {result.get('jpeg_quality')}); its images are measured on "
                     f"lossless frames re-rendered from its latents, as the baselines' are.")
    if result.get("evaluator_sets"):
        lines += ["", f"## Judged by the evaluator {result['evaluator']} (no part in the labels; the verdict's figures)",
                  "", _table(result, "evaluator_sets"),
                  "", f"## Judged by the labeler {result['labeler']} (made the labels the boundaries were fit to)",
                  "", _table(result), ""]
    else:
        lines += ["", f"## Judged by the labeler {result.get('labeler')} (no independent evaluator: "
                      f"{result.get('evaluator_choice')})", "", _table(result), ""]
    lines.append("EER/FDR from all genuine pairs and up to 200k random impostor pairs; pixel diversity = mean pairwise "
                 f"RMS distance of [0, 1] images (area-downscaled to at most {REPORT_SIZE} px) within an identity; feature diversity = mean pairwise 1 - cos within "
                 "an identity; latent pairwise dist = mean pairwise L2 of an identity's latents. Winning = lower EER than "
                 f"noise_equal_diversity, with pixel diversity at least {100 * (1 - DIVERSITY_TOLERANCE):.0f}% of its.")
    lines += ["", "![similarities](similarity_hist.png)", ""]
    for name, g in result["grids"].items():
        lines.append(f"{name}: ![{name}]({g})")
    return lines


@command("report")
def report(
    dataset_dir: str,
    generator: Generator,
    aligner: Aligner,
    embedder: IdentityEmbedder,
    report_dir: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    report_identities: int | None = None,
    baselines: bool = True,
    evaluator: IdentityEmbedder | None = None,
    evaluator_aligner: Aligner | None = None,
    independent_evaluator: bool = True,
    crop_aligner: Aligner | None = None,
) -> None:
    """Quality report of a dataset made by `exface synthesize` (vs random and noise baselines).

    Args:
        dataset_dir: the synthesize output_dir. generator / aligner / embedder: the parts it was made with
            (checked against synthesis.json's "parts"; the bank and boundaries it reloads by their
            recorded paths are checked against its recorded digests).
        report_dir: where to write (default: dataset_dir/../report). A folder holding another
            report (of another dataset, or with other parts or settings) is refused; the same
            report again replaces it.
        batch_size: images per forward pass, of one identity at a time (the report is the same for any
            batch_size >= images_per_identity). seed: seed of the baselines and impostor pairs.
        report_identities: only the first this many identities (default all).
        baselines: also render the random and noise baselines.
        evaluator: the independent network the verdict uses (default: another offline network
            than the labeler, e.g. HSEFaceRes for FaceApiResNet34 labels).
        evaluator_aligner: its crops (default: the labeler's crop at its input size).
        independent_evaluator: False skips the evaluator (the labeler then judges alone).
        crop_aligner: the dataset's crop aligner (checked against synthesis.json's "parts"); with a
            landmark one the baselines get the dataset's face check. Without it a landmark face
            check is the dataset's alone, and the verdict says so.
    """
    for m in (generator, aligner, embedder) + ((crop_aligner,) if crop_aligner is not None else ()):
        m.eval()
    quality_report(dataset_dir, report_dir or str(Path(dataset_dir).resolve().parent / "report"), generator,
                   aligner, embedder, batch_size=batch_size, seed=seed, max_identities=report_identities,
                   baselines=baselines, evaluator=evaluator, evaluator_aligner=evaluator_aligner,
                   independent_evaluator=independent_evaluator, crop_aligner=crop_aligner)
