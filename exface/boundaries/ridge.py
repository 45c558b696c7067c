"""All R identity boundaries in closed form: ridge least squares on ±1 targets.

For reference r with valid training latents ``V_r`` (label != -1) and targets
``s = +1`` (positive) / ``-1`` (negative), :class:`RidgeBoundary` minimizes::

    sum_{i in V_r} (s_ri - w . x_i - b)^2 + alpha ||w||^2

(the intercept is not penalized, as in sklearn's ``Ridge``/``RidgeClassifier``). Its
normal equations share one ``(d+1) x (d+1)`` Gram matrix of the bank among all
references, so one Cholesky factorization solves them all (``R`` right-hand sides). A
reference that ignores some training latents (leave-one-out, ``balance``) has that
Gram minus those latents' outer products: with a few of them this is a low-rank
downdate solved exactly by the Woodbury identity from the shared factor; with many, its
own Gram is formed and solved. So every reference gets its exact ridge solution, unlike
a one-call multi-output ``sklearn.linear_model.Ridge`` on targets with 0 for ignored
latents (which still fits those latents to 0).

This is the fastest boundary learner and the time floor the batched SVM
(:class:`~exface.boundaries.torch_svm.TorchLinearSVM`) is measured against; the SVM's
L-BFGS starts from the same closed form (on standardized latents, ``alpha = 1 / (2C)``).
"""

from __future__ import annotations

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

__all__ = ["RidgeBoundary", "ridge_solve"]

_WOODBURY_MAX = 64  # ignored training latents per reference up to which the downdate is used


def ridge_solve(x: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Exact ridge ``(w [R, d], b [R])`` for latents ``x [n, d]`` and labels ``y [R, n]``.

    Labels 1 / 0 are targets +1 / -1; -1 leaves that latent out of that reference's fit.
    The Gram and the solves are float64 (a float32 Gram loses digits); ``X^T s`` is a
    float32 GEMM (solutions within ~1e-6 relative of float64).
    """
    n, d = x.shape
    xa = torch.cat([x.double(), torch.ones(n, 1, dtype=torch.float64)], 1)  # [n, d+1]
    s = (y == 1).float() - (y == 0).float()  # [R, n], 0 where ignored
    gram = xa.T @ xa
    gram[:d, :d] += alpha * torch.eye(d, dtype=torch.float64)
    # X^T s in float32 (sums of +-x, relative error ~1e-7; half the time of float64)
    rhs = (xa.float().T @ s.T).double()  # [d+1, R]
    chol = torch.linalg.cholesky(gram)
    sol = torch.cholesky_solve(rhs, chol)  # [d+1, R]: exact for references without ignores
    ignored = y == -1
    counts = ignored.sum(1)
    one = torch.nonzero(counts == 1).flatten()
    if len(one):  # one ignored latent (leave-one-out): rank-1 downdates, all at once
        u = xa[ignored[one].to(torch.uint8).argmax(1)]  # [m, d+1]
        gu = torch.cholesky_solve(u.T.contiguous(), chol)  # [d+1, m]
        denom = 1.0 - (u * gu.T).sum(1)
        sol[:, one] += gu * ((u * sol[:, one].T).sum(1) / denom)
    for r in torch.nonzero(counts > 1).flatten().tolist():
        u = xa[ignored[r]]  # [k, d+1]: rows to remove from this reference's Gram
        if len(u) <= _WOODBURY_MAX:
            # (G - U^T U)^-1 b = x0 + G^-1 U^T (I - U G^-1 U^T)^-1 U x0, with x0 = G^-1 b
            gu = torch.cholesky_solve(u.T, chol)  # [d+1, k]
            small = torch.eye(len(u), dtype=torch.float64) - u @ gu
            sol[:, r] += gu @ torch.linalg.solve(small, u @ sol[:, r])
        else:
            g_r = gram - u.T @ u
            sol[:, r] = torch.linalg.solve(g_r, rhs[:, r])
    return sol[:d].T.contiguous(), sol[d].contiguous()


class RidgeBoundary(BoundaryLearner):
    """Closed-form least-squares boundaries for every reference at once (see module doc).

    Args:
        alpha: L2 penalty on the normal (sklearn ``Ridge(alpha)``; on standardized
            latents when ``standardize``).
        standardize: fit on per-dimension standardized latents (train-split statistics);
            boundaries are returned in raw latent space either way. ``False`` gives
            sklearn ``Ridge`` on raw latents exactly.
        val_fraction, seed: the held-out split (the same as the other learners').
    """

    def __init__(self, alpha: float = 1.0, standardize: bool = True, val_fraction: float = 0.3, seed: int = 0) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.standardize = standardize
        self.val_fraction = val_fraction
        self.seed = seed

    def fit(self, x: Tensor, y: Tensor, space: str = "w") -> Boundaries:
        x, y = check_boundary_inputs(x, y)
        train, val = latent_split(x.shape[0], self.val_fraction, self.seed)
        y_tr = y[:, train]
        n_pos, n_neg = (y_tr == 1).sum(1), (y_tr == 0).sum(1)
        empty = ((n_pos == 0) | (n_neg == 0)).nonzero().flatten()
        if len(empty):
            raise ValueError(
                f"references {empty[:5].tolist()} have no positive or no negative training latents; "
                "every reference needs both (check the labels or the split)"
            )
        x_tr = x[train].double()
        if self.standardize:
            mean = x_tr.mean(0)
            std = x_tr.std(0, unbiased=False)
            std = torch.where(std > 1e-12, std, torch.ones_like(std))
        else:
            mean = torch.zeros(x.shape[1], dtype=torch.float64)
            std = torch.ones(x.shape[1], dtype=torch.float64)
        w, b = ridge_solve((x_tr - mean) / std, y_tr, self.alpha)
        normals, offsets = hyperplanes_to_raw(w, b, 1.0 / std, -mean / std)
        scores = (x[val] @ normals.T + offsets).T.contiguous()  # [R, n_val], raw-space distances
        y_val = y[:, val]
        meta = {"learner": type(self).__name__, "alpha": float(self.alpha), "standardize": bool(self.standardize),
                "val_fraction": float(self.val_fraction), "seed": int(self.seed)}
        return Boundaries(normals, offsets, space, balanced_accuracy(scores, y_val).float(),
                          roc_auc(scores, y_val).float(), meta)
