"""Validation metrics for R boundaries at once: balanced accuracy and ROC AUC per row.

Scores and labels are ``[R, N]``: row r holds every latent's signed distance to boundary
r and its label for reference r (1 positive, 0 negative, -1 ignored). Everything is
vectorized over rows so that thousands of boundaries are scored in a few tensor ops
instead of a Python loop of sklearn calls. A row without positives or negatives gets NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["balanced_accuracy", "roc_auc", "boundary_metrics"]


def _check(scores: Tensor, labels: Tensor) -> None:
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(
            f"scores and labels must both be [R, N]; got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )


def balanced_accuracy(scores: Tensor, labels: Tensor) -> Tensor:
    """``[R]`` mean of the true-positive and true-negative rates, predicting ``score > 0``."""
    _check(scores, labels)
    pred = scores > 0
    pos = labels == 1
    neg = labels == 0
    n_pos = pos.sum(1).double()
    n_neg = neg.sum(1).double()
    tpr = (pred & pos).sum(1).double() / n_pos
    tnr = (~pred & neg).sum(1).double() / n_neg
    out = 0.5 * (tpr + tnr)
    out[(n_pos == 0) | (n_neg == 0)] = float("nan")
    return out.float()


def roc_auc(scores: Tensor, labels: Tensor, chunk_rows: int = 4096) -> Tensor:
    """``[R]`` exact ROC AUC (Mann-Whitney U with ties counted half), rows in chunks.

    Each row is sorted once; for every group of tied scores, the positives in it are
    credited with the negatives strictly below the group plus half the tied negatives.
    """
    _check(scores, labels)
    out = torch.empty(scores.shape[0], dtype=torch.float32, device=scores.device)
    for start in range(0, scores.shape[0], chunk_rows):
        out[start : start + chunk_rows] = _auc_rows(scores[start : start + chunk_rows], labels[start : start + chunk_rows])
    return out


def _auc_rows(scores: Tensor, labels: Tensor) -> Tensor:
    r, n = scores.shape
    if n == 0:
        return torch.full((r,), float("nan"), device=scores.device)
    s_sorted, order = scores.float().sort(dim=1)
    lab = labels.gather(1, order)
    pos = (lab == 1).double()
    neg = (lab == 0).double()
    new_group = torch.ones_like(lab, dtype=torch.bool)
    new_group[:, 1:] = s_sorted[:, 1:] != s_sorted[:, :-1]
    gid = new_group.flatten().long().cumsum(0) - 1  # global tie-group id, rows never share one
    n_groups = int(gid[-1]) + 1
    neg_g = torch.zeros(n_groups, dtype=torch.float64, device=scores.device).index_add_(0, gid, neg.flatten())
    pos_g = torch.zeros(n_groups, dtype=torch.float64, device=scores.device).index_add_(0, gid, pos.flatten())
    neg_before = neg_g.cumsum(0) - neg_g  # negatives in earlier groups, across rows
    row_first_group = gid.view(r, n)[:, 0]
    row_of_group = torch.repeat_interleave(
        torch.arange(r, device=scores.device), new_group.sum(1)
    )
    neg_below = neg_before - neg_before[row_first_group][row_of_group]
    credit = pos_g * (neg_below + 0.5 * neg_g)
    u = torch.zeros(r, dtype=torch.float64, device=scores.device).index_add_(0, row_of_group, credit)
    n_pos = pos.sum(1)
    n_neg = neg.sum(1)
    auc = u / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = float("nan")
    return auc.float()


def boundary_metrics(scores: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """``{"balanced_accuracy": [R], "auc": [R]}`` for scores/labels ``[R, N]``."""
    return {"balanced_accuracy": balanced_accuracy(scores, labels), "auc": roc_auc(scores, labels)}
