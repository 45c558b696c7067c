"""Attribute scores of a latent bank's faces, in side files next to the bank's chunks.

InterFaceGAN learns a boundary per attribute from latents and the scores a predictor gives
their images. The scores live beside the bank, one folder per predictor, one file per chunk::

    bank_dir/attributes/<Predictor>/predictor.json    what scored (predictor, aligner, names)
    bank_dir/attributes/<Predictor>/chunk_00000.pt    {"index": [c], "scores": {name: [c]}}

Scoring renders each chunk's latents again (``generator.synthesize(z)``; the bank's stored
images when it has them), crops them with the attribute ``aligner`` and resizes to each
predictor's ``input_size``. Chunk files are written atomically, so a killed run resumes at
the missing chunks, and adding a predictor to a scored bank computes only that predictor:
files already on disk are never rewritten. A predictor folder made with other settings
(another aligner, other arguments) is refused rather than mixed. The bank's own chunk
files are not touched, so scoring never races the bank's builder; scores the bank stored
at build time (``manifest["attribute_names"]``) are read as well.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor, nn

from exface.alignment.base import Aligner
from exface.attributes.base import AttributePredictor
from exface.errors import ExfaceError
from exface.exfacegan.latent_bank import LatentBank, _ChunkIndices
from exface.exfacegan.provenance import part_record
from exface.exfacegan.run_files import atomic_torch_save, atomic_write_json
from exface.generators.base import Generator
from exface.progress import stage_callbacks

__all__ = ["BankScores", "SCORES_DIR"]

SCORES_DIR = "attributes"
RECORD = "predictor.json"


def _chunk_file(k: int) -> str:
    return f"chunk_{k:05d}.pt"


def _record(predictor: AttributePredictor, aligner: Aligner) -> dict[str, Any]:
    rec = {"predictor": part_record(predictor), "aligner": part_record(aligner),
           "attribute_names": list(predictor.attribute_names)}
    return json.loads(json.dumps(rec))


@torch.inference_mode()
def score_images(images: Tensor, aligner: Aligner, predictors: Sequence[AttributePredictor]) -> dict[str, Tensor]:
    """Every predictor's scores ``{name: [N]}`` of images ``[N, 3, H, W]`` in [-1, 1].

    A name an earlier predictor already gave (two age nets, say) is kept as
    ``<PredictorClass>.<name>``, so a second net can judge the first one's attribute.
    """
    crops = aligner(images)
    out: dict[str, Tensor] = {}
    for p in predictors:
        dev = next(iter(p.parameters()), torch.empty(0)).device
        x = crops.to(dev)
        if tuple(x.shape[-2:]) != tuple(p.input_size):
            x = F.interpolate(x, size=tuple(p.input_size), mode="bilinear", align_corners=False, antialias=True)
        for name, v in p(x).items():
            out[name if name not in out else f"{type(p).__name__}.{name}"] = v.float().cpu()
    return out


class _ScoreChunks(pl.LightningModule):
    """predict_step(chunk) -> {predictor key: scores} for the predictors that chunk lacks."""

    def __init__(self, bank: LatentBank, generator: Generator, aligner: Aligner,
                 predictors: dict[str, AttributePredictor], todo: dict[int, list[str]], batch_size: int) -> None:
        super().__init__()
        self.bank, self.todo, self.batch_size = bank, todo, batch_size
        self.generator, self.aligner = generator, aligner
        self.predictors = nn.ModuleDict(predictors)

    def predict_step(self, batch: Any, batch_idx: int = 0) -> dict[str, Any]:
        k = int(batch)
        stored_images = "image" in self.bank.manifest["stored"]
        data = torch.load(self.bank.chunk_path(k), map_location="cpu", weights_only=True, mmap=True)
        keys = self.todo[k]
        preds = [self.predictors[key] for key in keys]
        scores: dict[str, dict[str, list[Tensor]]] = {key: {} for key in keys}
        n = data["index"].shape[0]
        for b0 in range(0, n, self.batch_size):
            if stored_images:
                images = data["image"][b0 : b0 + self.batch_size].float().div(127.5).sub(1.0)
            else:
                z = data["z"][b0 : b0 + self.batch_size].to(self.generator.device)
                with torch.inference_mode():
                    images = self.generator.synthesize(z, space="z")
            for key, p in zip(keys, preds):  # one predictor at a time: each keeps its own names
                for name, v in score_images(images.to(self.generator.device), self.aligner, [p]).items():
                    scores[key].setdefault(name, []).append(v)
        by_pred = {key: {name: torch.cat(v) for name, v in scores[key].items()} for key in keys}
        return {"chunk": k, "index": data["index"].clone(), "scores": by_pred}


class _ScoreWriter(BasePredictionWriter):
    def __init__(self, root: Path) -> None:
        super().__init__(write_interval="batch")
        self.root = root

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for key, scores in prediction["scores"].items():
            path = self.root / key / _chunk_file(prediction["chunk"])
            if not path.is_file():  # never rewrite a chunk already on disk
                atomic_torch_save({"index": prediction["index"], "scores": scores}, path)


class BankScores:
    """The attribute scores stored with one latent bank (see the module docstring)."""

    def __init__(self, bank: LatentBank | str | Path) -> None:
        self.bank = bank if isinstance(bank, LatentBank) else LatentBank(bank)
        self.root = self.bank.root / SCORES_DIR

    # ---------------------------------------------------------------- layout
    def predictor_keys(self) -> list[str]:
        """Predictors with a side-file folder."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / RECORD).is_file())

    def record(self, key: str) -> dict[str, Any]:
        return json.loads((self.root / key / RECORD).read_text())

    def missing_chunks(self, key: str) -> list[int]:
        return [k for k in range(self.bank.num_chunks) if not (self.root / key / _chunk_file(k)).is_file()]

    def attribute_sources(self) -> dict[str, str]:
        """Complete attribute name -> where it is read from (a predictor key, or ``"bank"``)."""
        out = {name: "bank" for name in self.bank.manifest.get("attribute_names", [])}
        for key in self.predictor_keys():
            if not self.missing_chunks(key):
                for name in self.record(key)["attribute_names"]:
                    out.setdefault(name, key)
        return out

    # --------------------------------------------------------------- reading
    def load(self, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Scores ``{name: float32 [N]}`` in bank index order (all complete ones when ``names`` is None)."""
        sources = self.attribute_sources()
        names = list(sources) if names is None else list(names)
        missing = [n for n in names if n not in sources]
        if missing:
            partial = [k for k in self.predictor_keys() if self.missing_chunks(k)]
            hint = f" (partly scored: {partial}; run the scoring again, it resumes)" if partial else ""
            raise ExfaceError(
                f"the bank has no scores for {missing}; it has {sorted(sources) or 'none'}{hint}",
                where=self.bank.root,
                fix="add a predictor that outputs them to attribute_predictors in the fit recipe (FaceApiAgeGender: "
                    "age, gender_male; FaceApiLandmarks68: yaw, pitch, roll, smile, mouth_open, eyes_open; "
                    "FaceApiExpression: happy, ...) and re-run `exface interfacegan-fit`: only missing scores are computed",
            )
        n = self.bank.num_latents
        out = {name: torch.empty(n, dtype=torch.float32) for name in names}
        from_bank = [nm for nm in names if sources[nm] == "bank"]
        if from_bank:
            bank_scores = self.bank.load(("attributes",))["attributes"]
            for nm in from_bank:
                out[nm] = bank_scores[nm].float()
        keys = sorted({sources[nm] for nm in names} - {"bank"})
        for key in keys:
            for k in range(self.bank.num_chunks):
                data = torch.load(self.root / key / _chunk_file(k), map_location="cpu", weights_only=True)
                idx = data["index"]
                for nm in names:
                    if sources[nm] == key:
                        out[nm][idx] = data["scores"][nm].float()
        return out

    # --------------------------------------------------------------- scoring
    def score(
        self,
        generator: Generator,
        aligner: Aligner,
        predictors: Sequence[AttributePredictor],
        batch_size: int = 64,
        accelerator: str = "auto",
        devices: int | str = 1,
        max_chunks: int | None = None,
        enable_progress_bar: bool = False,
        chunks: Sequence[int] | None = None,
    ) -> dict[str, int]:
        """Score every bank chunk some predictor lacks; returns ``{predictor key: chunks computed}``.

        Chunks the bank has not written yet are skipped (a bank still being built can be
        scored as it grows; run this again afterwards). ``chunks`` restricts the work to those
        chunk indices, in that order (to split it by hand); ``max_chunks`` caps it.
        """
        want = self.bank.manifest["parts"]["generator"]["class"]
        if type(generator).__name__ != want:
            raise ExfaceError(
                f"the bank was made by generator {want}, but scoring was given {type(generator).__name__}",
                where=self.bank.root / "manifest.json", fix="pass the bank's generator (manifest.json 'parts'), or a new bank_dir",
            )
        preds: dict[str, AttributePredictor] = {}
        for p in predictors:
            key = type(p).__name__
            if key in preds:
                raise ValueError(f"two {key} predictors given; each predictor class scores a bank once")
            preds[key] = p
            rec, path = _record(p, aligner), self.root / key / RECORD
            if path.is_file():
                old = json.loads(path.read_text())
                if old != rec:
                    raise ExfaceError(
                        f"the bank holds {key} scores made with other settings (stored {old}, given {rec})",
                        where=path, fix=f"pass the same predictor and aligner arguments, or delete {path.parent} to score again",
                    )
        todo: dict[int, list[str]] = {}
        absent = set(self.bank.missing_chunks())
        for key in preds:
            for k in self.missing_chunks(key):
                if k in absent:
                    continue
                todo.setdefault(k, []).append(key)
        chunks = sorted(todo) if chunks is None else [int(k) for k in chunks if int(k) in todo]
        if max_chunks is not None:
            chunks = chunks[: max(0, int(max_chunks))]
        if not chunks:
            return {key: 0 for key in preds}
        for key, p in preds.items():
            (self.root / key).mkdir(parents=True, exist_ok=True)
            path = self.root / key / RECORD
            if not path.is_file():
                atomic_write_json(_record(p, aligner), path)
        for part in (generator, aligner, *preds.values()):
            part.eval()
        todo = {k: todo[k] for k in chunks}
        module = _ScoreChunks(self.bank, generator, aligner, preds, todo, batch_size)
        trainer = pl.Trainer(accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
                             enable_progress_bar=enable_progress_bar, enable_model_summary=False,
                             callbacks=[_ScoreWriter(self.root),
                                        *stage_callbacks(f"scoring {len(chunks)} bank chunks with {', '.join(preds)}",
                                                         enable_progress_bar)])
        loader = torch.utils.data.DataLoader(_ChunkIndices(chunks), batch_size=None, shuffle=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        return {key: sum(key in todo[k] for k in chunks) for key in preds}
