"""The latent bank: N generator latents with the identity embeddings of their images, on disk.

ExFaceGAN (and InterFaceGAN) start from a large bank of random latents whose images are
embedded by a face-recognition model; identity labels, boundaries and synthesis all read
it. A bank is a directory::

    bank_dir/manifest.json    what was built, with what (see :func:`bank_config`)
    bank_dir/chunk_00000.pt   {"index", "z", "w", "embedding"[, "image", "attributes"]}
    bank_dir/references.pt    {"indices", "z", "w", "embedding"} (written by the user of the bank)

Chunk ``k`` holds latents ``k*C .. k*C+c-1`` drawn from a torch generator seeded with
``(seed, k)``, so a bank does not depend on how its chunks were split over processes or
GPUs, and a killed build resumes at the missing chunks. Every chunk is written atomically
(temporary file + ``os.replace``): a chunk file on disk is always complete.

The identity embedding of a latent is ``embedder(aligner(generator.synthesize(z)))``,
L2-normalized. ``w`` is the mapping network's *untruncated* output, as ExFaceGAN stores it;
the image was rendered with the generator's truncation (``truncation_psi`` on the first
``truncation_cutoff`` w+ layers, toward ``truncation_center``: the checkpoint's ``w_avg``,
or the origin as ExFaceGAN's code does; all recorded in the manifest), and
:func:`~exface.exfacegan.samplers.render_latents` applies the same truncation to any w, so a
stored w re-renders its embedded image (format version 2; version 1 stored truncated w).

Building runs through Lightning's ``Trainer.predict`` over the missing chunk indices with a
:class:`~lightning.pytorch.callbacks.BasePredictionWriter` writing each chunk as soon as it
is computed, so several GPUs share the chunks (and nothing but the current chunk is ever
held in memory).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor, nn

from exface.alignment.base import Aligner
from exface.attributes.base import AttributePredictor
from exface.embedders.base import IdentityEmbedder
from exface.errors import ExfaceError, ExfaceFileError, ExfaceStateError
from exface.exfacegan.provenance import part_differences, part_fingerprint, part_record, tensor_digest
from exface.exfacegan.run_files import atomic_torch_save, atomic_write_bytes, atomic_write_json, clean_partials
from exface.generators.base import Generator
from exface.progress import stage_callbacks
from exface.tensors import to_uint8

__all__ = ["LatentBank", "BankMismatchError", "bank_config", "part_record", "chunk_seed", "references_digest"]

FORMAT = "exface-latent-bank"
VERSION = 2  # 2: w is stored untruncated; "truncation" records how images are rendered
MANIFEST = "manifest.json"
REFERENCES = "references.pt"


class BankMismatchError(ExfaceError):
    """An existing bank directory was built with a different configuration."""


# --------------------------------------------------------------------------- config


def chunk_seed(seed: int, chunk: int) -> int:
    """The torch seed of chunk ``chunk`` of a bank seeded ``seed`` (independent streams per chunk)."""
    a, b = np.random.SeedSequence([int(seed), int(chunk)]).generate_state(2, dtype=np.uint32)
    return (int(a) << 31) ^ int(b)


def bank_config(
    generator: Generator,
    aligner: Aligner,
    embedder: IdentityEmbedder,
    num_latents: int,
    chunk_size: int,
    seed: int,
    store_images: bool = False,
    attribute_predictors: Sequence[AttributePredictor] = (),
    truncation_center: str = "w_avg",
) -> dict[str, Any]:
    """The manifest a bank built with these settings has (without build statistics)."""
    from exface.exfacegan.samplers import check_truncation_center

    check_truncation_center(truncation_center)
    if num_latents < 1:
        raise ValueError(f"num_latents must be >= 1, got {num_latents}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    stored = ["z", "w", "embedding"] + (["image"] if store_images else [])
    attr_names: list[str] = []
    for p in attribute_predictors:
        attr_names += list(p.attribute_names)
    if attribute_predictors:
        stored.append("attributes")
    psi = getattr(generator, "truncation_psi", None)
    cutoff = getattr(generator, "truncation_cutoff", None)
    parts = {
        "generator": part_fingerprint(generator),
        "embedder": part_fingerprint(embedder),
        "aligner": part_fingerprint(aligner),
    }
    if attribute_predictors:
        parts["attributes"] = [part_fingerprint(p) for p in attribute_predictors]
    return {
        "format": FORMAT,
        "version": VERSION,
        "num_latents": int(num_latents),
        "chunk_size": int(chunk_size),
        "seed": int(seed),
        "truncation_psi": None if psi is None else float(psi),
        "truncation_cutoff": None if cutoff is None else int(cutoff),
        "truncation_center": truncation_center,
        "w": "untruncated mapping output; render with exface.exfacegan.samplers.render_latents",
        "dims": {"z": int(generator.z_dim), "w": int(generator.w_dim), "embedding": int(embedder.embedding_dim)},
        "image_size": [int(generator.resolution)] * 2,
        "parts": parts,
        "stored": stored,
        "attribute_names": attr_names,
    }


_COMPARED = ("format", "version", "num_latents", "chunk_size", "seed", "truncation_psi", "truncation_cutoff",
             "truncation_center", "dims", "stored", "attribute_names")
#: what a bank built before a compared key existed did
_LEGACY = {"truncation_center": "w_avg"}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Every setting in which two bank configs differ (parts: class, weights digest, non-path args)."""
    diffs = []
    for key in _COMPARED:
        was = old.get(key, _LEGACY.get(key))
        if was != new.get(key, _LEGACY.get(key)):
            diffs.append(f"{key}: bank has {was!r}, requested {new.get(key)!r}")
    old_parts, new_parts = old.get("parts", {}), new.get("parts", {})
    for role in sorted(set(old_parts) | set(new_parts)):
        a, b = old_parts.get(role), new_parts.get(role)
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                diffs += part_differences(f"parts.{role}[{i}]", x, y)
        elif isinstance(a, list) or isinstance(b, list):
            if a != b:
                name = lambda p: [q.get("class") for q in p] if isinstance(p, list) else p  # noqa: E731
                diffs.append(f"parts.{role}: bank has {name(a)}, requested {name(b)}")
        else:
            diffs += part_differences(f"parts.{role}", a, b)
    return diffs


