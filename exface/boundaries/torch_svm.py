"""All R identity boundaries as one batched linear SVM, trained in one Lightning run.

ExFaceGAN fits one sklearn ``LinearSVC`` per reference identity, thousands of small
problems over the *same* latents. Stacking the R weight vectors into ``W [R, d]`` turns
every evaluation of all R objectives into two GEMMs over the shared bank, so the whole
set trains in about the time of a few sklearn fits.

Pieces:

- :class:`BatchedLinearSVM` (plain ``nn.Module``): ``W [R, d]``, ``b [R]``, scores
  ``x @ W.T + b``, and the LinearSVC objective with a hand-written gradient.
- :class:`BoundaryFitModule` (``LightningModule``): builds its BatchedLinearSVM in
  ``setup()`` from the datamodule's ``latent_dim`` and ``num_references``, trains on
  batches ``{"x": [B, d], "y": [B, R] int8}``, validates balanced accuracy and AUC of all
  R boundaries each validation epoch, and returns/saves
  :class:`~exface.boundaries.base.Boundaries` in raw latent space. This is what
  ``exface fit`` recipes name (``model: class_path: BoundaryFitModule``).
- :class:`TorchLinearSVM` (registered boundary learner): ``fit(x, y)`` with an in-memory
  datamodule and one ``Trainer.fit``.

Objective, per reference r with ``n_r`` valid (label != -1) training latents::

    F_r(w, b) = (1/n_r) * sum_i  cw_r(y_ri) * max(0, 1 - s_ri (w . x_i + b))^2
                + ||w||^2 / (2 C n_r)

which is sklearn ``LinearSVC(C)``'s primal objective divided by ``C n_r`` (``s = ±1``;
``cw`` are optional "balanced" class weights; unlike liblinear, the bias is not
penalized). The module minimizes ``sum_r F_r``; the references are independent, so
this is R LinearSVC problems solved together. Optimization (default): full-batch
:class:`RowwiseLBFGS`, i.e. one L-BFGS per reference (own curvature history, own
Armijo step, own stopping test) vectorized over R, started from the closed-form ridge
solution (least squares on ±1 targets, one shared ``(d+1) x (d+1)`` solve for all R),
which is already the squared-hinge optimum when every latent is inside the margin. It
reaches LinearSVC's objective to float32 precision in ~10 evaluations. Adam is there
for minibatches when latents x references do not fit in memory at once.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from exface.boundaries.base import (
    Boundaries,
    BoundaryLearner,
    check_boundary_inputs,
    hyperplanes_to_raw,
    latent_split,
    refuse_other_boundaries,
)
from exface.boundaries.metrics import balanced_accuracy, roc_auc

__all__ = ["BatchedLinearSVM", "BoundaryFitModule", "TorchLinearSVM"]


class BatchedLinearSVM(nn.Module):
    """R linear SVMs over shared inputs: ``scores = x @ W.T + b`` (``[B, R]``).

    :meth:`loss_and_grad` evaluates the summed squared-hinge objective and its exact
    gradient without autograd (5 elementwise passes and 2 GEMMs per call), which is
    what the optimizers call; :meth:`objective` is the same value through autograd.
    """

    def __init__(self, num_references: int, dim: int) -> None:
        super().__init__()
        if num_references < 1 or dim < 1:
            raise ValueError(f"need num_references >= 1 and dim >= 1, got {num_references} and {dim}")
        self.weight = nn.Parameter(torch.zeros(num_references, dim))
        self.bias = nn.Parameter(torch.zeros(num_references))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x, self.weight.T)

    @staticmethod
    def targets(y: Tensor, sample_scale: Tensor) -> tuple[Tensor, Tensor]:
        """Signs ``s`` (±1, 0 where ignored) and weights ``c`` for labels ``y [B, R]``.

        ``sample_scale`` is ``[2, R]``: row 0 the weight of a negative, row 1 of a
        positive (class weight / n_r times any minibatch scale).
        """
        pos = y == 1
        neg = y == 0
        s = pos.float().sub_(neg.float())
        c = torch.where(pos, sample_scale[1], torch.where(neg, sample_scale[0], 0.0))
        return s, c

    def objective(self, x: Tensor, s: Tensor, c: Tensor, reg: Tensor) -> Tensor:
        """Per-reference ``[R]``: ``sum_i c * max(0, 1 - s * score)^2 + reg_r ||W_r||^2 / 2`` (autograd)."""
        t = torch.clamp(1 - s * self(x), min=0)
        return (c * t * t).sum(0) + 0.5 * reg * (self.weight * self.weight).sum(1)

    @torch.no_grad()
    def loss_and_grad(self, x: Tensor, s: Tensor, c: Tensor, reg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The per-reference :meth:`objective` ``[R]`` and its gradients w.r.t. ``weight`` and ``bias``."""
        w = self.weight
        t = torch.addcmul(torch.ones((), dtype=x.dtype, device=x.device), s, self(x), value=-1.0)
        t.clamp_(min=0)
        u = t * c
        loss = (u * t).sum(0) + 0.5 * reg * (w * w).sum(1)
        g = u.mul_(s).mul_(-2.0)  # d loss / d score
        grad_w = torch.mm(g.T, x).add_(w * reg[:, None])
        grad_b = g.sum(0)
        return loss, grad_w, grad_b


