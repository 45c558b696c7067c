"""Lightning wrapper for face-recognition training: a backbone plus a margin loss.

Training options follow the reference recipes: SGD with momentum (arcface_torch, ExFaceGAN)
or AdamW; a linear warm-up then a polynomial decay (arcface_torch's ``PolyScheduler``,
power 2) or steps at given epochs (ExFaceGAN: x0.1 from 0-based epochs 21, 29, 34 of 40, its
config's ``[22, 30, 35]`` read as ``m - 1 <= epoch``; here ``milestones: [21, 29, 34]``); the learning
rate scaled by the global batch (``lr * global_batch / lr_reference_batch``; ExFaceGAN:
0.1 x batch / 512); and gradient-norm clipping of the backbone and the head *separately*
(ExFaceGAN's ``clip_grad_norm_(backbone, 5)`` and ``clip_grad_norm_(header, 5)``).

Checkpoints carry the backbone's class and init arguments (``exface_backbone``), so
:class:`~exface.fr.checkpoint_embedder.FRCheckpointEmbedder` rebuilds the trained network
from the checkpoint file alone.

With a :class:`~exface.losses.partial_fc.PartialFC` sharded across ranks, the checkpoint holds
the *full* centre matrix ``loss.weight`` (and the full optimizer state of it), gathered from
every rank when saving (``checkpoint["partial_fc"]`` records the layout); loading cuts each
rank's block again, so a run saved on N ranks resumes on M (1 included). The gather goes to
global rank 0 only, the one rank Lightning lets write the file: the other ranks' checkpoint
dicts (built and discarded) keep just their own block, so only rank 0 ever holds memory for
all classes. Validation scores every rank's embeddings against all centres (each rank its
block, the best over ranks).
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from exface.embedders.base import IdentityEmbedder
from exface.losses.base import FRLoss
from exface.losses.partial_fc import PartialFC, _world, all_gather_rows, exclude_partial_fc_from_ddp
from exface.resume_check import RecordsRunSettings

__all__ = ["FaceRecognitionModule", "lr_factor"]


def lr_factor(step: int, total: int, warmup: int, schedule: str, power: float = 2.0,
              milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based) of ``total``.

    Linear warm-up ``(step + 1) / warmup`` for the first ``warmup`` steps, then ``poly``:
    ``(1 - (step - warmup) / (total - warmup)) ** power``, or ``step``: ``gamma ** k`` with
    ``k`` the number of ``milestones`` (in steps) already reached.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "poly":
        return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup)) ** power
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    raise ValueError(f"schedule must be 'poly' or 'step', got {schedule!r}")


class FaceRecognitionModule(RecordsRunSettings, pl.LightningModule):
    """Train an identity embedder with a margin loss (ArcFace, CosFace, PartialFC, plugins...).

    The loss is given without its sizes (``loss: {class_path: ArcFace, init_args: {s: 64}}``):
    it is built in :meth:`setup` with the backbone's ``embedding_dim`` and the datamodule's
    ``num_classes``.

    Args:
        backbone: the network to train (any registered IdentityEmbedder).
        loss: a margin loss class; called as ``loss(embedding_dim, num_classes)``.
        lr: base learning rate (for a global batch of ``lr_reference_batch``).
        lr_reference_batch: the global batch ``lr`` is meant for; the rate used is
            ``lr * global_batch / lr_reference_batch``. None: ``lr`` as given.
        optimizer: ``sgd`` (momentum, as arcface_torch/ExFaceGAN) or ``adamw``.
        momentum: SGD momentum.
        weight_decay: L2 on backbone and class centres.
        schedule: ``poly`` (power ``poly_power``) or ``step`` (x ``gamma`` at ``milestones``).
        poly_power: exponent of the polynomial decay (arcface_torch: 2).
        milestones: epochs at which the step schedule multiplies the rate by ``gamma``: a
            milestone ``m`` takes effect at optimizer step ``round(m x steps_per_epoch)``, the
            first step of 0-based epoch ``m`` (``m = 1``: from the second epoch on).
        gamma: the step schedule's factor.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        clip_grad_norm: clip the gradient norm of the backbone and of the head, each on its
            own, to this value (ExFaceGAN: 5); None: no clipping.
    """

    def __init__(self, backbone: IdentityEmbedder, loss: Callable[[int, int], FRLoss], lr: float = 0.1,
                 lr_reference_batch: int | None = None, optimizer: Literal["sgd", "adamw"] = "sgd",
                 momentum: float = 0.9, weight_decay: float = 5e-4, schedule: Literal["poly", "step"] = "poly",
                 poly_power: float = 2.0, milestones: list[float] | None = None, gamma: float = 0.1,
                 warmup_epochs: float = 0.0, clip_grad_norm: float | None = None) -> None:
        super().__init__()
        if schedule not in ("poly", "step"):
            raise ValueError(f"schedule must be 'poly' or 'step', got {schedule!r}")
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        self.backbone = backbone
        self._loss_factory = loss
        self.loss: FRLoss | None = None
        self.lr, self.lr_reference_batch, self.optimizer_name = lr, lr_reference_batch, optimizer
        self.momentum, self.weight_decay = momentum, weight_decay
        self.schedule, self.poly_power, self.gamma = schedule, poly_power, gamma
        self.milestones = [float(m) for m in (milestones or [])]
        self.warmup_epochs, self.clip_grad_norm = float(warmup_epochs), clip_grad_norm

    def setup(self, stage: str) -> None:
        if self.loss is None:
            dm = self.trainer.datamodule
            num_classes = getattr(dm, "num_classes", None)
            if num_classes is None:
                dm.setup(stage)
                num_classes = dm.num_classes
            self.loss = self._loss_factory(self.backbone.embedding_dim, num_classes)
            # PartialFC shards its centres across ranks: DDP must not average them.
            exclude_partial_fc_from_ddp(self)

    def forward(self, images: Tensor) -> Tensor:
        """Unnormalized embeddings of images in [-1, 1] RGB."""
        return self.backbone.embed_raw(self.backbone.preprocess(images))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = self.loss(self(images), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        acc, n = self.validation_accuracy(images, labels)
        # sharded PartialFC: `acc` is already that of the global batch, the same on every rank; otherwise
        # each rank scores its share and sync_dist averages them (a no-op on one device)
        self.log("val/accuracy", acc, prog_bar=True, batch_size=n, sync_dist=True)

    def validation_accuracy(self, images: Tensor, labels: Tensor) -> tuple[Tensor, int]:
        """Nearest-centre accuracy of a batch and the number of samples it covers.

        With a sharded PartialFC (collective: every rank must call it) the embeddings and labels
        of all ranks are gathered and scored against every centre, so the accuracy is that of the
        global batch, identical on every rank.
        """
        loss = self.loss
        if isinstance(loss, PartialFC) and loss.world_size > 1:
            emb = all_gather_rows(self(images).float())
            labels = all_gather_rows(labels.to(emb.device))
            return (loss.nearest_class(emb) == labels).float().mean(), len(labels)
        emb = torch.nn.functional.normalize(self(images).float(), dim=1)
        centres = torch.nn.functional.normalize(self.loss_centres().float(), dim=1)
        return ((emb @ centres.T).argmax(1) == labels).float().mean(), len(labels)

    def loss_centres(self) -> Tensor:
        """The class-centre matrix ``[num_classes, embedding_dim]`` of the loss (a sharded
        PartialFC: this rank's block only, see :meth:`PartialFC.gather_centres`)."""
        weight = getattr(self.loss, "weight", None)
        if weight is None:
            raise AttributeError(f"{type(self.loss).__name__} exposes no `weight` of class centres")
        return weight

    # ------------------------------------------------------------------ optimization

    def global_batch_size(self) -> int:
        """Images per optimizer step over all devices (batch x devices x accumulation)."""
        dm = self.trainer.datamodule
        batch = int(getattr(dm, "batch_size", 0) or 0)
        if batch <= 0:
            raise ValueError("lr_reference_batch needs the datamodule's batch_size to scale the learning rate")
        return batch * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def scaled_lr(self) -> float:
        """The learning rate after scaling by the global batch."""
        if self.lr_reference_batch is None:
            return self.lr
        return self.lr * self.global_batch_size() / self.lr_reference_batch

    def _steps_per_epoch(self, total: int) -> float:
        t = self.trainer
        if t.max_epochs is not None and t.max_epochs > 0 and (t.max_steps is None or t.max_steps < 0):
            return total / t.max_epochs
        dm = t.datamodule
        if dm is None:
            return max(1.0, total / max(1, t.world_size) / t.accumulate_grad_batches)
        loader = dm.train_dataloader()
        n = len(loader)
        # a DistributedSampler (IdentityFolderDataModule's) already gives this rank's share; a plain
        # loader is split across ranks by Lightning's sampler
        if not isinstance(getattr(loader, "sampler", None), torch.utils.data.DistributedSampler):
            n /= max(1, t.world_size)
        return max(1.0, n / t.accumulate_grad_batches)

    def configure_optimizers(self):
        groups = [{"params": [p for p in self.backbone.parameters() if p.requires_grad], "name": "backbone"},
                  {"params": [p for p in self.loss.parameters() if p.requires_grad], "name": "head"}]
        groups = [g for g in groups if g["params"]]
        lr = self.scaled_lr()
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, lr=lr, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = self._steps_per_epoch(total)
        warm = int(round(self.warmup_epochs * per_epoch))
        milestones = tuple(int(round(m * per_epoch)) for m in self.milestones)
        kind, power, gamma = self.schedule, self.poly_power, self.gamma
        self._warn_about_schedule(total, warm, milestones if kind == "step" else ())

        def schedule(step: int) -> float:
            return lr_factor(step, total, warm, kind, power, milestones, gamma)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _warn_about_schedule(self, total: int, warm: int, milestones: tuple[int, ...]) -> None:
        """Say so when the schedule cannot run as set: a warm-up as long as the training (the rate never
        reaches ``lr``), or step milestones at or past its end (those decays never happen). Not under
        ``fast_dev_run``, whose one step says nothing about the schedule."""
        from lightning.pytorch.utilities import rank_zero_warn

        if getattr(self.trainer, "fast_dev_run", False):
            return
        if warm >= total > 0:
            rank_zero_warn(f"warmup_epochs={self.warmup_epochs} is {warm} steps, not shorter than the training's "
                           f"{total}: the learning rate never reaches lr={self.lr} and never decays; lower "
                           f"warmup_epochs or train longer")
        late = [m for m in milestones if m >= total]
        if late:
            rank_zero_warn(f"{len(late)} of the milestones {list(self.milestones)} (epochs) fall at or after the "
                           f"training's last step ({total}): those decays never happen; lower them or train longer")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # a PartialFC sharded over ranks holds a block of the head per rank: its norm is the whole head's,
        # summed over ranks, so that every rank (and one process with all the centres) scales alike
        from exface.losses.partial_fc import clip_grad_norm_, sharded_parameters

        sharded = sharded_parameters(self.loss)
        if self.clip_grad_norm is not None:
            for group in optimizer.param_groups:  # backbone and head, each on its own
                clip_grad_norm_(group["params"], self.clip_grad_norm, sharded)
        if gradient_clip_val is None:
            return
        # the Trainer's own (global) clipping still applies
        if sharded and gradient_clip_algorithm in (None, "norm"):  # by value is elementwise: the same on every rank
            clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], float(gradient_clip_val), sharded)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from exface.fr.checkpoint_embedder import backbone_spec

        checkpoint["exface_backbone"] = backbone_spec(self.backbone)
        checkpoint["exface_global_batch"] = self._global_batch_or_none()
        self._save_full_partial_fc(checkpoint)

    def _global_batch_or_none(self) -> int | None:
        try:
            return self.global_batch_size()
        except (AttributeError, RuntimeError, ValueError):  # no trainer or a datamodule without batch_size
            return None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before restoring the model and (later) the optimizers from `checkpoint`
        from exface.fr.checkpoint_embedder import backbone_spec
        from exface.resume_check import check_resume

        self._load_partial_fc_block(checkpoint)
        try:
            spec = backbone_spec(self.backbone)
        except ValueError:  # a backbone whose arguments cannot be recorded: its tensors still are compared
            spec = None
        # the backbone's initial weights (a file, timm's pretrained) are replaced by the checkpoint's. The
        # global batch sets the scaled lr and the schedule's steps per epoch (the per-device batch and the
        # device count may change together; the datamodule compares the data itself)
        check_resume(self, checkpoint, may_differ=("backbone.init_args.weights", "backbone.init_args.pretrained"),
                     extra={"backbone": (checkpoint.get("exface_backbone"), spec),
                            "global batch (data batch_size x devices x accumulate_grad_batches)":
                                (checkpoint.get("exface_global_batch"), self._global_batch_or_none())})

    _PFC_KEY = "loss.weight"

    def _pfc_state_slots(self, checkpoint: dict[str, Any]) -> list[tuple[int, int]]:
        """``(optimizer k, parameter index)`` of ``loss.weight`` in ``checkpoint["optimizer_states"]``.

        From the checkpoint's record if any; else by walking the trainer's optimizers' param
        groups in order (the numbering of ``Optimizer.state_dict``); else (no optimizer yet, as
        when Lightning loads a checkpoint) from the saved ``head`` group of configure_optimizers.
        """
        record = checkpoint.get("partial_fc") or {}
        if "optimizer_params" in record:
            return [(int(k), int(i)) for k, i in record["optimizer_params"]]
        states = checkpoint.get("optimizer_states") or []
        weight = self.loss.weight
        trainer = self._trainer
        optimizers = list(getattr(trainer, "optimizers", None) or []) if trainer is not None else []
        slots: list[tuple[int, int]] = []
        if optimizers and len(optimizers) == len(states):
            for k, opt in enumerate(optimizers):
                start = 0
                for group in opt.param_groups:
                    hit = next((i for i, p in enumerate(group["params"], start) if p is weight), None)
                    if hit is not None:
                        slots.append((k, hit))
                        break
                    start += len(group["params"])
            return slots
        head = [p for p in self.loss.parameters() if p.requires_grad]
        pos = next((i for i, p in enumerate(head) if p is weight), None)
        if pos is None:
            return slots
        for k, state in enumerate(states):
            for group in state.get("param_groups", []):
                if group.get("name") == "head" and len(group["params"]) == len(head):
                    slots.append((k, int(group["params"][pos])))
        return slots

    def _save_full_partial_fc(self, checkpoint: dict[str, Any]) -> None:
        """Sharded PartialFC: put the full centre matrix and its full optimizer state in rank 0's ``checkpoint``.

        Collective: Lightning runs on_save_checkpoint on every rank, but only global rank 0
        writes the file (``Strategy.save_checkpoint``), so the blocks are gathered to rank 0
        alone (:meth:`PartialFC.gather_centres`), one collective per tensor, in the same order
        on every rank. Rank 0's checkpoint gets the full tensors (``partial_fc["full"]``); the
        other ranks' checkpoints are left with their own block, the live tensors themselves (no
        copy), and say so (``"full": False``, with their ``class_start``/``num_local``): they
        are not meant to be written, and loading one is refused.
        """
        loss = self.loss
        if not isinstance(loss, PartialFC):
            return
        slots = self._pfc_state_slots(checkpoint)
        writer = True
        if loss.world_size > 1:
            writer = _world()[0] == 0  # the rank that writes the file: the gathers' dst
            sd = checkpoint.get("state_dict")
            if sd is not None and self._PFC_KEY in sd:
                full = loss.gather_centres(sd[self._PFC_KEY], dst=0)
                if writer:
                    sd[self._PFC_KEY] = full
            states = checkpoint.get("optimizer_states") or []
            for k, i in slots:
                state = states[k].get("state", {}) if k < len(states) else {}
                if i not in state:
                    continue
                # rank 0 edits a copy: Optimizer.state_dict() shares these per-parameter dicts with the
                # live optimizer; the other ranks only read theirs (the same names, in the same order)
                entry = dict(state[i]) if writer else state[i]
                for name in sorted(entry, key=str):
                    v = entry[name]
                    if torch.is_tensor(v) and tuple(v.shape) == tuple(loss.weight.shape):
                        full = loss.gather_centres(v, dst=0)
                        if writer:
                            entry[name] = full
                if writer:
                    state[i] = entry
        record = {"num_classes": int(loss.num_classes), "full": writer,
                  "saved_world_size": int(loss.world_size),
                  "optimizer_params": [[int(k), int(i)] for k, i in slots]}
        if not writer:
            record.update(class_start=int(loss.class_start), num_local=int(loss.num_local))
        checkpoint["partial_fc"] = record
        if loss.world_size > 1:
            # gather() lets the senders return before rank 0 has received everything; a rank that
            # then ends its process at once (the last checkpoint of a run) can abort gloo's
            # threads mid-transfer. One barrier per checkpoint keeps the ranks in step, as the
            # all_gather this replaced did.
            torch.distributed.barrier()

    def _load_partial_fc_block(self, checkpoint: dict[str, Any]) -> None:
        """Sharded PartialFC: cut this rank's block of the full centre matrix and of its optimizer state.

        Needs no collective: every rank slices the full tensors rank 0 saved, for any number of
        ranks (1 included: loaded as is)."""
        loss = self.loss
        if not isinstance(loss, PartialFC):
            return
        if (checkpoint.get("partial_fc") or {}).get("full") is False:
            raise RuntimeError(
                "this checkpoint holds only one rank's shard of the PartialFC centres (it was built on a "
                "rank other than 0, which does not write checkpoints): load the one rank 0 wrote"
            )
        if _world()[1] > 1 and loss.world_size == 1:
            loss.shard_()  # not run yet: shard now, before the optimizer holds any state
        if loss.world_size == 1:
            return  # a full matrix loads as is
        n = loss.num_classes
        sd = checkpoint.get("state_dict") or {}
        w = sd.get(self._PFC_KEY)
        if w is not None:
            if w.shape[0] != n:
                raise RuntimeError(
                    f"the checkpoint's {self._PFC_KEY} has {w.shape[0]} rows, not all {n} classes: it holds one "
                    "rank's shard of the PartialFC centres (a checkpoint written before exface gathered them), "
                    "so it cannot be resumed sharded"
                )
            sd[self._PFC_KEY] = loss.local_block(w)
        states = checkpoint.get("optimizer_states") or []
        for k, i in self._pfc_state_slots(checkpoint):
            state = states[k].get("state", {}) if k < len(states) else {}
            if i not in state:
                continue
            entry = dict(state[i])
            for name, v in entry.items():
                if torch.is_tensor(v) and v.ndim == loss.weight.ndim and v.shape[0] == n \
                        and tuple(v.shape[1:]) == tuple(loss.weight.shape[1:]):
                    entry[name] = loss.local_block(v)
            state[i] = entry
