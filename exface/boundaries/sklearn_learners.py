"""Boundary learners that loop a scikit-learn linear classifier over references.

:class:`LinearSVCBoundary` with ``minmax_scale=True, balanced_split=True`` is ExFaceGAN's
recipe (``train_boundaries.py``): latents min-max scaled to [-1, 1] (scaler fitted on
the whole bank), for each reference an equal number of positive and negative latents
split 70/30 into train/validation, ``LinearSVC(dual=False)``. ExFaceGAN keeps the normal
in the *scaled* space (``coef_ / |coef_|``) and walks raw w along it, although it is not
the hyperplane's normal in raw space; exface folds the hyperplane back to raw latents
before normalizing (``normal="raw"``, the default; see :func:`hyperplanes_to_raw`).
``normal="scaled"`` reproduces theirs: the unit scaled-space coefficients are the normal
of raw w, and the offset puts the zero of the signed distance at the fitted hyperplane's
point closest to the origin (their code has no offset: it only walks from references).
Either way ``val_balanced_accuracy`` / ``val_auc`` score the boundary as saved (its signed
distance of the raw held-out latents), not the classifier's scaled-space decision function.
In a recipe: ``model: {class_path: BoundaryLearnerModule, init_args: {learner:
{class_path: LinearSVCBoundary, init_args: {minmax_scale: true, balanced_split: true,
normal: scaled}}}}``. :class:`LogisticBoundary` is the same loop with logistic regression.

These are the reference implementations (one sklearn fit per reference, ~20-150 ms
each); :class:`~exface.boundaries.torch_svm.TorchLinearSVM` fits all references at once.

The module also holds the helpers every learner shares: label checks, the seeded
latent split and the affine fold-back to raw space.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from exface.boundaries.base import (
    Boundaries,
    BoundaryLearner,
    check_boundary_inputs,
    hyperplanes_to_raw,
    latent_split,
)
from exface.boundaries.metrics import balanced_accuracy, roc_auc

__all__ = ["LinearSVCBoundary", "LogisticBoundary"]


class _SklearnLoopBoundary(BoundaryLearner):
    """Shared loop: one sklearn linear classifier per reference."""

    def __init__(
        self,
        C: float = 1.0,
        minmax_scale: bool = False,
        balanced_split: bool = False,
        val_fraction: float = 0.3,
        seed: int = 0,
        max_iter: int = 1000,
        class_weight: str | None = None,
        n_jobs: int = 1,
        normal: Literal["raw", "scaled"] = "raw",
    ) -> None:
        if C <= 0:
            raise ValueError(f"C must be > 0, got {C}")
        if normal not in ("raw", "scaled"):
            raise ValueError(f"normal must be 'raw' (exface's fold-back) or 'scaled' (ExFaceGAN's), got {normal!r}")
        self.normal = normal
        self.C = C
        self.minmax_scale = minmax_scale
        self.balanced_split = balanced_split
        self.val_fraction = val_fraction
        self.seed = seed
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.n_jobs = n_jobs

    @abstractmethod
    def _estimator(self):
        """A fresh sklearn linear classifier (``coef_``, ``intercept_``, ``decision_function``)."""

    def _scaling(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.minmax_scale:
            return np.ones(x.shape[1]), np.zeros(x.shape[1])
        lo, hi = x.min(0), x.max(0)
        rng = hi - lo
        scale = np.where(rng > 0, 2.0 / np.where(rng > 0, rng, 1.0), 1.0)  # constant column: as MinMaxScaler
        return scale, -1.0 - lo * scale

    def _indices(self, yr: np.ndarray, r: int, train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.balanced_split:
            return train[yr[train] >= 0], val[yr[val] >= 0]
        rng = np.random.default_rng([self.seed, r])
        pos = rng.permutation(np.flatnonzero(yr == 1))
        neg = rng.permutation(np.flatnonzero(yr == 0))
        k = min(len(pos), len(neg))
        n_tr = int(k * (1.0 - self.val_fraction))
        tr = np.concatenate([pos[:n_tr], neg[:n_tr]])
        va = np.concatenate([pos[n_tr:k], neg[n_tr:k]])
        return tr, va

    def _fit_one(self, xs: np.ndarray, yr: np.ndarray, r: int, train, val):
        tr, va = self._indices(yr, r, train, val)
        n_pos, n_neg = int((yr[tr] == 1).sum()), int((yr[tr] == 0).sum())
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                f"reference {r} has {n_pos} positive and {n_neg} negative training latents; every "
                "reference needs both (check its labels, or use a larger bank)"
            )
        est = self._estimator().fit(xs[tr], yr[tr])
        return est.coef_.reshape(-1).copy(), float(np.ravel(est.intercept_)[0]), va, yr[va]

    def fit(self, x: Tensor, y: Tensor, space: str = "w") -> Boundaries:
        x_t, y_t = check_boundary_inputs(x, y)
        x_np = x_t.double().numpy()
        y_np = y_t.numpy()
        scale, shift = self._scaling(x_np)
        xs = x_np * scale + shift
        train, val = (t.numpy() for t in latent_split(x_np.shape[0], self.val_fraction, self.seed))
        rows = range(y_np.shape[0])
        if self.n_jobs == 1:
            fits = [self._fit_one(xs, y_np[r], r, train, val) for r in rows]
        else:
            from joblib import Parallel, delayed

            fits = Parallel(n_jobs=self.n_jobs)(delayed(self._fit_one)(xs, y_np[r], r, train, val) for r in rows)
        weights = torch.from_numpy(np.stack([f[0] for f in fits]))
        biases = torch.tensor([f[1] for f in fits], dtype=torch.float64)
        normals, offsets = hyperplanes_to_raw(weights, biases, torch.from_numpy(scale), torch.from_numpy(shift))
        if self.normal == "scaled":  # ExFaceGAN: the scaled-space direction, applied to raw latents
            foot = -offsets[:, None].double() * normals.double()  # the raw hyperplane's point nearest the origin
            normals = torch.nn.functional.normalize(weights.double(), dim=1).float()
            offsets = -(normals.double() * foot).sum(1).float()
        # Validation metrics of the boundaries as saved: signed distances of the raw held-out
        # latents. With normal="scaled" the saved hyperplane is not the fitted one, so the
        # classifier's own decision_function would score a boundary that is not the one stored.
        saved = Boundaries(normals, offsets, space, torch.zeros(0), torch.zeros(0))
        ba, auc = [], []
        for r, (_, _, va, labels) in enumerate(fits):
            s = saved.signed_distance(x_t[torch.from_numpy(np.asarray(va, dtype=np.int64))], r)[None]
            lab = torch.from_numpy(np.asarray(labels, dtype=np.int8))[None]
            ba.append(balanced_accuracy(s, lab)[0])
            auc.append(roc_auc(s, lab)[0])
        meta = {
            "learner": type(self).__name__,
            "C": float(self.C),
            "minmax_scale": bool(self.minmax_scale),
            "balanced_split": bool(self.balanced_split),
            "normal": self.normal,
            "val_fraction": float(self.val_fraction),
            "seed": int(self.seed),
        }
        return Boundaries(normals, offsets, space, torch.stack(ba), torch.stack(auc), meta)


class LinearSVCBoundary(_SklearnLoopBoundary):
    """One sklearn ``LinearSVC`` (squared hinge, L2, primal) per reference; ExFaceGAN's learner.

    ``LinearSVCBoundary(minmax_scale=True, balanced_split=True)`` reproduces ExFaceGAN's
    recipe; normals are returned in raw latent space. ``dual=False`` as in ExFaceGAN
    (primal TRON, the fast choice when latents outnumber dimensions).
    """

    def __init__(self, C: float = 1.0, minmax_scale: bool = False, balanced_split: bool = False,
                 val_fraction: float = 0.3, seed: int = 0, max_iter: int = 1000,
                 class_weight: str | None = None, n_jobs: int = 1, normal: Literal["raw", "scaled"] = "raw",
                 dual: bool = False) -> None:
        super().__init__(C, minmax_scale, balanced_split, val_fraction, seed, max_iter, class_weight, n_jobs, normal)
        self.dual = dual

    def _estimator(self):
        from sklearn.svm import LinearSVC

        return LinearSVC(C=self.C, dual=self.dual, max_iter=self.max_iter, class_weight=self.class_weight)


class LogisticBoundary(_SklearnLoopBoundary):
    """One sklearn ``LogisticRegression`` (L2, lbfgs) per reference."""

    def _estimator(self):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight)
