"""``exface synthesize``: render an identity dataset from learned identity boundaries.

For every boundary r the positive side is one identity ``{r:06d}`` and, with
``both_sides``, the negative side a second identity ``{r:06d}_neg`` (ExFaceGAN's two
identities per boundary). Each identity gets ``images_per_identity`` images drawn by a
sampler (:mod:`exface.exfacegan.samplers`), optionally filtered by cosine similarity to the
identity's anchor embedding (the reference's embedding; for the negative side, the
embedding of the reference mirrored across the boundary).

Layout of ``output_dir``::

    <identity>/<k>.png     uint8 RGB PNG (or ``.jpg``: ``image_format``) of what FR trains on:
                           the ``crop_aligner``'s crop (e.g. the 112x112 ArcFace template),
                           or the generator frame at native resolution without one
    frames/<identity>/<k>.png  the native frame beside the crop (``save_frames``)
    manifest.jsonl         one line per image: identity, boundary, side, file, [frame,] k,
                           signed_distance, similarity_to_reference, passed_filter
    latents.npy            [N, d] float32, the latents in manifest order (space in synthesis.json)
    embeddings.npy         [N, D] float32, embedder(aligner(PNG pixels)) in manifest order
    synthesis.json         the settings, identities and acceptance rate of the run
    .work/<identity>/c<chunk>.pt   per work item record (what resuming checks)

Work is split into items (identity, chunk of up to ``batch_size`` images); each item's
random stream is seeded from ``(seed, boundary, side, chunk)``. Forward passes render fixed
*groups* of the whole plan: group g is items ``[g*G, (g+1)*G)`` with ``G = batch_size //
chunk`` (``forward_items`` in ``synthesis.json``; a resume keeps the recorded value), always
rendered together, the same shapes every time. Conv nets can give batch-composition
dependent results (oneDNN, cuDNN's algorithm choice, TF32), so batching only the items a
resume still lacks could flip a uint8 rounding or a filter decision; with fixed groups every
image's bytes are independent of where a run was interrupted and of how the groups are spread
over devices (on the same hardware and libraries).
``lightning.Trainer.predict`` shards the groups over ``devices`` (DDP, each group on one
device). A resume renders every group that holds an incomplete item, whole, and writes only
its incomplete items. Images whose landmarks fail the crop
aligner's face check (:func:`exface.exfacegan.crops.plausible_faces`) are resampled for up
to ``filter_rounds`` rounds, then dropped; both are counted (``face_check_failed``,
``dropped`` in ``synthesis.json``). Embeddings and the identity filter always use the
embedder's own ``aligner`` on the frame. Files are written atomically (tmp file +
``os.replace``); an item is complete when its record exists and all its images do, and a
re-run rewrites only incomplete items.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from exface.alignment.base import Aligner
from exface.boundaries.base import Boundaries
from exface.commands import command
from exface.embedders.base import IdentityEmbedder
from exface.errors import ExfaceError, ExfaceFileError, ExfaceStateError
from exface.exfacegan.provenance import part_differences, part_fingerprint, tensor_digest
from exface.exfacegan.run_files import (
    FolderLock,
    atomic_torch_save,
    atomic_write_bytes,
    clean_partials,
    ensure_writable_dir,
    is_primary_process,
    sync_files,
)
from exface.exfacegan.crops import (
    IMAGE_SUFFIX,
    ImageFormat,
    aligned_crops,
    crop_part_fingerprints,
    describe_crop,
    encode_images,
    split_parts,
)
from exface.exfacegan.samplers import (
    ExFaceGANSampler,
    LatentSampler,
    TruncationCenter,
    anchor_latent,
    check_truncation_center,
    render_latents,
)
from exface.generators.base import Generator
from exface.progress import stage_callbacks
from exface.tensors import to_uint8

__all__ = [
    "Identity",
    "WorkItem",
    "load_bank_references",
    "load_boundaries",
    "check_boundaries_bank",
    "plan_identities",
    "plan_work",
    "plan_groups",
    "item_rng",
    "embed_images",
    "SynthesisModule",
    "DatasetImageWriter",
    "synthesize_dataset",
    "synthesize",
]

MANIFEST = "manifest.jsonl"
SETTINGS = "synthesis.json"
WORK = ".work"


@dataclass(frozen=True)
class Identity:
    """One synthetic identity: boundary ``boundary``'s side ``side`` (+1 / -1)."""

    name: str
    boundary: int
    side: int


@dataclass(frozen=True)
class WorkItem:
    """Images ``start .. start+count-1`` of identity ``identity`` (index into the plan)."""

    identity: int
    chunk: int
    start: int
    count: int


# ----------------------------------------------------------------------------- inputs


