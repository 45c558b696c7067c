"""Training pairs made on the fly by the frozen generator: a datamodule that needs no dataset.

The paper's code renders a fixed set of StyleGAN images and their w's to disk first
(``utils/generate_fake_data.py``) and draws identity/attribute images and "real" w's for
the latent discriminator from it. exface draws the same things from the generator itself
while training: the datamodule yields *seeds* only, and the Lightning module renders
``generator.sample_z(1, seed)`` for each. So nothing is stored, every batch is reproducible
from ``(seed, batch index)``, and held-out pairs are guaranteed unseen: training seeds lie in
``[0, HELD_OUT_SEED)``, evaluation seeds in ``[HELD_OUT_SEED, CENTER_SEED)``, and the samples
that centre identity embeddings (``identity_center``) from ``CENTER_SEED`` up.

A training batch is ``{"index": k, "id_seed": [B], "attr_seed": [B], "real_seed": [B]}``
(``real_seed``: latents of the generator's prior for the latent discriminator). Whether
batch ``k`` is a cross-identity or same-image step is the module's schedule, decided from
``index``. The datamodule checkpoints how many batches were consumed, so a resumed run goes
on with new batches instead of replaying the first ones.
"""

from __future__ import annotations

from typing import Any, Iterator

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

__all__ = ["HELD_OUT_SEED", "CENTER_SEED", "SeedPairStream", "HeldOutPairs", "held_out_seeds", "GeneratorPairDataModule"]

#: First seed of held-out (evaluation) pairs; training seeds are below it.
HELD_OUT_SEED = 1 << 30
#: First seed of the samples whose mean identity embedding centres the identity loss; neither
#: training nor evaluation pairs reach it (held-out pairs would need 2**29 of them).
CENTER_SEED = 1 << 31


def held_out_seeds(n: int, offset: int = 0) -> tuple[Tensor, Tensor]:
    """Identity and attribute seeds of held-out pairs ``offset .. offset+n-1`` (never equal)."""
    i = torch.arange(offset, offset + n, dtype=torch.long)
    return HELD_OUT_SEED + 2 * i, HELD_OUT_SEED + 2 * i + 1


class SeedPairStream(IterableDataset):
    """Endless training batches of seeds, batch ``k`` drawn from a generator seeded by ``(seed, k)``."""

    def __init__(self, batch_size: int, seed: int = 0, start: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed, self.start = int(batch_size), int(seed), int(start)

    def batch(self, k: int) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        seeds = torch.randint(0, HELD_OUT_SEED, (3, self.batch_size), generator=gen)
        return {"index": k, "id_seed": seeds[0], "attr_seed": seeds[1], "real_seed": seeds[2]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        k = self.start
        while True:
            yield self.batch(k)
            k += 1


class HeldOutPairs(Dataset):
    """``n`` fixed held-out pairs (identity seed, attribute seed), in batches."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.id_seed, self.attr_seed = held_out_seeds(n)
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return (len(self.id_seed) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return {"id_seed": self.id_seed[s], "attr_seed": self.attr_seed[s]}


class GeneratorPairDataModule(pl.LightningDataModule):
    """Seeds of identity/attribute pairs for a frozen generator (no dataset needed).

    Args:
        batch_size: pairs per training step (the paper: 6).
        seed: seed of the training stream (batch ``k`` is a function of ``(seed, k)``).
        val_pairs: held-out pairs evaluated at each validation (0: no validation).
        val_batch_size: pairs per validation batch.
    """

    def __init__(self, batch_size: int = 8, seed: int = 0, val_pairs: int = 64, val_batch_size: int = 32) -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1 or val_pairs < 0:
            raise ValueError("batch_size and val_batch_size must be >= 1 and val_pairs >= 0")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.val_pairs, self.val_batch_size = int(val_pairs), int(val_batch_size)
        self.consumed = 0  # training batches handed to training_step (checkpointed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SeedPairStream(self.batch_size, self.seed, start=self.consumed), batch_size=None)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_pairs:
            return []
        return DataLoader(HeldOutPairs(self.val_pairs, self.val_batch_size), batch_size=None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and "index" in batch:
            self.consumed = int(batch["index"]) + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Go on where the checkpoint's stream stopped; a stream of another seed or batch size is refused
        (the resumed run would silently train on batches the interrupted one never drew)."""
        from exface.resume_check import check_data_resume

        keys = ("seed", "batch_size")
        check_data_resume(self, {k: int(state_dict[k]) for k in keys if k in state_dict},
                          {k: int(getattr(self, k)) for k in keys})
        self.consumed = int(state_dict.get("consumed", 0))