# the names other modules imported before exface.exfacegan.run_files held these
_atomic_save = atomic_torch_save
_atomic_write_json = atomic_write_json


def references_digest(refs: dict[str, Tensor]) -> str:
    """The content digest of a bank's references (what boundaries and datasets record as "the bank")."""
    return tensor_digest({k: refs[k] for k in sorted(refs)})


# ------------------------------------------------------------------------ compute


@torch.inference_mode()
def compute_chunk(
    chunk: int,
    generator: Generator,
    aligner: Aligner,
    embedder: IdentityEmbedder,
    num_latents: int,
    chunk_size: int,
    seed: int,
    batch_size: int = 64,
    store_images: bool = False,
    attribute_predictors: Sequence[AttributePredictor] = (),
    truncation_center: str = "w_avg",
) -> dict[str, Any]:
    """Latents, w, embeddings (and optionally uint8 images and attributes) of one chunk.

    Always draws ``chunk_size`` z from the chunk's seed and keeps the first ``c`` (the last
    chunk may be short), so latent ``i`` is the same whatever the chunking of the work.
    With ``truncation_center="zero"`` the images are rendered from the untruncated w by
    :func:`~exface.exfacegan.samplers.render_latents` (the generator's own truncation pulls
    toward its ``w_avg``).
    """
    from exface.exfacegan.samplers import render_latents

    start = chunk * chunk_size
    c = min(chunk_size, num_latents - start)
    if c <= 0:
        raise ValueError(f"chunk {chunk} is past the end of a bank of {num_latents} latents")
    device = generator.device
    z_all = generator.sample_z(chunk_size, seed=chunk_seed(seed, chunk), device="cpu")[:c]
    zs, ws, embs, imgs = [], [], [], []
    attrs: dict[str, list[Tensor]] = {}
    for b0 in range(0, c, batch_size):
        z = z_all[b0 : b0 + batch_size].to(device)
        w = generator.to_w(z, truncation_psi=1.0)  # untruncated: render_latents truncates (as the image below is)
        if truncation_center == "w_avg":
            images = generator.synthesize(z, space="z")
        else:
            images = render_latents(generator, w, "w", getattr(generator, "truncation_psi", None),
                                    getattr(generator, "truncation_cutoff", None), truncation_center)
        crops = aligner(images)
        emb = embedder(crops.to(embedder.device))
        zs.append(z.float().cpu())
        ws.append(w.float().cpu())
        embs.append(emb.float().cpu())  # the embedder contract already L2-normalizes
        if store_images:
            imgs.append(to_uint8(images).cpu())
        for p in attribute_predictors:
            x = crops
            if tuple(x.shape[-2:]) != tuple(p.input_size):
                x = F.interpolate(x, size=tuple(p.input_size), mode="bilinear", align_corners=False, antialias=True)
            for name, v in p(x).items():
                attrs.setdefault(name, []).append(v.float().cpu())
    out: dict[str, Any] = {
        "index": torch.arange(start, start + c, dtype=torch.int64),
        "z": torch.cat(zs),
        "w": torch.cat(ws),
        "embedding": torch.cat(embs),
    }
    if store_images:
        out["image"] = torch.cat(imgs)
    if attribute_predictors:
        out["attributes"] = {k: torch.cat(v) for k, v in attrs.items()}
    return out


