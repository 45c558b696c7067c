"""``IdentityBankDataModule``: the latent bank, identity labels and the train/val split for ``exface fit``.

It drives the ExFaceGAN recipe's data side: build (or resume) a :class:`LatentBank`, take
its first ``num_references`` latents as the reference identities (ExFaceGAN's references
are bank latents, hence ``leave_one_out``), label every bank latent for every reference
with :func:`~exface.exfacegan.labeling.label_identities`, and serve ``{"x", "y"}`` batches
to :class:`~exface.boundaries.torch_svm.BoundaryFitModule`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from exface.alignment.base import Aligner
from exface.embedders.base import IdentityEmbedder
from exface.errors import ExfaceError
from exface.exfacegan.labeling import label_identities
from exface.exfacegan.latent_bank import LatentBank, references_digest
from exface.exfacegan.samplers import check_truncation_center
from exface.generators.base import Generator

__all__ = ["IdentityBankDataModule"]



class _IndexBatches(torch.utils.data.Dataset):
    """``ds[list_of_indices]`` is one ``{"x", "y"}`` batch (the DataLoader does no collation)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, idx) -> dict[str, Tensor]:
        idx = torch.as_tensor(idx)
        return {"x": self.x[idx], "y": self.y[idx]}


class IdentityBankDataModule(pl.LightningDataModule):
    """Latents of a bank with their identity labels for R reference identities.

    Batches are ``{"x": float32 [B, d], "y": int8 [B, R]}`` (1 = looks like the reference,
    0 = does not, -1 = ignore for that reference). Attributes for the model:
    ``latent_dim`` (d), ``num_references`` (R), ``space``.

    Args:
        generator, embedder, aligner: the parts; the identity embedding of a latent is
            ``embedder(aligner(generator.synthesize(z)))``.
        bank_dir: where the bank lives (resumed when it exists with the same settings;
            an error naming the differences otherwise).
        num_latents, chunk_size: bank size and latents per chunk file.
        num_references: R, the first R bank latents (up to all of them: with ``leave_one_out``
            each reference is labeled against the other latents, as ExFaceGAN does).
        space: latent space the boundaries live in: ``"w"`` or ``"z"`` (must be one of the
            generator's ``latent_spaces``; DCGAN has only z).
        label_rule, top_k, threshold, leave_one_out, balance: see ``label_identities``
            (``top_k`` is its ``k`` for ``label_rule="topk"``).
        val_fraction: share of bank latents held out for validation (seeded split).
        batch_size: training batch size; None = one full batch (what L-BFGS needs).
        seed: seeds the bank's latents, the split and ``balance``.
        accelerator, devices: for the bank build (Lightning predict; several devices share
            the chunks). The boundary fit itself uses the trainer's settings.
        bank_batch_size: images per forward pass while building the bank.
        store_images: keep the generator's uint8 images in the bank (disk: N * 3 * H * W bytes).
        truncation_center: where the generator's truncation pulls w when the bank's images are
            rendered (and, from the bank's manifest, synthesize's): ``"w_avg"``, the checkpoint's
            average w (StyleGAN's truncation trick), or ``"zero"``, the origin: what ExFaceGAN's
            released code does (its truncation module's ``w_avg`` is a zero buffer), see
            :func:`~exface.exfacegan.samplers.render_latents`.

    The boundaries fit on this data record (:attr:`provenance`, in their ``meta``) the bank
    (folder and references digest) and how its latents were labeled: ``num_references``,
    ``label_rule``, ``top_k``, ``threshold``, ``leave_one_out``, ``balance``, its seed
    (``label_seed``, which also draws the split) and ``val_fraction`` (the split: which latents
    the boundaries train on).
    """

    def __init__(
        self,
        generator: Generator,
        embedder: IdentityEmbedder,
        aligner: Aligner,
        bank_dir: str,
        num_latents: int = 20000,
        chunk_size: int = 1000,
        num_references: int = 200,
        space: str = "w",
        label_rule: str = "median",
        top_k: int | None = None,
        threshold: float | None = None,
        leave_one_out: bool = True,
        balance: bool = False,
        val_fraction: float = 0.3,
        batch_size: int | None = None,
        seed: int = 0,
        accelerator: str = "auto",
        devices: int | str = 1,
        bank_batch_size: int = 64,
        store_images: bool = False,
        truncation_center: Literal["w_avg", "zero"] = "w_avg",
    ) -> None:
        super().__init__()
        if space not in generator.latent_spaces or space == "w+":
            usable = [s for s in generator.latent_spaces if s != "w+"]
            raise ValueError(
                f"{type(generator).__name__} has latent spaces {list(generator.latent_spaces)}; "
                f"space={space!r} is not usable for boundaries; pass space= one of {usable}"
            )
        if not 1 <= num_references <= num_latents:  # every latent may be a reference (ExFaceGAN: 5,000 of 5,000)
            raise ExfaceError(f"num_references must be in 1..num_latents={num_latents}, got {num_references}",
                              where="data.init_args.num_references",
                              fix=f"pass num_references <= {num_latents}, or a larger num_latents")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        check_truncation_center(truncation_center)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None (full batch), got {batch_size}")
        # ``space`` is kept out of hparams: BoundaryFitModule has its own ``space`` hparam
        # (None = take it from here), and Lightning refuses differing duplicates when logging.
        self.save_hyperparameters(ignore=["generator", "embedder", "aligner", "space"])
        self.generator, self.embedder, self.aligner = generator, embedder, aligner
        self.bank_dir = Path(bank_dir)
        self.space = space
        self.latent_dim = generator.w_dim if space == "w" else generator.z_dim
        self.num_references = int(num_references)
        self.bank: LatentBank | None = None
        self.provenance: dict = {}
        self.latents: Tensor | None = None
        self.labels: Tensor | None = None
        self._train: _IndexBatches | None = None
        self._val: _IndexBatches | None = None
        self._record: dict | None = None  # what a fit trains on (checkpointed, compared on resume)

    # ---------------------------------------------------------------- the bank
    def build_bank(self) -> LatentBank:
        """Build or resume the bank (idempotent once complete)."""
        h = self.hparams
        t0 = time.perf_counter()
        bank = LatentBank.build(
            self.bank_dir, self.generator, self.aligner, self.embedder, num_latents=h.num_latents,
            chunk_size=h.chunk_size, seed=h.seed, batch_size=h.bank_batch_size, store_images=h.store_images,
            accelerator=h.accelerator, devices=h.devices, truncation_center=h.truncation_center,
            enable_progress_bar=getattr(self.trainer, "progress_bar_callback", None) is not None,
        )
        rank_zero_info(f"latent bank {self.bank_dir} ready in {time.perf_counter() - t0:.1f} s ({bank.num_latents} latents)")
        return bank

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node: the bank is built (on the bank's
        # own devices) before any rank's setup() reads it. First the module that fits on this data
        # may refuse with what it knows before the bank (boundaries of other settings at its
        # save_path), so that the refusal does not wait for a bank build of minutes to hours.
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        check = getattr(model, "check_before_data", None)
        if callable(check):
            check(self)
        self.build_bank()

    def planned_provenance(self) -> dict:
        """:attr:`provenance` as far as it is known before the bank exists (all but the references' digest)."""
        h = self.hparams
        return {"bank": str(self.bank_dir), "num_references": self.num_references, "label_rule": h.label_rule,
                "top_k": h.top_k, "threshold": h.threshold, "leave_one_out": bool(h.leave_one_out),
                "balance": bool(h.balance), "label_seed": int(h.seed), "val_fraction": float(h.val_fraction)}

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        if not (self.bank_dir / "manifest.json").is_file() or not LatentBank(self.bank_dir).is_complete:
            bank = self.build_bank()  # prepare_data was skipped (e.g. a direct setup() call)
        else:
            bank = LatentBank(self.bank_dir)
        self.bank = bank
        h = self.hparams
        data = bank.load((self.space, "embedding"))
        x, emb = data[self.space].float(), data["embedding"].float()
        ref_idx = torch.arange(self.num_references)
        refs = bank.write_references(ref_idx)
        # what boundaries fit on this data record as their bank (synthesize checks it)
        self.provenance = {**self.planned_provenance(), "bank_references_sha256": references_digest(refs)}
        self.labels = label_identities(
            emb, emb[ref_idx], rule=h.label_rule, k=h.top_k, threshold=h.threshold,
            self_indices=ref_idx if h.leave_one_out else None, balance=h.balance, seed=h.seed,
        )
        n = x.shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(h.seed))
        n_val = max(1, int(round(n * h.val_fraction)))
        if n - n_val < 2:
            raise ValueError(f"num_latents={n} leaves fewer than 2 training latents at val_fraction={h.val_fraction}")
        val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
        self.latents = x  # [N, d], with self.labels [R, N]: what a BoundaryLearnerModule fits on
        y = self.labels.T.contiguous()  # [N, R]
        self._train = _IndexBatches(x[train_idx].contiguous(), y[train_idx])
        self._val = _IndexBatches(x[val_idx].contiguous(), y[val_idx])
        self.train_indices, self.val_indices = train_idx, val_idx

    # ------------------------------------------------------------- dataloaders
    def _loader(self, ds: _IndexBatches, shuffle: bool) -> DataLoader:
        bs = self.hparams.batch_size or len(ds)
        sampler = (
            RandomSampler(ds, generator=torch.Generator().manual_seed(self.hparams.seed))
            if shuffle and bs < len(ds) else SequentialSampler(ds)
        )
        return DataLoader(ds, batch_size=None, sampler=BatchSampler(sampler, bs, drop_last=False))

    def train_dataloader(self) -> DataLoader:
        if self._train is None:
            self.setup("fit")
        return self._loader(self._train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self._val is None:
            self.setup("fit")
        return self._loader(self._val, shuffle=False)

    # ------------------------------------------------------------- checkpoints
    def _fit_record(self) -> dict:
        """What a boundary fit on this data trains on: the bank's references and labels (digests),
        how they were labeled, the split and the batches (the bank's folder may move)."""
        import hashlib

        if self._record is None:
            h = self.hparams
            self._record = {**{k: v for k, v in self.provenance.items() if k != "bank"},
                            "labels_sha256": hashlib.sha256(self.labels.contiguous().numpy().tobytes()).hexdigest(),
                            "num_latents": int(self.latents.shape[0]), "space": self.space,
                            "val_fraction": float(h.val_fraction), "batch_size": h.batch_size}
        return self._record

    def state_dict(self) -> dict:
        return {} if self._train is None else {"fit_data": self._fit_record()}

    def load_state_dict(self, state: dict) -> None:
        """Refuse to resume a boundary fit on another bank, other labels or another split."""
        from exface.resume_check import check_data_resume

        saved = state.get("fit_data")
        if isinstance(saved, dict) and self._train is not None:
            current = self._fit_record()
            check_data_resume(self, {k: v for k, v in saved.items() if k in current}, current)