class RowwiseLBFGS(torch.optim.Optimizer):
    """L-BFGS for R independent problems stacked along dim 0 of every parameter.

    All parameters have first dimension R (here ``W [R, d]`` and ``b [R]``); row r of
    each belongs to problem r and nothing couples rows. Each row gets its own curvature
    history, step length (Armijo backtracking) and convergence test, all vectorized, so
    one closure evaluation serves every row. A single L-BFGS over the concatenation
    would share one step length and one curvature model among R problems of different
    scales and converge much more slowly per problem.

    ``closure()`` must set ``.grad`` of the parameters and return the per-row objective
    ``[R]``. :meth:`step` runs up to ``max_iter`` iterations. A row stops moving once its
    gradient is below ``tolerance_grad`` or the decrease its next step predicts is below
    ``tolerance_change`` times its loss (float32 cannot resolve much less).
    """

    def __init__(self, params, lr: float = 1.0, max_iter: int = 20, history_size: int = 10,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-6, max_backtracks: int = 20,
                 armijo: float = 1e-4) -> None:
        defaults = dict(lr=lr, max_iter=max_iter, history_size=history_size, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, max_backtracks=max_backtracks, armijo=armijo)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("RowwiseLBFGS takes one parameter group")
        rows = {p.shape[0] for p in self.param_groups[0]["params"]}
        if len(rows) != 1:
            raise ValueError(f"every parameter must have the same first dimension R, got {sorted(rows)}")

    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def _flat(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], 1)

    def _set(self, flat: Tensor) -> None:
        i = 0
        for p in self._params():
            k = p[0].numel() if p.ndim > 1 else 1
            p.copy_(flat[:, i : i + k].reshape(p.shape))
            i += k

    @torch.no_grad()
    def step(self, closure) -> Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("RowwiseLBFGS.step needs a closure returning the per-row loss [R]")
        group = self.param_groups[0]
        state = self.state["rowwise"]
        hist_s: list[Tensor] = state.setdefault("s", [])
        hist_y: list[Tensor] = state.setdefault("y", [])
        hist_rho: list[Tensor] = state.setdefault("rho", [])

        def evaluate() -> tuple[Tensor, Tensor]:
            with torch.enable_grad():
                f = closure()
            f = f.detach().reshape(-1)
            return f, self._flat([p.grad for p in self._params()])

        f, g = evaluate()
        first_f = f.clone()
        x = self._flat(self._params())
        gamma = state.get("gamma")
        # float32 losses carry ~1e-7 relative rounding: decreases below `noise` are invisible
        noise = 8 * torch.finfo(f.dtype).eps
        for _ in range(group["max_iter"]):
            active = g.abs().amax(1) > group["tolerance_grad"]
            if not active.any():
                break
            # two-loop recursion, per row
            q = g.clone()
            alphas = []
            for s_i, y_i, rho_i in zip(reversed(hist_s), reversed(hist_y), reversed(hist_rho)):
                a_i = rho_i * (s_i * q).sum(1)
                q.sub_(a_i[:, None] * y_i)
                alphas.append(a_i)
            if gamma is None:  # first iteration: a short, safe steepest-descent step
                q.mul_((1.0 / g.norm(dim=1).clamp_min(1.0))[:, None])
            else:
                q.mul_(gamma[:, None])
            for s_i, y_i, rho_i, a_i in zip(hist_s, hist_y, hist_rho, reversed(alphas)):
                b_i = rho_i * (y_i * q).sum(1)
                q.add_(s_i * (a_i - b_i)[:, None])
            d = q.neg_()
            gtd = (g * d).sum(1)
            bad = gtd >= 0  # not a descent direction: fall back to the gradient for that row
            if bad.any():
                d[bad] = -g[bad]
                gtd = (g * d).sum(1)
            # converged rows: the predicted decrease is below float32 resolution of the loss
            active &= -gtd > group["tolerance_change"] * f.abs().clamp_min(1e-12)
            if not active.any():
                break
            d[~active] = 0
            gtd[~active] = 0
            # Armijo backtracking with one step length per row
            t = torch.full_like(f, group["lr"])
            for _ls in range(group["max_backtracks"]):
                self._set(x + t[:, None] * d)
                f_new, g_new = evaluate()
                ok = f_new <= f + group["armijo"] * t * gtd + noise * f.abs()
                if ok.all():
                    break
                t = torch.where(ok, t, 0.5 * t)
            else:
                t = torch.where(ok, t, torch.zeros_like(t))  # give up on the rows still failing
                self._set(x + t[:, None] * d)
                f_new, g_new = evaluate()
            s_k = t[:, None] * d
            y_k = g_new - g
            sy = (s_k * y_k).sum(1)
            yy = (y_k * y_k).sum(1)
            good = sy > 1e-10 * yy.clamp_min(1e-30)
            rho = torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))  # rho = 0: pair is a no-op
            hist_s.append(s_k)
            hist_y.append(y_k)
            hist_rho.append(rho)
            if len(hist_s) > group["history_size"]:
                hist_s.pop(0), hist_y.pop(0), hist_rho.pop(0)
            new_gamma = torch.where(good, sy / yy.clamp_min(1e-30), torch.ones_like(sy))
            gamma = new_gamma if gamma is None else torch.where(good, new_gamma, gamma)
            x = x + s_k
            f, g = f_new, g_new
        state["gamma"] = gamma
        return first_f


