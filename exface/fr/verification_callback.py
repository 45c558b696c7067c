"""Face verification on real pair sets during FR training, with ``exface benchmark``'s code.

:class:`VerificationCallback` embeds each set (insightface ``.bin`` or LFW ``pairs.txt``,
read by :func:`exface.evaluation.datasets.load_verification_set`) every ``every_n_epochs``
epochs with the model's backbone, runs the k-fold protocol through
:func:`exface.evaluation.benchmark.benchmark_set` (the function ``exface benchmark`` calls
per set), logs ``verification/<set>`` (accuracy), ``verification/<set>_std`` and
``verification/mean`` to the trainer's loggers (CSV, TensorBoard...), and saves
``best_verification.ckpt`` whenever the mean improves (``ModelCheckpoint(monitor=
"verification/mean", mode="max")`` works too).

The figure logged and checkpointed per set is the one ``exface benchmark``'s papers table
prints (:func:`~exface.evaluation.benchmark.headline_accuracy`): insightface's protocol for a
``.bin`` set, exface's for LFW's ``pairs.txt``.

Every set is read, and photo sets (LFW) are aligned, when fitting starts (``on_fit_start``,
before the first step: a missing or damaged set stops the run then, not after an epoch), with
the benchmark's default aligner (:func:`~exface.evaluation.benchmark.default_aligner`), and
kept as crops (:func:`aligned_copy`): landmark alignment does not change between epochs.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from exface.alignment.base import Aligner
from exface.embedders.base import IdentityEmbedder
from exface.evaluation.datasets import VerificationSet, load_verification_set
from exface.tensors import module_device

__all__ = ["VerificationCallback", "aligned_copy", "set_name"]


@torch.no_grad()
def aligned_copy(vs: VerificationSet, aligner: Aligner, batch_size: int = 32) -> VerificationSet:
    """``vs`` with every image replaced by its uint8 crop (``aligned=True``): align once, embed often."""
    from exface.evaluation.benchmark import _image_batches

    aligner = aligner.eval()
    h, w = aligner.output_size
    crops = np.zeros((vs.num_images, h, w, 3), np.uint8)
    for start, x in _image_batches(vs, batch_size):
        c = ((aligner(x.to(module_device(aligner))).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        crops[start:start + len(x)] = c.permute(0, 2, 3, 1).cpu().numpy()
    return VerificationSet(name=vs.name, pairs=vs.pairs, issame=vs.issame, folds=vs.folds, images=crops,
                           aligned=True, extra={**vs.extra, "aligned_by": type(aligner).__name__})


def set_name(path: str | Path) -> str:
    """A metric name for a set file: ``lfw.bin`` -> ``lfw``; ``.../lfw-fold1/pairs.txt`` -> ``lfw-fold1``."""
    p = Path(path)
    return (p.parent.name if p.suffix == ".txt" else p.stem).replace("/", "_")


class VerificationCallback(pl.Callback):
    """Verification accuracy on real pair sets every ``every_n_epochs`` epochs (see the module doc).

    Args:
        sets: ``.bin`` files and/or LFW ``pairs.txt`` files (images beside them).
        every_n_epochs: evaluate after every n-th training epoch.
        folds: k of the k-fold protocol (10: the standard).
        batch_size: images per forward pass.
        flip: add the mirror image's embedding (insightface's test-time flip); None: each set's
            published protocol (:func:`~exface.evaluation.benchmark.paper_flip`: ``.bin`` sets
            yes, LFW ``pairs.txt`` no), as ``exface benchmark`` does.
        save_best: save ``<dirpath>/best_verification.ckpt`` when the mean accuracy improves.
        dirpath: where that checkpoint goes (default: ``<trainer.default_root_dir>/checkpoints``).
    """

    def __init__(self, sets: list[str], every_n_epochs: int = 1, folds: int = 10, batch_size: int = 64,
                 flip: bool | None = None, save_best: bool = True, dirpath: str | None = None) -> None:
        super().__init__()
        if not sets:
            raise ValueError("VerificationCallback needs at least one set (.bin or LFW pairs.txt)")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        names = [set_name(s) for s in sets]
        if len(set(names)) != len(names):
            raise ValueError(f"verification sets must have distinct names, got {names}")
        self.paths, self.names = [str(s) for s in sets], names
        self.every_n_epochs, self.folds, self.batch_size, self.flip = every_n_epochs, folds, batch_size, flip
        self.save_best, self.dirpath = save_best, dirpath
        self.best = -math.inf
        self.history: list[dict] = []
        self._sets: list[VerificationSet] | None = None
        self._flips: list[bool] = []

    def _load(self, embedder: IdentityEmbedder) -> list[VerificationSet]:
        from exface.evaluation.benchmark import default_aligner, paper_flip

        out, self._flips = [], []
        for path in self.paths:
            vs = load_verification_set(path)
            self._flips.append(paper_flip(vs) if self.flip is None else bool(self.flip))  # of the set as published
            out.append(vs if vs.aligned else aligned_copy(vs, default_aligner(vs, embedder), self.batch_size))
        return out

    def evaluate(self, embedder: IdentityEmbedder) -> dict[str, dict]:
        """``{set name: benchmark_set result}`` for the embedder (its train/eval mode is restored)."""
        from exface.alignment import ResizeAligner
        from exface.evaluation.benchmark import benchmark_set

        if self._sets is None:
            self._sets = self._load(embedder)
        was_training = embedder.training
        try:
            size = tuple(int(s) for s in embedder.input_size)
            return {name: benchmark_set(vs, embedder, ResizeAligner(size), self.folds, self.batch_size, flip,
                                        embedder.device)
                    for name, vs, flip in zip(self.names, self._sets, self._flips)}
        finally:
            embedder.train(was_training)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._sets is None:  # read (and align) now: a bad set must not cost an epoch of training
            self._sets = self._load(pl_module.backbone)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from exface.evaluation.benchmark import headline_accuracy

        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        results = self.evaluate(pl_module.backbone)
        heads = {n: headline_accuracy(r) for n, r in results.items()}
        accs = {n: acc for n, (acc, _) in heads.items()}
        # every rank scores the sets; rank 0's figures decide, so that all ranks take the same
        # checkpointing branch (a rank whose float rounding differed would otherwise wait alone in it)
        accs = trainer.strategy.broadcast(accs, src=0)
        mean = float(np.mean(list(accs.values())))
        for n, r in results.items():
            pl_module.log(f"verification/{n}", accs[n], on_epoch=True, sync_dist=False)
            pl_module.log(f"verification/{n}_std", heads[n][1], on_epoch=True, sync_dist=False)
        pl_module.log("verification/mean", mean, on_epoch=True, prog_bar=True, sync_dist=False)
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **accs, "mean": mean})
        if self.save_best and mean > self.best:
            self.best = mean
            d = Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints")
            trainer.save_checkpoint(d / "best_verification.ckpt")

    def state_dict(self) -> dict:
        return {"best": self.best, "history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best", -math.inf)
        self.history = list(state_dict.get("history", []))