class _LatentBankBuilder(pl.LightningModule):
    """predict_step(chunk index) -> that chunk's tensors (the writer callback saves them)."""

    def __init__(self, generator, aligner, embedder, attribute_predictors, num_latents, chunk_size, seed,
                 batch_size, store_images, truncation_center="w_avg") -> None:
        super().__init__()
        self.generator, self.aligner, self.embedder = generator, aligner, embedder
        self.attribute_predictors = nn.ModuleList(list(attribute_predictors))
        self.cfg = dict(num_latents=num_latents, chunk_size=chunk_size, seed=seed, batch_size=batch_size,
                        store_images=store_images, truncation_center=truncation_center)

    def setup(self, stage: str) -> None:
        # chunks are indexed by the batch itself, not by sampler indices (in every worker process)
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")

    def predict_step(self, batch: Any, batch_idx: int = 0) -> dict[str, Any]:
        return compute_chunk(int(batch), self.generator, self.aligner, self.embedder,
                             attribute_predictors=list(self.attribute_predictors), **self.cfg)


class _ChunkWriter(BasePredictionWriter):
    def __init__(self, root: Path) -> None:
        super().__init__(write_interval="batch")
        self.root = root
        self.written: list[int] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        chunk = int(batch)
        data = atomic_torch_save(prediction, self.root / _chunk_name(chunk))
        atomic_write_bytes(self.root / _checksum_name(chunk), hashlib.sha256(data).hexdigest().encode() + b"\n")
        self.written.append(chunk)


class _ChunkIndices(torch.utils.data.Dataset):
    def __init__(self, chunks: list[int]) -> None:
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> int:
        return self.chunks[i]


def _chunk_name(k: int) -> str:
    return f"chunk_{k:05d}.pt"


def _checksum_name(k: int) -> str:
    return f"chunk_{k:05d}.sha256"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- bank