class BoundaryFitModule(pl.LightningModule):
    """Lightning module fitting all R identity boundaries (one batched linear SVM).

    Needs a datamodule with ``latent_dim`` (d) and ``num_references`` (R) attributes whose
    dataloaders yield ``{"x": float [B, d], "y": int8 [B, R]}`` (labels 1 / 0 / -1 =
    ignore). Before the first epoch it makes one pass over the training data for the
    per-reference class counts, the standardization statistics and the ridge start.
    One device only (``trainer.devices=1``); a GPU helps once R x N is large. With the
    default L-BFGS, give it one batch per epoch (batch size >= training latents) when
    it fits in memory; each epoch is then ``lbfgs_max_iter`` L-BFGS iterations, and
    converged references stop moving, so extra epochs cost one evaluation each.

    Args:
        C: LinearSVC's C (larger = weaker L2 penalty).
        optimizer: ``"lbfgs"`` (best with one full batch per epoch) or ``"adam"``
            (minibatches).
        lr: learning rate (1.0 is right for L-BFGS; ~0.01-0.05 for Adam).
        lbfgs_max_iter: L-BFGS iterations per training step (per epoch when full-batch).
        lbfgs_tolerance: a reference stops once the objective decrease its next L-BFGS step
            predicts is below this fraction of its objective (``tolerance_change``; 1e-4 as
            LinearSVC's default ``tol``: on the d = 512 benchmark 1e-6 costs 40% more time
            for the same balanced accuracy to 4 digits).
        standardize: train on per-dimension standardized latents (better conditioning);
            boundaries are always returned in raw latent space.
        class_weight: ``None`` or ``"balanced"`` (weight n_r / (2 n_class) per class, as
            sklearn's), for imbalanced labels such as the top-k rule.
        init: ``"ridge"`` (closed-form least-squares start) or ``"zeros"``.
        space: the latent space name written into the Boundaries (default: the
            datamodule's ``space`` attribute, else ``"z"``).
        save_path: when set, :meth:`boundaries` is saved there at the end of ``fit``
            (rank zero only), loadable with ``Boundaries.load``.
    """

    def __init__(
        self,
        C: float = 1.0,
        optimizer: str = "lbfgs",
        lr: float = 1.0,
        lbfgs_max_iter: int = 20,
        lbfgs_tolerance: float = 1e-4,
        standardize: bool = True,
        class_weight: str | None = None,
        init: str = "ridge",
        space: str | None = None,
        save_path: str | None = None,
    ) -> None:
        super().__init__()
        if C <= 0:
            raise ValueError(f"C must be > 0, got {C}")
        if optimizer not in ("lbfgs", "adam"):
            raise ValueError(f'optimizer must be "lbfgs" or "adam", got {optimizer!r}')
        if class_weight not in (None, "balanced"):
            raise ValueError(f'class_weight must be None or "balanced", got {class_weight!r}')
        if init not in ("ridge", "zeros"):
            raise ValueError(f'init must be "ridge" or "zeros", got {init!r}')
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.svm: BatchedLinearSVM | None = None
        self.val_balanced_accuracy: Tensor | None = None
        self.val_auc: Tensor | None = None
        self._val_scores: list[Tensor] = []
        self._val_labels: list[Tensor] = []

    # ----------------------------------------------------------------- construction
    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            raise ValueError(
                "BoundaryFitModule trains on one device (it sets gradients itself, outside DDP's "
                f"all-reduce); got world_size={self.trainer.world_size}: set trainer.devices=1"
            )
        if self.svm is not None:
            return
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        missing = [a for a in ("latent_dim", "num_references") if not hasattr(dm, a)]
        if dm is None or missing:
            raise ValueError(
                "BoundaryFitModule builds its SVM from the datamodule's latent_dim and "
                f"num_references; pass a datamodule that has them (missing: {missing or 'datamodule'})"
            )
        self.configure_svm(int(dm.num_references), int(dm.latent_dim))
        if self.hparams.space is None:
            self.hparams.space = getattr(dm, "space", None) or "z"

    def configure_svm(self, num_references: int, latent_dim: int) -> None:
        """Create the SVM and its statistics buffers (``setup`` does this from the datamodule)."""
        self.svm = BatchedLinearSVM(num_references, latent_dim)
        self.register_buffer("x_mean", torch.zeros(latent_dim))
        self.register_buffer("x_std", torch.ones(latent_dim))
        self.register_buffer("sample_scale", torch.zeros(2, num_references))
        self.register_buffer("reg", torch.zeros(num_references))
        self.register_buffer("num_train", torch.zeros((), dtype=torch.long))

    def configure_optimizers(self):
        params = [self.svm.weight, self.svm.bias]
        if self.hparams.optimizer == "lbfgs":
            return RowwiseLBFGS(params, lr=self.hparams.lr, max_iter=self.hparams.lbfgs_max_iter,
                                tolerance_change=self.hparams.lbfgs_tolerance)
        return torch.optim.Adam(params, lr=self.hparams.lr)

    # ------------------------------------------------------------ statistics pass
    def on_train_start(self) -> None:
        if int(self.num_train) == 0:  # not prepared yet (a resumed checkpoint already is)
            self._prepare(self.trainer.datamodule.train_dataloader())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["exface_val_metrics"] = {"balanced_accuracy": self.val_balanced_accuracy, "auc": self.val_auc}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Build the SVM from the checkpoint's shapes when loading outside a Trainer."""
        w = checkpoint.get("state_dict", {}).get("svm.weight")
        if self.svm is None and w is not None:
            self.configure_svm(*w.shape)
        metrics = checkpoint.get("exface_val_metrics", {})
        self.val_balanced_accuracy = metrics.get("balanced_accuracy")
        self.val_auc = metrics.get("auc")
        from exface.resume_check import check_resume

        check_resume(self, checkpoint, may_differ=("save_path",))  # a resume with other settings is refused

    @torch.no_grad()
    def _prepare(self, loader) -> None:
        """One pass over the training data: class counts, mean/std, ridge start."""
        r, d = self.svm.weight.shape
        dev = self.device
        n = 0
        sum_x = torch.zeros(d, dtype=torch.float64, device=dev)
        gram = torch.zeros(d, d, dtype=torch.float64, device=dev)
        xs = torch.zeros(d, r, dtype=torch.float64, device=dev)  # only seeds the ridge start
        sum_s = torch.zeros(r, dtype=torch.float64, device=dev)
        n_pos = torch.zeros(r, dtype=torch.float64, device=dev)
        n_neg = torch.zeros(r, dtype=torch.float64, device=dev)
        n_batches = 0
        for batch in loader:
            n_batches += 1
            x, y = self._unpack(batch)
            x = x.to(dev, torch.float32)
            y = y.to(dev)
            pos = (y == 1).float()
            neg = (y == 0).float()
            s = pos - neg
            x64 = x.double()
            n += x.shape[0]
            sum_x += x64.sum(0)
            gram += x64.T @ x64
            xs += (x.T @ s).double()
            sum_s += s.sum(0, dtype=torch.float64)
            n_pos += pos.sum(0, dtype=torch.float64)
            n_neg += neg.sum(0, dtype=torch.float64)
        if n_batches > 1 and self.hparams.optimizer == "lbfgs":
            rank_zero_warn(
                f"BoundaryFitModule: L-BFGS on {n_batches} minibatches per epoch converges poorly; use one "
                "batch holding all training latents, or optimizer='adam' with lr ~0.01-0.05"
            )
        empty = ((n_pos == 0) | (n_neg == 0)).nonzero().flatten()
        if len(empty):
            raise ValueError(
                f"references {empty[:5].tolist()} have no positive or no negative training latents; "
                "every reference needs both (check the labels or the split)"
            )
        mean = sum_x / n if self.hparams.standardize else torch.zeros_like(sum_x)
        var = (gram.diagonal() / n - (sum_x / n) ** 2).clamp_min(0)
        std = var.sqrt() if self.hparams.standardize else torch.ones_like(var)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        self.x_mean.copy_(mean.float())
        self.x_std.copy_(std.float())
        n_valid = n_pos + n_neg
        if self.hparams.class_weight == "balanced":
            cw_pos, cw_neg = n_valid / (2 * n_pos), n_valid / (2 * n_neg)
        else:
            cw_pos = cw_neg = torch.ones_like(n_valid)
        self.sample_scale.copy_(torch.stack([cw_neg / n_valid, cw_pos / n_valid]).float())
        self.reg.copy_((1.0 / (self.hparams.C * n_valid)).float())
        if self.hparams.init == "ridge":
            # standardized statistics: x' = (x - mean) / std
            sum_xp = (sum_x - n * mean) / std
            gram_p = (gram - torch.outer(mean, sum_x) - torch.outer(sum_x, mean) + n * torch.outer(mean, mean))
            gram_p = gram_p / torch.outer(std, std)
            xs_p = (xs - torch.outer(mean, sum_s)) / std[:, None]
            aug = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=dev)
            aug[:d, :d] = gram_p + torch.eye(d, dtype=torch.float64, device=dev) / (2 * self.hparams.C)
            aug[:d, d] = sum_xp
            aug[d, :d] = sum_xp
            aug[d, d] = n
            sol = torch.linalg.solve(aug, torch.cat([xs_p, sum_s[None]], 0))
            self.svm.weight.copy_(sol[:d].T.float())
            self.svm.bias.copy_(sol[d].float())
        self.num_train.fill_(n)

    @staticmethod
    def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, dict) or "x" not in batch or "y" not in batch:
            raise ValueError('BoundaryFitModule expects batches {"x": [B, d] latents, "y": [B, R] int8 labels}')
        return batch["x"], batch["y"]

    # ------------------------------------------------------------------ training
    def _standardized(self, x: Tensor) -> Tensor:
        return (x.float() - self.x_mean) / self.x_std

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        x, y = self._unpack(batch)
        x = self._standardized(x)
        if y.shape[1] != self.svm.weight.shape[0]:
            raise ValueError(f"batch y has {y.shape[1]} references, the module was built for {self.svm.weight.shape[0]}")
        minibatch_scale = float(self.num_train) / x.shape[0]  # unbiased for the full objective
        s, c = BatchedLinearSVM.targets(y, self.sample_scale * minibatch_scale)
        opt = self.optimizers()
        svm = self.svm

        def closure() -> Tensor:
            loss, gw, gb = svm.loss_and_grad(x, s, c, self.reg)
            svm.weight.grad = gw
            svm.bias.grad = gb
            return loss  # [R]: RowwiseLBFGS searches a step per reference; Adam sums

        loss = opt.step(closure=closure)
        if loss is not None:
            self.log("train/loss", loss.mean(), prog_bar=True, batch_size=x.shape[0])

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_scores, self._val_labels = [], []

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        x, y = self._unpack(batch)
        with torch.no_grad():
            self._val_scores.append(self.svm(self._standardized(x)))
        self._val_labels.append(y)

    def on_validation_epoch_end(self) -> None:
        if not self._val_scores:
            return
        scores = torch.cat(self._val_scores).T.contiguous()
        labels = torch.cat(self._val_labels).T.contiguous()
        self._val_scores, self._val_labels = [], []
        self.val_balanced_accuracy = balanced_accuracy(scores, labels).cpu()
        self.val_auc = roc_auc(scores, labels).cpu()
        self.log("val/balanced_accuracy", self.val_balanced_accuracy.nanmean().item(), prog_bar=True)
        self.log("val/auc", self.val_auc.nanmean().item())

    # ------------------------------------------------------------------- output
    def boundaries(self, space: str | None = None) -> Boundaries:
        """The fitted boundaries in raw latent space (unit normals), with validation metrics."""
        if self.svm is None:
            raise RuntimeError("BoundaryFitModule has no SVM yet; fit it with a Trainer and a datamodule first")
        w = self.svm.weight.detach().cpu()
        b = self.svm.bias.detach().cpu()
        std = self.x_std.detach().cpu()
        normals, offsets = hyperplanes_to_raw(w, b, 1.0 / std, -self.x_mean.detach().cpu() / std)
        r = w.shape[0]
        nan = torch.full((r,), float("nan"))
        return Boundaries(
            normals, offsets, space or self.hparams.space or "z",
            self.val_balanced_accuracy if self.val_balanced_accuracy is not None else nan,
            self.val_auc if self.val_auc is not None else nan,
            self._meta(),
        )

    def _meta(self) -> dict[str, Any]:
        """What the saved boundaries record about how they were made (known once ``setup`` ran)."""
        meta = {"learner": "BoundaryFitModule", **{k: v for k, v in self.hparams.items() if k != "save_path"}}
        # the bank the latents came from (IdentityBankDataModule.provenance), so synthesis can check it
        meta.update(getattr(getattr(self._trainer, "datamodule", None), "provenance", None) or {})
        return meta

    def check_before_data(self, datamodule: Any) -> None:
        """Refuse before the datamodule's bank is built when ``save_path`` holds boundaries of other
        settings, labeling or space (what is known then; the bank's digest and the shape at fit start)."""
        if not self.hparams.save_path:
            return
        planned = getattr(datamodule, "planned_provenance", None)
        space = self.hparams.space or getattr(datamodule, "space", None) or "z"  # as setup() will resolve it
        meta = {"learner": "BoundaryFitModule", **{k: v for k, v in self.hparams.items() if k != "save_path"},
                "space": space, **(planned() if callable(planned) else {})}
        refuse_other_boundaries(self.hparams.save_path, meta, space=space, complete=False,
                                setting="model.init_args.save_path")

    def on_fit_start(self) -> None:
        # refuse now, not after training, when save_path holds boundaries of other settings or another bank
        if self.hparams.save_path and self.svm is not None:
            refuse_other_boundaries(self.hparams.save_path, self._meta(), space=self.hparams.space or "z",
                                    shape=tuple(self.svm.weight.shape), setting="model.init_args.save_path")

    def on_fit_end(self) -> None:
        if self.hparams.save_path and self.trainer.is_global_zero:
            path = Path(self.hparams.save_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.boundaries().save(path, setting="model.init_args.save_path")


class _LatentLabelBatches(torch.utils.data.Dataset):
    """Index-batch dataset: ``ds[list_of_indices]`` is one ``{"x", "y"}`` batch (no collate)."""

    def __init__(self, x: Tensor, y_nr: Tensor) -> None:
        self.x, self.y = x, y_nr

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, idx) -> dict[str, Tensor]:
        idx = torch.as_tensor(idx)
        return {"x": self.x[idx], "y": self.y[idx]}