def load_bank_references(
    bank: str | Path, generator: Generator | None = None, embedder: IdentityEmbedder | None = None,
    aligner: Aligner | None = None,
) -> tuple[dict, dict[str, Tensor]]:
    """The bank's ``manifest.json`` and ``references.pt``; checks the parts are the bank's.

    The references' embeddings were made with the bank's generator/aligner/embedder; other
    parts would compare embeddings of different networks, so a part that differs from the
    bank's record (class, weights sha256, or a non-path argument: the comparison ``exface
    fit`` uses for the bank itself) is an error.
    """
    bank = Path(bank)
    mpath, rpath = bank / "manifest.json", bank / "references.pt"
    for p in (mpath, rpath):
        if not p.is_file():
            raise ExfaceFileError(
                f"latent bank file {p.name} is missing", where=p,
                fix="build the bank first (exface fit --config recipes/...yaml), or point bank= at the folder "
                    "holding manifest.json and references.pt",
            )
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ExfaceFileError(f"the bank manifest is not valid JSON ({err})", where=mpath,
                              fix="rebuild the bank (a new bank_dir) or restore manifest.json") from err
    if manifest.get("format") != "exface-latent-bank":
        raise ExfaceFileError(f"not an exface latent bank manifest (format={manifest.get('format')!r})", where=mpath,
                              fix="point bank= at the folder `exface fit` built")
    parts = manifest.get("parts", {})
    diffs: list[str] = []
    for role, part in (("generator", generator), ("embedder", embedder), ("aligner", aligner)):
        if part is None or role not in parts:
            continue
        diffs += part_differences(role, parts[role], part_fingerprint(part))
    if diffs:
        raise ExfaceError(
            "synthesize was given other parts than the bank was built with:\n  " + "\n  ".join(diffs),
            where=mpath, fix="pass the bank's parts (manifest.json 'parts'), or rebuild the bank with these",
        )
    try:
        refs = torch.load(str(rpath), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-screen message
        raise ExfaceFileError(f"cannot read the bank's references ({type(err).__name__}: {str(err)[:200]})",
                              where=rpath, fix="run `exface fit` again: it rewrites references.pt") from err
    if not isinstance(refs, dict) or "embedding" not in refs:
        raise ExfaceFileError("references.pt holds no reference latents and embeddings", where=rpath,
                              fix="run `exface fit` again: it rewrites references.pt")
    return manifest, refs


_BOUNDARY_KEYS = ("normals", "offsets", "space", "val_balanced_accuracy", "val_auc", "meta")


def load_boundaries(path: str | Path) -> Boundaries:
    """A boundaries file written by ``exface fit`` (``Boundaries.save``), checked for what it is."""
    path = Path(path)
    fix = "pass the boundaries.pt that `exface fit` wrote (the model's save_path)"
    if not path.is_file():
        raise ExfaceFileError("the boundaries file does not exist", where=path, fix=fix)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ExfaceFileError(f"cannot read the boundaries file ({type(err).__name__}: {first})", where=path,
                              fix=fix) from err
    if not isinstance(data, dict) or not {"normals", "offsets", "space"} <= set(data):
        what = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        hint = " (that is a bank's references.pt)" if isinstance(data, dict) and "indices" in data else ""
        raise ExfaceFileError(f"not a boundaries file: it holds {what}{hint}", where=path, fix=fix)
    r = data["normals"].shape[0]
    nan = torch.full((r,), float("nan"))
    return Boundaries(data["normals"], data["offsets"], data["space"], data.get("val_balanced_accuracy", nan),
                      data.get("val_auc", nan), dict(data.get("meta") or {}))


def check_boundaries_bank(boundaries: Boundaries, references: dict[str, Tensor], where: object = None) -> None:
    """Refuse boundaries fit on another bank (their recorded references digest differs)."""
    from exface.exfacegan.latent_bank import references_digest

    recorded = (boundaries.meta or {}).get("bank_references_sha256")
    if recorded is None:
        warnings.warn(f"the boundaries {where or ''} do not record the bank they were fit on (made by an older "
                      f"exface); their bank cannot be checked", stacklevel=2)
        return
    if recorded != references_digest(references):
        raise ExfaceError(
            f"the boundaries were fit on another bank (references sha256 {recorded[:12]}..., this bank's "
            f"{references_digest(references)[:12]}...; recorded bank folder {boundaries.meta.get('bank')!r})",
            where=where, fix="pass the bank the boundaries were fit on, or fit boundaries on this bank (exface fit)",
        )


def plan_identities(num_boundaries: int, num_identities: int | None, both_sides: bool) -> list[Identity]:
    """Identities in order: boundary 0 (+, then - with ``both_sides``), boundary 1, ...

    ``num_identities`` counts boundaries (each gives two identities with ``both_sides``).
    """
    n = num_boundaries if num_identities is None else int(num_identities)
    if not 0 < n <= num_boundaries:
        raise ExfaceError(f"num_identities must be in 1..{num_boundaries} (the number of boundaries), got {n}",
                          where="num_identities", fix=f"pass --num_identities between 1 and {num_boundaries}")
    out = []
    for r in range(n):
        out.append(Identity(f"{r:06d}", r, 1))
        if both_sides:
            out.append(Identity(f"{r:06d}_neg", r, -1))
    return out


def plan_work(num_identities: int, images_per_identity: int, chunk: int) -> list[WorkItem]:
    """Split each identity's images into chunks of at most ``chunk`` images."""
    items = []
    for i in range(num_identities):
        for c, start in enumerate(range(0, images_per_identity, chunk)):
            items.append(WorkItem(i, c, start, min(chunk, images_per_identity - start)))
    return items


def plan_groups(num_items: int, items_per_forward: int) -> list[range]:
    """The forward-pass groups of a plan of ``num_items`` items: ``[g*G, (g+1)*G)`` (indices into the plan).

    A group is always rendered together (whatever of it is already on disk), so that the
    batch every image is rendered in does not depend on resuming or on the device split.
    """
    g = max(1, int(items_per_forward))
    return [range(s, min(s + g, num_items)) for s in range(0, num_items, g)]


def item_rng(seed: int, boundary: int, side: int, chunk: int, salt: int = 0) -> torch.Generator:
    """A torch RNG seeded from the work item alone (independent of devices and batching)."""
    state = np.random.SeedSequence([int(seed), int(boundary), int(side) + 1, int(chunk), int(salt)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


@torch.no_grad()
def embed_images(aligner: Aligner, embedder: IdentityEmbedder, images_u8: Tensor) -> Tensor:
    """Embeddings of uint8 images, exactly as they are stored on disk."""
    x = images_u8.float() / 127.5 - 1.0
    return embedder(aligner(x.to(embedder.device))).float()


# ----------------------------------------------------------------------------- Lightning


class _Groups(Dataset):
    """One element per forward-pass group: its items as ``(identity, chunk, start, count, write)``."""

    def __init__(self, groups: list[list[tuple[WorkItem, bool]]]) -> None:
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> list[tuple[int, int, int, int, int]]:
        # plain tuples: Lightning moves batches with apply_to_collection
        return [(it.identity, it.chunk, it.start, it.count, int(write)) for it, write in self.groups[i]]


def _one_group(batch: list[list[tuple]]) -> list[tuple]:
    return list(batch[0])  # the loader's batch_size is 1: one group per forward pass


class SynthesisModule(LightningModule):
    """Renders work items: sample latents, render, embed, filter (``predict_step`` only)."""

    def __init__(
        self,
        generator: Generator,
        aligner: Aligner,
        embedder: IdentityEmbedder,
        boundaries: Boundaries,
        references: Tensor,
        reference_embeddings: Tensor,
        identities: list[Identity],
        sampler: LatentSampler,
        seed: int = 0,
        identity_filter: float | None = None,
        filter_rounds: int = 10,
        truncation_psi: float | None = None,
        truncation_cutoff: int | None = None,
        crop_aligner: Aligner | None = None,
        face_check: float | None = 0.35,
        save_frames: bool = False,
        truncation_center: TruncationCenter = "w_avg",
    ) -> None:
        super().__init__()
        self.gan, self.aligner, self.embedder = generator, aligner, embedder
        self.crop_aligner, self.face_check, self.save_frames = crop_aligner, face_check, bool(save_frames)
        self.boundaries = boundaries
        self.references = references.float()
        self.reference_embeddings = torch.nn.functional.normalize(reference_embeddings.float(), dim=1)
        self.identities = identities
        self.sampler = sampler
        self.seed = seed
        self.identity_filter = identity_filter
        self.filter_rounds = max(1, int(filter_rounds))
        self.truncation_psi, self.truncation_cutoff = truncation_psi, truncation_cutoff
        self.truncation_center = truncation_center

    @torch.no_grad()
    def _render(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        imgs = to_uint8(render_latents(self.gan, latents, self.boundaries.space, self.truncation_psi,
                                       self.truncation_cutoff, self.truncation_center)).cpu()
        return imgs, embed_images(self.aligner, self.embedder, imgs).cpu()

    @torch.no_grad()
    def anchor_embeddings(self, idents: list[Identity]) -> Tensor:
        """Reference embedding (side +1) or the mirrored reference's embedding (side -1)."""
        out = torch.empty(len(idents), self.reference_embeddings.shape[1])
        neg = [j for j, ident in enumerate(idents) if ident.side < 0]
        for j, ident in enumerate(idents):
            if ident.side > 0:
                out[j] = self.reference_embeddings[ident.boundary]
        if neg:
            lat = torch.stack([
                anchor_latent(self.boundaries, idents[j].boundary, -1, self.references[idents[j].boundary]) for j in neg
            ])
            out[neg] = self._render(lat)[1]
        return out

    @torch.no_grad()
    def predict_step(self, batch: list[tuple], batch_idx: int = 0, dataloader_idx: int = 0) -> list[dict]:
        """Render one group: ``(identity, chunk, start, count[, write])`` tuples, all in the same forward passes.

        Only items whose ``write`` is true (default) are returned; the others (complete on
        disk) are rendered too, so the batch the written items are rendered in is the
        group's whatever was already done.
        """
        write = [bool(int(t[4])) if len(t) > 4 else True for t in batch]
        batch = [WorkItem(*map(int, t[:4])) for t in batch]
        idents = [self.identities[it.identity] for it in batch]
        anchors = self.anchor_embeddings(idents)
        need = [it.count for it in batch]
        kept: list[list[tuple]] = [[] for _ in batch]  # (latent, frame, emb, sim, passed, crop)
        spare: list[list[tuple]] = [[] for _ in batch]
        drawn, face_failed = [0] * len(batch), [0] * len(batch)
        checking = self.crop_aligner is not None and self.face_check is not None
        rounds = self.filter_rounds if self.identity_filter is not None or checking else 1
        for rnd in range(rounds):
            todo = [j for j in range(len(batch)) if len(kept[j]) < need[j]]
            if not todo:
                break
            lats, owner = [], []
            for j in todo:
                it, ident = batch[j], idents[j]
                rng = item_rng(self.seed, ident.boundary, ident.side, it.chunk, rnd)
                n = need[j] - len(kept[j])
                lat = self.sampler.sample(
                    self.boundaries, ident.boundary, ident.side, self.references[ident.boundary], n, rng, self.gan,
                ).float().cpu()
                lats.append(lat)
                owner += [j] * n
                drawn[j] += n
            lat = torch.cat(lats)
            imgs, emb = self._render(lat)
            crops, face_ok = (imgs, torch.ones(len(imgs), dtype=torch.bool)) if self.crop_aligner is None else \
                aligned_crops(self.crop_aligner, imgs, self.face_check, self.device)
            for q, j in enumerate(owner):
                if not face_ok[q]:  # no face: never kept, resampled next round
                    face_failed[j] += 1
                    continue
                sim = float(emb[q] @ anchors[j])
                passed = self.identity_filter is None or sim >= self.identity_filter
                (kept if passed else spare)[j].append((lat[q], imgs[q], emb[q], sim, passed, crops[q]))
        out = []
        for j, it in enumerate(batch):
            if not write[j]:
                continue
            recs = kept[j]
            if len(recs) < need[j]:  # retry budget spent: fill with the most similar rejects
                spare[j].sort(key=lambda r: -r[3])
                recs = recs + spare[j][: need[j] - len(recs)]
            ident = idents[j]
            if not recs:  # every draw failed the face check: the whole item is dropped
                lat = self.references.new_zeros((0, self.references.shape[1]))
                res = {"image": torch.zeros(0, dtype=torch.uint8), "embedding": torch.zeros(0, anchors.shape[1]),
                       "frame": None}
            else:
                lat = torch.stack([r[0] for r in recs])
                res = {"image": torch.stack([r[5] for r in recs]), "embedding": torch.stack([r[2] for r in recs]),
                       "frame": torch.stack([r[1] for r in recs]) if self.save_frames and self.crop_aligner else None}
            out.append({
                "identity": ident.name,
                "boundary": ident.boundary,
                "side": ident.side,
                "chunk": it.chunk,
                "k": list(range(it.start, it.start + len(recs))),
                "latent": lat,
                **res,
                "similarity": torch.tensor([r[3] for r in recs]),
                "passed": torch.tensor([r[4] for r in recs], dtype=torch.bool),
                "signed_distance": self.boundaries.signed_distance(lat, ident.boundary),
                "drawn": drawn[j],
                "face_check_failed": face_failed[j],
                "dropped": it.count - len(recs),
            })
        return out




def _record_path(root: Path, identity: str, chunk: int) -> Path:
    return root / WORK / identity / f"c{chunk:04d}.pt"


def item_complete(root: Path, identity: str, chunk: int, settings_key: str | None = None) -> bool:
    """True when the item's record exists, was made with ``settings_key``, and its images are on disk."""
    rec = _record_path(root, identity, chunk)
    if not rec.is_file():
        return False
    try:
        data = torch.load(str(rec), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable record is an incomplete item
        return False
    if settings_key is not None and data.get("settings_key") != settings_key:
        return False
    return all((root / f).is_file() for f in data["files"])


FRAMES = "frames"


def dataset_bytes(root: str | Path) -> int:
    """Bytes on disk of a dataset folder (images, frames, manifest, arrays; not ``.work`` records or synthesis.json)."""
    root = Path(root)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and WORK not in p.relative_to(root).parts
               and p.name != SETTINGS)


class DatasetImageWriter(BasePredictionWriter):
    """Writes each rendered item: its images (and frames), then its record (all atomically, record last).

    Images are always (re)written: a record must describe the image files beside it, so a
    redone item never keeps an image of an earlier attempt. The record carries the run's
    ``settings_key``, which ties it to ``synthesis.json``.

    Where the work runs depends on the cores. With a core that torch's threads leave free, one
    background thread encodes (zlib and libjpeg release the GIL) and writes each batch while
    the next one is rendered. With none free, a background thread would take turns on the
    cores with torch's threads and stall them at every barrier (2 threads on 2 cores: the
    forward pass ran ~10% slower, 1.31x the bare forward in all): each batch's files are then
    encoded and written at once, in the main thread, in parallel on as many threads as torch
    uses. Either way the files are written unsynced and made durable by one file-system sync
    per batch (:func:`~exface.exfacegan.run_files.sync_files`) before the background thread
    writes the batch's records (each fsynced); batches go in order, at most ``max_pending``
    behind the forward pass, and ``on_predict_end`` waits for the last one. A kill loses only
    items whose record was not yet written, which a resume redoes.
    """

    def __init__(self, root: str | Path, image_format: ImageFormat = "png", jpeg_quality: int = 95,
                 settings_key: str | None = None, max_pending: int = 2) -> None:
        super().__init__(write_interval="batch")
        self.root = Path(root)
        self.image_format, self.jpeg_quality = image_format, int(jpeg_quality)
        self.suffix = IMAGE_SUFFIX[image_format]
        self.settings_key = settings_key
        self.max_pending = int(max_pending)
        self._pool = None
        self._encoders = None  # a thread pool when encoding runs in the main thread
        self._encoder_threads = 1
        self._pending: list = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exface-writer")
            threads = torch.get_num_threads()
            if len(os.sched_getaffinity(0)) <= threads:  # no core left for a background encoder
                self._encoders = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="exface-encoder")
                self._encoder_threads = threads
        if self._encoders is not None:  # no spare core: encode and write the files now, on all threads
            written = self._write_files(prediction, self._encoders.map, self._encoder_threads)
            self._pending.append(self._pool.submit(self._write_records, *written))
        else:
            self._pending.append(self._pool.submit(lambda: self._write_records(*self._write_files(prediction))))
        while len(self._pending) > self.max_pending or (self._pending and self._pending[0].done()):
            self._pending.pop(0).result()  # re-raises a failed write here, in the main thread

    def on_predict_end(self, trainer, pl_module) -> None:
        self.flush()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Finish what is queued before the run's error propagates (and its folder lock is released)."""
        try:
            self.flush()
        except Exception:  # the run's own error is the one to report
            pass

    def flush(self) -> None:
        """Wait for every queued write (re-raising the first failure), and stop the thread."""
        try:
            while self._pending:
                self._pending.pop(0).result()
        finally:
            for pool in (self._pool, self._encoders):
                if pool is not None:
                    pool.shutdown(wait=True)
            self._pool = self._encoders = None

    def _encoded(self, prediction: list[dict], map_fn: Callable = map, parts: int = 1) -> list[dict]:
        """``prediction`` with each item's images (and frames) as lists of encoded bytes."""
        def encode(key: str, image_format: ImageFormat) -> list[bytes]:
            stacks = [res[key] for res in prediction if res[key] is not None and len(res[key])]
            if not stacks:
                return []
            return encode_images(torch.cat(stacks), image_format, self.jpeg_quality, map_fn, parts)

        images, frames = iter(encode("image", self.image_format)), iter(encode("frame", "png"))
        return [{**res, "image": [next(images) for _ in res["image"]],
                 "frame": None if res["frame"] is None else [next(frames) for _ in res["frame"]]}
                for res in prediction]

    def _write_files(self, prediction: list[dict], map_fn: Callable = map,
                     parts: int = 1) -> tuple[list[dict], list[Path]]:
        """Encode and write (unsynced) each item's images and frames: the items' records and the paths."""
        records, jobs = [], []
        for res in self._encoded(prediction, map_fn, parts):
            d = self.root / res["identity"]
            d.mkdir(parents=True, exist_ok=True)
            files, frames = [], []
            for q, (k, data) in enumerate(zip(res["k"], res["image"])):
                files.append(f"{res['identity']}/{k}{self.suffix}")
                jobs.append((d / f"{k}{self.suffix}", data))
                if res["frame"] is not None:
                    frames.append(f"{FRAMES}/{res['identity']}/{k}.png")
                    jobs.append((self.root / frames[-1], res["frame"][q]))
                    jobs[-1][0].parent.mkdir(parents=True, exist_ok=True)
            rec = {key: v for key, v in res.items() if key not in ("image", "frame")}
            rec["files"] = files + frames
            rec["frames"] = frames
            rec["settings_key"] = self.settings_key
            records.append(rec)
        for _ in map_fn(lambda part: [atomic_write_bytes(p, b, sync=False) for p, b in part], split_parts(jobs, parts)):
            pass
        return records, [p for p, _ in jobs]

    def _write_records(self, records: list[dict], paths: list[Path]) -> None:
        """Make the batch's files durable (one file-system sync), then write each item's record."""
        sync_files(self.root, paths)  # before any record vouches for them
        for rec in records:
            rpath = _record_path(self.root, rec["identity"], rec["chunk"])
            rpath.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(rec, rpath)


# ----------------------------------------------------------------------------- driver


def _consolidate(root: Path, identities: list[Identity], items: list[WorkItem]) -> dict:
    """Merge the item records into manifest.jsonl, latents.npy and embeddings.npy (manifest order)."""
    import io

    lines, lats, embs = [], [], []
    drawn = kept = passed = face_failed = dropped = 0
    by_ident: dict[int, list[WorkItem]] = {}
    for it in items:
        by_ident.setdefault(it.identity, []).append(it)
    for i, ident in enumerate(identities):
        for it in sorted(by_ident[i], key=lambda w: w.chunk):
            rec = torch.load(str(_record_path(root, ident.name, it.chunk)), map_location="cpu", weights_only=True)
            drawn += int(rec["drawn"])
            face_failed += int(rec.get("face_check_failed", 0))
            dropped += int(rec.get("dropped", 0))
            frames = rec.get("frames") or []
            for q, f in enumerate(rec["files"][:len(rec["k"])]):
                ok = bool(rec["passed"][q])
                passed += ok
                kept += 1
                lines.append(json.dumps({
                    "identity": ident.name, "boundary": ident.boundary, "side": ident.side, "file": f,
                    **({"frame": frames[q]} if frames else {}), "k": int(rec["k"][q]), "signed_distance": round(float(rec["signed_distance"][q]), 6),
                    "similarity_to_reference": round(float(rec["similarity"][q]), 6), "passed_filter": ok,
                }))
            lats.append(rec["latent"].numpy())
            embs.append(rec["embedding"].numpy())
    atomic_write_bytes(root / MANIFEST, ("\n".join(lines) + "\n").encode())
    for name, arrs in (("latents.npy", lats), ("embeddings.npy", embs)):
        buf = io.BytesIO()
        np.save(buf, np.concatenate(arrs).astype(np.float32))
        atomic_write_bytes(root / name, buf.getvalue())
    return {"images": kept, "candidates_drawn": drawn, "passed_filter": passed,
            "acceptance_rate": passed / drawn if drawn else float("nan"),
            "face_check_failed": face_failed, "dropped": dropped}


#: settings that decide what an image is; a resume must match them all
_CONTENT_KEYS = ("space", "images_per_identity", "both_sides", "seed", "chunk", "sampler", "identity_filter",
                 "filter_rounds", "truncation_psi", "truncation_cutoff", "truncation_center", "bank_references_sha256",
                 "boundaries_sha256", "crop", "face_check", "image_format", "jpeg_quality", "save_frames")
#: what a dataset written before a content key existed did, when that is known (else: refused)
_LEGACY_DEFAULTS = {"truncation_center": "w_avg", "jpeg_quality": None}


def _canonical(v):
    return json.loads(json.dumps(v, sort_keys=True))


def _settings_key(settings: dict) -> str:
    """A digest of everything that decides the images (content settings + parts' fingerprints)."""
    import hashlib

    content = {k: settings.get(k) for k in _CONTENT_KEYS}
    content["parts"] = {role: {k: v for k, v in rec.items() if k != "args"} for role, rec in settings["parts"].items()}
    return hashlib.sha256(json.dumps(_canonical(content), sort_keys=True).encode()).hexdigest()


def _resume_differences(old: dict, new: dict) -> list[str]:
    def recorded(k):
        if k == "jpeg_quality" and k not in old and old.get("image_format") == "jpeg":
            return "not recorded"  # an older jpeg dataset: its quality is unknown, so no resume can match it
        return old.get(k, _LEGACY_DEFAULTS.get(k))

    diffs = [f"{k}: the dataset has {recorded(k)!r}, this run {new.get(k)!r}"
             for k in _CONTENT_KEYS if _canonical(recorded(k)) != _canonical(new.get(k))]
    for role in sorted(set(old.get("parts", {})) | set(new["parts"])):
        rec_old, rec_new = old.get("parts", {}).get(role), new["parts"].get(role)
        if isinstance(rec_old, str):  # an older dataset recorded class names only
            rec_old = {"class": rec_old}
        diffs += part_differences(f"parts.{role}", rec_old, rec_new)
    return diffs


def _check_resume(root: Path, spath: Path, settings: dict, identities: list[Identity]) -> None:
    """Refuse to add to a dataset made with other settings, or to leave identities it holds unlisted."""
    if not spath.is_file():
        foreign = [p.name for p in root.iterdir() if p.name not in (".lock", WORK) and not p.name.startswith(".partial-")]
        if foreign:
            raise ExfaceStateError(
                f"the output folder is not empty and holds no {SETTINGS} (e.g. {sorted(foreign)[:3]})", where=root,
                fix="use a new or empty output_dir: synthesize never mixes its images with other files",
            )
        return
    try:
        old = json.loads(spath.read_text())
    except ValueError as err:
        raise ExfaceFileError(f"{SETTINGS} is not valid JSON", where=spath,
                              fix="use a new output_dir, or delete this folder to start over") from err
    fix = "run with the dataset's settings to finish or extend it, or use a new output_dir (or delete this one)"
    if "settings_key" not in old:
        raise ExfaceStateError("the dataset was made by an older exface that did not record its provenance",
                               where=spath, fix="use a new output_dir, or delete this folder to start over")
    diffs = _resume_differences(old, settings)
    if diffs:
        raise ExfaceStateError("the dataset in this folder was made with other settings:\n  " + "\n  ".join(diffs),
                               where=root, fix=fix)
    names = {i.name for i in identities}
    dropped = [n for n, *_ in old.get("identities", []) if n not in names]
    if dropped:
        raise ExfaceStateError(
            f"the dataset holds {len(old.get('identities', []))} identities; this run plans {len(identities)} and "
            f"would leave {len(dropped)} identity folders (e.g. {dropped[:3]}) on disk but out of its manifest",
            where=root, fix=f"pass num_identities so that every identity already there is kept "
                            f"({len({b for _, b, _ in old['identities']})} or more), or use a new output_dir",
        )


def synthesize_dataset(
    generator: Generator,
    aligner: Aligner,
    embedder: IdentityEmbedder,
    boundaries: Boundaries,
    references: dict[str, Tensor],
    output_dir: str | Path,
    images_per_identity: int = 20,
    num_identities: int | None = None,
    sampler: LatentSampler | None = None,
    both_sides: bool = False,
    identity_filter: float | None = None,
    filter_rounds: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    truncation_psi: float | None = None,
    truncation_cutoff: int | None = None,
    accelerator: str = "auto",
    devices: int | str = 1,
    extra_settings: dict | None = None,
    progress: bool = True,
    crop_aligner: Aligner | None = None,
    face_check: float | None = 0.35,
    image_format: ImageFormat = "png",
    jpeg_quality: int = 95,
    save_frames: bool = False,
    truncation_center: TruncationCenter = "w_avg",
) -> dict:
    """Render the dataset into ``output_dir`` (resumable); returns the settings + statistics dict.

    Provenance: the settings (with the bank's references digest, the boundaries' digest and
    the parts' fingerprints) are written to ``synthesis.json`` *before* any image, and every
    work record carries their digest (``settings_key``); a resume with any other setting is
    refused, naming each difference. ``output_dir`` is locked for the run (a second run
    stops with a message naming the first). ``truncation_psi``, ``truncation_cutoff`` and
    ``truncation_center`` are the bank's (see :func:`~exface.exfacegan.samplers.render_latents`).
    """
    from exface.exfacegan.latent_bank import references_digest

    root = Path(output_dir)
    space = boundaries.space
    if int(images_per_identity) < 1:
        raise ExfaceError(f"images_per_identity must be >= 1, got {images_per_identity}", where="images_per_identity",
                          fix="pass --images_per_identity 1 or more")
    if space not in references:
        raise ExfaceError(f"references.pt has no {space!r} latents (keys {sorted(references)}); the boundaries are "
                          f"in {space!r}", where="boundaries", fix="pass the boundaries fit on this bank")
    if len(references[space]) != len(boundaries):
        raise ExfaceError(
            f"{len(boundaries)} boundaries but {len(references[space])} reference latents; the boundaries file "
            f"and the bank do not belong together", where="boundaries",
            fix="pass the boundaries `exface fit` wrote for this bank",
        )
    if image_format == "jpeg" and not 1 <= int(jpeg_quality) <= 100:
        raise ExfaceError(f"jpeg_quality must be in 1..100, got {jpeg_quality}", where="jpeg_quality",
                          fix="pass --jpeg_quality between 1 and 100 (95: the default)")
    check_truncation_center(truncation_center)
    sampler = sampler or ExFaceGANSampler()
    identities = plan_identities(len(boundaries), num_identities, both_sides)
    chunk = max(1, min(batch_size, images_per_identity))
    items = plan_work(len(identities), images_per_identity, chunk)
    settings = {
        "format": "exface-synthetic-dataset", "version": 2, "space": space, "images_per_identity": images_per_identity,
        "both_sides": both_sides, "seed": seed, "chunk": chunk, "sampler": sampler.describe(),
        "identity_filter": identity_filter, "filter_rounds": filter_rounds, "truncation_psi": truncation_psi,
        "truncation_cutoff": truncation_cutoff, "truncation_center": truncation_center,
        "bank_references_sha256": references_digest(references),
        "boundaries_sha256": tensor_digest({"normals": boundaries.normals, "offsets": boundaries.offsets}),
        "parts": {"generator": part_fingerprint(generator), "aligner": part_fingerprint(aligner),
                  "embedder": part_fingerprint(embedder), **crop_part_fingerprints(crop_aligner)},
        "crop": describe_crop(crop_aligner), "face_check": face_check if crop_aligner is not None else None,
        "image_format": image_format, "jpeg_quality": int(jpeg_quality) if image_format == "jpeg" else None,
        "save_frames": bool(save_frames and crop_aligner is not None),
        **(extra_settings or {}),
    }
    settings = _canonical(settings)
    key = settings["settings_key"] = _settings_key(settings)
    settings["identities"] = [[i.name, i.boundary, i.side] for i in identities]
    primary = is_primary_process()
    if root.exists() and not root.is_dir():
        raise ExfaceFileError("output_dir is an existing file, not a folder", where=root,
                              fix="pass a new or empty folder as output_dir (nothing has been written)")
    ensure_writable_dir(root, "output_dir")
    spath = root / SETTINGS
    if primary:  # refuse a folder that is not this dataset's before putting a lock file into it
        _check_resume(root, spath, settings, identities)
    per_forward = settings["forward_items"] = _forward_items(spath, key, max(1, batch_size // chunk))
    lock_path = root / ".lock"
    had_lock_file = lock_path.exists()
    lock = FolderLock(root, "exface synthesize") if primary else None
    if lock is not None:
        lock.__enter__()
    try:
        if primary:
            try:  # again under the lock: another run may have written the folder since
                _check_resume(root, spath, settings, identities)
            except ExfaceError:
                if not had_lock_file:
                    lock_path.unlink(missing_ok=True)
                raise
            clean_partials(root, recursive=True)
            old = json.loads(spath.read_text()) if spath.is_file() else {}
            keep = {k: old[k] for k in ("images", "candidates_drawn", "passed_filter", "acceptance_rate") if k in old}
            atomic_write_bytes(spath, json.dumps({**settings, **keep, "status": "running"}, indent=1).encode())
        complete = [item_complete(root, identities[it.identity].name, it.chunk, key) for it in items]
        todo = [it for it, done in zip(items, complete) if not done]
        groups = [[(items[i], not complete[i]) for i in g] for g in plan_groups(len(items), per_forward)
                  if not all(complete[i] for i in g)]
        if todo:
            module = SynthesisModule(
                generator, aligner, embedder, boundaries, references[space], references["embedding"], identities,
                sampler, seed=seed, identity_filter=identity_filter, filter_rounds=filter_rounds,
                truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, crop_aligner=crop_aligner,
                face_check=face_check, save_frames=save_frames, truncation_center=truncation_center,
            )
            loader = DataLoader(_Groups(groups), batch_size=1, shuffle=False, collate_fn=_one_group, num_workers=0)
            trainer = Trainer(
                accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
                enable_model_summary=False, enable_progress_bar=progress,
                callbacks=[DatasetImageWriter(root, image_format, jpeg_quality, key),
                           *stage_callbacks(f"synthesizing {len(todo)} work items ({chunk} images each)", progress)],
            )
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                trainer.predict(module, dataloaders=loader, return_predictions=False)
            trainer.strategy.barrier()
            if not trainer.is_global_zero:
                return {}
        missing = [it for it in items if not item_complete(root, identities[it.identity].name, it.chunk, key)]
        if missing:
            raise ExfaceStateError(f"{len(missing)} work items did not complete (first: {missing[0]})", where=root,
                                   fix="run the same command again to resume")
        stats = _consolidate(root, identities, items)
        settings.update(stats, redone_items=len(todo), rendered_items=sum(len(g) for g in groups),
                        total_items=len(items), bytes_on_disk=dataset_bytes(root), status="complete")
        atomic_write_bytes(spath, json.dumps(settings, indent=1).encode())
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    return settings


def _forward_items(spath: Path, settings_key: str, planned: int) -> int:
    """Work items per forward pass: the dataset's recorded ``forward_items`` on a resume, else ``planned``.

    The groups decide the batch each image is rendered in, so a resume keeps the grouping the
    dataset was started with (batch_size is no content setting: it may differ on a resume).
    A dataset of an older exface records none; it batched ``planned`` items per forward
    pass of a fresh run, the same groups.
    """
    try:
        old = json.loads(spath.read_text()) if spath.is_file() else {}
    except (OSError, ValueError):
        old = {}
    rec = old.get("forward_items") if isinstance(old, dict) and old.get("settings_key") == settings_key else None
    if not isinstance(rec, int) or isinstance(rec, bool) or rec < 1:
        return planned
    if rec != planned:
        warnings.warn(f"resuming with the dataset's {rec} work items per forward pass (this batch_size gives "
                      f"{planned}): the same batches as the images already rendered", stacklevel=3)
    return rec


_PART_KINDS = {"generator": "generators", "aligner": "aligners", "embedder": "embedders"}


def part_from_manifest(manifest: dict, role: str, where: object = None):
    """Rebuild the bank's ``role`` part from its manifest record (class + recorded init arguments).

    The result is then checked against the record like any given part (weights sha256), so
    a part whose files moved or changed is refused rather than used.
    """
    from exface.registry import get_registry

    rec = (manifest.get("parts") or {}).get(role)
    if not isinstance(rec, dict) or "class" not in rec:
        raise ExfaceError(f"the bank manifest records no {role}", where=where, fix=f"pass {role}: in the recipe")
    try:
        cls = get_registry(_PART_KINDS[role]).get(rec["class"])
        return cls(**rec.get("args", {}))
    except Exception as err:  # noqa: BLE001 - any failure: name the part and the way out
        raise ExfaceError(
            f"cannot rebuild the bank's {role} {rec['class']} from its manifest record "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})", where=where,
            fix=f"pass {role}: (class_path and init_args) in the synthesize recipe",
        ) from err


@command("synthesize")
def synthesize(
    bank: str,
    boundaries: str,
    output_dir: str,
    generator: Generator | None = None,
    aligner: Aligner | None = None,
    embedder: IdentityEmbedder | None = None,
    sampler: LatentSampler | None = None,
    images_per_identity: int = 60,
    num_identities: int | None = None,
    both_sides: bool = True,
    identity_filter: float | None = None,
    filter_rounds: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    report: bool = True,
    report_dir: str | None = None,
    report_identities: int | None = None,
    evaluator: IdentityEmbedder | None = None,
    evaluator_aligner: Aligner | None = None,
    independent_evaluator: bool = True,
    accelerator: str = "auto",
    devices: int | str = 1,
    crop_aligner: Aligner | None = None,
    face_check: float | None = 0.35,
    image_format: ImageFormat = "png",
    jpeg_quality: int = 95,
    save_frames: bool = False,
) -> None:
    """Render a synthetic identity dataset from identity boundaries (+ quality report).

    Args:
        bank: latent bank folder (manifest.json, references.pt) the boundaries were fit on.
        boundaries: boundaries file written by the fit (Boundaries.save).
        output_dir: dataset folder (<identity>/<k>.png, manifest.jsonl, latents.npy, embeddings.npy).
        generator, aligner, embedder: default the bank's (rebuilt from manifest.json "parts");
            given ones must be the bank's (class, weights sha256 and arguments are checked).
        sampler: how an identity's latents are drawn: a registered sampler part, e.g.
            ``{class_path: ExFaceGANSampler, init_args: {max_offset: 30}}`` (the default, ExFaceGAN's
            values) or ``DistanceSampler``; `exface plugins --kind samplers` lists them.
        images_per_identity: images per identity (ExFaceGAN: 60 generated, 50 used for training).
        num_identities: how many boundaries to use (default all); both_sides doubles the identities.
        both_sides: the negative side of each boundary is a second identity ('<id>_neg').
        identity_filter: reject images whose cosine to the identity's anchor embedding is below this.
        filter_rounds: resampling rounds for rejected images before keeping the best rejects.
        batch_size: images per forward pass (also the largest work item); a resume keeps the dataset's
            grouping of work items into forward passes (synthesis.json forward_items).
        seed: base seed; every work item's stream derives from it and the item.
        report: write the quality report (boundary sampler vs random / noise baselines).
        report_dir: report folder (default: output_dir/../report).
        report_identities: identities used by the report and its baselines (default all).
        evaluator: the report's independent judge (default: another offline face network than
            the labeler, e.g. HSEFaceRes for FaceApiResNet34). evaluator_aligner: its crops
            (default: the labeler's crop at its input size). independent_evaluator: False
            lets the labeler judge alone.
        accelerator: Lightning accelerator. devices: Lightning devices (DDP over work items).
        crop_aligner: the aligner whose crop is stored for FR training (e.g. ArcFaceAligner: the
            112x112 ArcFace template); default none: the generator frame is stored.
        face_check: a landmark crop aligner's sanity check: images whose keypoints miss the template
            by more than this many eye distances (or leave the frame) are resampled, then dropped;
            null turns it off.
        image_format: 'png' or 'jpeg'. jpeg_quality: JPEG quality (1-100).
        save_frames: also store the native frame, as frames/<identity>/<k>.png.
    """
    t0 = time.time()
    manifest, _ = load_bank_references(bank)
    where = Path(bank) / "manifest.json"
    generator = generator if generator is not None else part_from_manifest(manifest, "generator", where)
    aligner = aligner if aligner is not None else part_from_manifest(manifest, "aligner", where)
    embedder = embedder if embedder is not None else part_from_manifest(manifest, "embedder", where)
    manifest, refs = load_bank_references(bank, generator, embedder, aligner)
    bnd = load_boundaries(boundaries)
    check_boundaries_bank(bnd, refs, where=boundaries)
    sam = sampler if sampler is not None else ExFaceGANSampler()
    rdir = report_dir or str(Path(output_dir).resolve().parent / "report")
    if report:  # a report folder holding another dataset's report is refused now, not after the synthesis
        from exface.report_dir import refuse_other_report

        refuse_other_report(rdir, {"dataset": {"path": str(Path(output_dir).resolve())}}, "quality report",
                            fix=f"pass another --report_dir (the default is next to output_dir: {rdir}), or delete it")
    for m in (generator, aligner, embedder) + ((crop_aligner,) if crop_aligner is not None else ()):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    stats = synthesize_dataset(
        generator, aligner, embedder, bnd, refs, output_dir, images_per_identity=images_per_identity,
        num_identities=num_identities, sampler=sam, both_sides=both_sides, identity_filter=identity_filter,
        filter_rounds=filter_rounds, batch_size=batch_size, seed=seed,
        truncation_psi=manifest.get("truncation_psi"), truncation_cutoff=manifest.get("truncation_cutoff"),
        truncation_center=manifest.get("truncation_center", "w_avg"), accelerator=accelerator, devices=devices,
        extra_settings={"bank": str(bank), "boundaries": str(boundaries)}, crop_aligner=crop_aligner,
        face_check=face_check, image_format=image_format, jpeg_quality=jpeg_quality, save_frames=save_frames,
    )
    if not stats:  # non-zero DDP rank
        return
    print(
        f"synthesized {stats['images']} images of {len(stats['identities'])} identities into {output_dir} "
        f"({stats['redone_items']}/{stats['total_items']} work items rendered this run, "
        f"filter acceptance {stats['acceptance_rate']:.3f}; {stats['face_check_failed']} draws failed the face check, "
        f"{stats['dropped']} images dropped) in {time.time() - t0:.1f} s; {stats['bytes_on_disk'] / 2**20:.1f} MiB on disk"
    )
    if report:
        from exface.exfacegan.report import quality_report

        quality_report(output_dir, rdir, generator, aligner, embedder, batch_size=batch_size, seed=seed,
                       max_identities=report_identities, evaluator=evaluator, evaluator_aligner=evaluator_aligner,
                       independent_evaluator=independent_evaluator, crop_aligner=crop_aligner)