class LatentBank:
    """A built (or partly built) latent bank directory; see the module docstring for the layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; build the bank first with LatentBank.build(...)")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not an exface latent bank manifest (format {self.manifest.get('format')!r})")

    # ------------------------------------------------------------------ layout
    @property
    def num_latents(self) -> int:
        return int(self.manifest["num_latents"])

    @property
    def chunk_size(self) -> int:
        return int(self.manifest["chunk_size"])

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_latents / self.chunk_size)

    def chunk_path(self, k: int) -> Path:
        return self.root / _chunk_name(k)

    def missing_chunks(self) -> list[int]:
        return [k for k in range(self.num_chunks) if not self.chunk_path(k).is_file()]

    @property
    def is_complete(self) -> bool:
        return not self.missing_chunks()

    def expected_checksum(self, k: int) -> str | None:
        """The sha256 recorded for chunk ``k`` when it was written (its ``.sha256`` file, else the manifest)."""
        side = self.root / _checksum_name(k)
        if side.is_file():
            return side.read_text().strip()
        return self.manifest.get("checksums", {}).get(_chunk_name(k))

    def chunk_problem(self, k: int) -> str | None:
        """Why chunk ``k`` cannot be used, or None when it is sound.

        Checks, in order: the file exists, its sha256 is the one recorded when it was
        written, it loads, it holds latents ``k*C ..`` (its stored ``index``: a chunk copied
        into another slot is caught), and every stored key has the manifest's shape.
        """
        path = self.chunk_path(k)
        if not path.is_file():
            return "it is missing"
        want = self.expected_checksum(k)
        if want is not None and _file_sha256(path) != want:
            return "its sha256 is not the one recorded when it was written (truncated or modified)"
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is a damaged chunk
            return f"it cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
        start = k * self.chunk_size
        c = min(self.chunk_size, self.num_latents - start)
        idx = data.get("index") if isinstance(data, dict) else None
        if not isinstance(idx, Tensor) or not torch.equal(idx, torch.arange(start, start + c)):
            got = f"{int(idx[0])}..{int(idx[-1])}" if isinstance(idx, Tensor) and idx.numel() else repr(idx)[:40]
            return f"it holds latents {got}, not {start}..{start + c - 1} (a chunk copied into another slot?)"
        dims = self.manifest.get("dims", {})
        for key in self.manifest.get("stored", []):
            v = data.get(key)
            if v is None:
                return f"it has no {key!r}"
            if key == "attributes":
                continue
            want_shape = (c, dims[key]) if key in dims else None
            if key == "image":
                want_shape = (c, 3, *self.manifest.get("image_size", v.shape[-2:]))
            if want_shape is not None and tuple(v.shape) != tuple(want_shape):
                return f"its {key!r} has shape {tuple(v.shape)}, the manifest says {tuple(want_shape)}"
        return None

    def verify(self) -> None:
        """Check every chunk once (see :meth:`chunk_problem`); a damaged one is an error naming it."""
        if getattr(self, "_verified", False):
            return
        for k in range(self.num_chunks):
            problem = self.chunk_problem(k)
            if problem:
                raise ExfaceFileError(
                    f"chunk {k} of the latent bank is damaged: {problem}", where=self.chunk_path(k),
                    fix="run the same `exface fit` again: the bank build recomputes damaged chunks",
                )
        self._verified = True

    def _check_complete(self) -> None:
        missing = self.missing_chunks()
        if missing:
            raise ExfaceStateError(
                f"bank {self.root} is incomplete: {len(missing)} of {self.num_chunks} chunks missing "
                f"(first {missing[:5]})", where=self.root, fix="run the build again (it resumes)",
            )
        self.verify()

    # ----------------------------------------------------------------- reading
    def iter_chunks(self, keys: Sequence[str] = ("w", "embedding")) -> Iterator[dict[str, Any]]:
        """Chunk dicts in index order, each with ``index`` and the requested keys."""
        self._check_complete()
        stored = set(self.manifest["stored"]) | {"index"}
        bad = [k for k in keys if k not in stored]
        if bad:
            raise KeyError(f"bank {self.root} does not store {bad}; it stores {sorted(stored)}")
        for k in range(self.num_chunks):
            data = torch.load(self.chunk_path(k), map_location="cpu", weights_only=True, mmap=True)
            yield {"index": data["index"], **{key: data[key] for key in keys}}

    def load(self, keys: Sequence[str] = ("w", "embedding")) -> dict[str, Any]:
        """The requested keys of every latent, concatenated in index order (``image`` is refused:
        use :meth:`iter_chunks` or :meth:`get` for images)."""
        if "image" in keys:
            raise ValueError("load() does not load every image at once; use iter_chunks(['image']) or get(indices)")
        n = self.num_latents
        out: dict[str, Any] = {}
        pos = 0
        for data in self.iter_chunks(keys):
            c = data["index"].shape[0]
            for key in keys:
                v = data[key]
                if key == "attributes":
                    dst = out.setdefault(key, {})
                    for name, t in v.items():
                        if name not in dst:
                            dst[name] = torch.empty(n, dtype=t.dtype)
                        dst[name][pos : pos + c] = t
                else:
                    if key not in out:
                        out[key] = torch.empty((n, *v.shape[1:]), dtype=v.dtype)
                    out[key][pos : pos + c] = v
            pos += c
        if pos != n:
            raise RuntimeError(f"bank {self.root} chunks hold {pos} latents, manifest says {n}; rebuild it")
        return out

    def get(self, indices: Sequence[int] | Tensor, keys: Sequence[str] = ("z", "w", "embedding")) -> dict[str, Tensor]:
        """Selected latents by bank index (reads only the chunks that hold them)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_latents):
            raise IndexError(f"bank indices must be in [0, {self.num_latents}), got {idx.min()}..{idx.max()}")
        out: dict[str, list] = {k: [None] * len(idx) for k in keys}
        chunks = (idx // self.chunk_size).tolist()
        for k in sorted(set(chunks)):
            problem = self.chunk_problem(k)
            if problem:
                raise ExfaceFileError(f"chunk {k} of the latent bank is damaged: {problem}", where=self.chunk_path(k),
                                      fix="run the same `exface fit` again: the bank build recomputes damaged chunks")
            data = torch.load(self.chunk_path(k), map_location="cpu", weights_only=True, mmap=True)
            for j, (i, ck) in enumerate(zip(idx.tolist(), chunks)):
                if ck == k:
                    for key in keys:
                        out[key][j] = data[key][i - k * self.chunk_size].clone()
        return {k: torch.stack(v) if v else torch.empty(0) for k, v in out.items()}

    def write_references(self, indices: Sequence[int] | Tensor) -> dict[str, Tensor]:
        """Save ``references.pt`` for the bank latents ``indices`` and return it."""
        refs = {"indices": torch.as_tensor(indices, dtype=torch.int64).reshape(-1),
                **self.get(indices, ("z", "w", "embedding"))}
        atomic_torch_save(refs, self.root / REFERENCES)
        return refs

    def references(self) -> dict[str, Tensor]:
        path = self.root / REFERENCES
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; write it with LatentBank.write_references(indices)")
        return torch.load(path, map_location="cpu", weights_only=True)

    # ---------------------------------------------------------------- building
    @classmethod
    def open_or_create(cls, root: str | Path, config: dict[str, Any]) -> "LatentBank":
        """Open ``root`` if its manifest matches ``config`` (to resume), or start a new bank there.

        A manifest that disagrees is a :class:`BankMismatchError` naming every difference:
        chunks made with other settings are never mixed into a bank.
        """
        root = Path(root)
        path = root / MANIFEST
        if path.is_file():
            old = json.loads(path.read_text())
            diffs = _differences(old, config)
            if diffs:
                raise BankMismatchError(
                    f"the bank in {root} was built with other settings:\n  " + "\n  ".join(diffs)
                    + f"\nuse a new bank_dir, or delete {root} to rebuild it with the requested settings"
                )
            return cls(root)
        if root.is_dir() and any(root.glob("chunk_*.pt")):
            raise BankMismatchError(
                f"{root} holds chunk files but no {MANIFEST}; use a new bank_dir or delete {root}"
            )
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json({**config, "build": {}}, path)
        return cls(root)

    @classmethod
    def build(
        cls,
        root: str | Path,
        generator: Generator,
        aligner: Aligner,
        embedder: IdentityEmbedder,
        num_latents: int,
        chunk_size: int = 1000,
        seed: int = 0,
        batch_size: int = 64,
        store_images: bool = False,
        attribute_predictors: Sequence[AttributePredictor] = (),
        accelerator: str = "auto",
        devices: int | str = 1,
        strategy: str = "auto",
        enable_progress_bar: bool = False,
        max_chunks: int | None = None,
        truncation_center: str = "w_avg",
    ) -> "LatentBank":
        """Build the bank in ``root``, or finish a partly built one with the same settings.

        Args:
            batch_size: images per generator/aligner/embedder forward inside a chunk.
            accelerator, devices: Lightning's; with several devices the missing chunks are
                shared out by the distributed sampler. ``strategy="auto"`` becomes
                ``"ddp_spawn"`` for several devices, so that only the bank build (not the
                calling script) runs in the worker processes.
            max_chunks: compute at most this many missing chunks now (for time-sliced
                builds and tests); the bank stays resumable.
            truncation_center: where the generator's truncation pulls w: ``"w_avg"`` (its
                average w) or ``"zero"`` (ExFaceGAN's code; see
                :func:`~exface.exfacegan.samplers.render_latents`). Recorded in the manifest.
        """
        attribute_predictors = list(attribute_predictors)
        config = bank_config(generator, aligner, embedder, num_latents, chunk_size, seed, store_images,
                             attribute_predictors, truncation_center)
        bank = cls.open_or_create(root, config)
        clean_partials(bank.root)  # leftovers of a crashed build (their process is gone)
        missing = bank.missing_chunks()
        for k in range(bank.num_chunks):
            if k in missing:
                continue
            problem = bank.chunk_problem(k)
            if problem:
                print(f"latent bank: chunk {k} ({bank.chunk_path(k)}) is damaged: {problem}; recomputing it",
                      file=sys.stderr)
                bank.chunk_path(k).unlink(missing_ok=True)
                (bank.root / _checksum_name(k)).unlink(missing_ok=True)
                missing.append(k)
        missing.sort()
        if max_chunks is not None:
            missing = missing[: max(0, int(max_chunks))]
        if not missing:
            bank._verified = True
            return bank
        for part in (generator, aligner, embedder, *attribute_predictors):
            part.eval()
        module = _LatentBankBuilder(generator, aligner, embedder, attribute_predictors, num_latents, chunk_size,
                                    seed, batch_size, store_images, truncation_center)
        writer = _ChunkWriter(bank.root)
        kwargs = dict(accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
                      enable_progress_bar=enable_progress_bar, enable_model_summary=False,
                      callbacks=[writer, *stage_callbacks(f"embedding {len(missing)} bank chunks of {chunk_size} latents",
                                                          enable_progress_bar)])
        trainer = pl.Trainer(strategy=strategy, **kwargs)
        if strategy == "auto" and trainer.world_size > 1:
            trainer = pl.Trainer(strategy="ddp_spawn", **kwargs)
        loader = torch.utils.data.DataLoader(_ChunkIndices(missing), batch_size=None, shuffle=False)
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # chunks are indexed by the batch itself, not by sampler indices
            warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        seconds = time.perf_counter() - t0
        if trainer.is_global_zero:
            manifest = json.loads((bank.root / MANIFEST).read_text())
            build = manifest.setdefault("build", {})
            build["seconds"] = round(float(build.get("seconds", 0.0)) + seconds, 3)
            build.setdefault("runs", []).append(
                {"chunks": len(missing), "seconds": round(seconds, 3), "accelerator": str(trainer.accelerator.__class__.__name__),
                 "devices": int(trainer.world_size)}
            )
            sums = manifest.setdefault("checksums", {})
            for k in range(bank.num_chunks):
                side = bank.root / _checksum_name(k)
                if side.is_file():
                    sums[_chunk_name(k)] = side.read_text().strip()
            atomic_write_json(manifest, bank.root / MANIFEST)
        return cls(bank.root)