class _InMemoryBoundaryData(pl.LightningDataModule):
    """Latents ``[N, d]`` and labels ``[R, N]`` already in memory, split into train/val."""

    def __init__(self, x: Tensor, y: Tensor, train: Tensor, val: Tensor, batch_size: int | None,
                 space: str, seed: int = 0) -> None:
        super().__init__()
        self.latent_dim = x.shape[1]
        self.num_references = y.shape[0]
        self.space = space
        y_nr = y.T.contiguous()  # [N, R]: one latent's labels for every reference
        self._train = _LatentLabelBatches(x[train], y_nr[train])
        self._val = _LatentLabelBatches(x[val], y_nr[val])
        self.batch_size = batch_size
        self.seed = seed

    def _loader(self, ds: _LatentLabelBatches, shuffle: bool) -> DataLoader:
        bs = self.batch_size or len(ds)
        sampler = (
            RandomSampler(ds, generator=torch.Generator().manual_seed(self.seed))
            if shuffle and bs < len(ds) else SequentialSampler(ds)
        )
        return DataLoader(ds, batch_size=None, sampler=BatchSampler(sampler, bs, drop_last=False))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._val, shuffle=False)


class TorchLinearSVM(BoundaryLearner):
    """All R boundaries as one batched linear SVM (the LinearSVC objective), one Lightning fit.

    Latents are split once (``val_fraction`` held out, seeded) for every reference; the
    validation balanced accuracy and AUC are measured on that split after the last
    epoch. ``batch_size=None`` trains full-batch (L-BFGS); set a batch size and
    ``optimizer="adam"`` when latents x references do not fit in memory at once.
    ``devices`` defaults to 1: this learner runs in-process, not as a multi-GPU job.
    """

    def __init__(
        self,
        C: float = 1.0,
        optimizer: str = "lbfgs",
        lr: float = 1.0,
        max_epochs: int = 1,
        lbfgs_max_iter: int = 50,
        lbfgs_tolerance: float = 1e-4,
        batch_size: int | None = None,
        standardize: bool = True,
        class_weight: str | None = None,
        init: str = "ridge",
        accelerator: str = "auto",
        devices: int | str = 1,
        val_fraction: float = 0.3,
        seed: int = 0,
        enable_progress_bar: bool = False,
        quiet: bool = True,
    ) -> None:
        self.module_args = dict(C=C, optimizer=optimizer, lr=lr, lbfgs_max_iter=lbfgs_max_iter,
                                lbfgs_tolerance=lbfgs_tolerance,
                                standardize=standardize, class_weight=class_weight, init=init)
        BoundaryFitModule(**self.module_args)  # validate the arguments now, not after loading data
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.accelerator = accelerator
        self.devices = devices
        self.val_fraction = val_fraction
        self.seed = seed
        self.enable_progress_bar = enable_progress_bar
        self.quiet = quiet
        self.module: BoundaryFitModule | None = None

    def fit(self, x: Tensor, y: Tensor, space: str = "w") -> Boundaries:
        x, y = check_boundary_inputs(x, y)
        train, val = latent_split(x.shape[0], self.val_fraction, self.seed)
        dm = _InMemoryBoundaryData(x, y, train, val, self.batch_size, space, self.seed)
        module = BoundaryFitModule(space=space, **self.module_args)
        with _quiet_lightning(self.quiet):
            trainer = pl.Trainer(
                max_epochs=self.max_epochs,
                accelerator=self.accelerator,
                devices=self.devices,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=self.enable_progress_bar,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                check_val_every_n_epoch=self.max_epochs,  # validate once, after the last epoch
            )
            trainer.fit(module, datamodule=dm)
        self.module = module
        out = module.boundaries(space)
        out.meta.update(learner=type(self).__name__, max_epochs=self.max_epochs, val_fraction=self.val_fraction,
                        seed=self.seed)
        return out


class _quiet_lightning:
    """Silence Lightning's banners ("GPU available ...", tips) for an in-process fit."""

    _names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")

    def __init__(self, active: bool) -> None:
        self.active = active
        self.levels: dict[str, int] = {}
        self._warnings = warnings.catch_warnings()

    def __enter__(self) -> None:
        if self.active:
            for n in self._names:
                lg = logging.getLogger(n)
                self.levels[n] = lg.level
                lg.setLevel(logging.ERROR)
            self._warnings.__enter__()
            warnings.filterwarnings("ignore", module=r"lightning\..*")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")

    def __exit__(self, *exc) -> None:
        for n, level in self.levels.items():
            logging.getLogger(n).setLevel(level)
        if self.active:
            self._warnings.__exit__(*exc)
