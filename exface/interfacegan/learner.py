"""InterFaceGAN's attribute boundary: a linear SVM between the highest- and lowest-scored latents.

The rule (Shen et al. 2020; genforce/interfacegan ``utils/manipulator.py: train_boundary``),
per attribute:

1. drop latents whose score equals ``invalid_value`` (and, in exface, NaN scores: a pose
   fit that failed gives NaN, and NaN has no place in a sort);
2. sort by score; the top ``chosen_num`` are positives, the bottom ``chosen_num``
   negatives, with ``chosen_num = int(N * chosen_num_or_ratio)`` for a ratio in (0, 1] or
   ``int(chosen_num_or_ratio)`` for a count, and at most ``N // 2``;
3. each side is shuffled and split ``split_ratio`` train / rest validation;
4. ``sklearn.svm.SVC(kernel="linear", C=1)`` on the training latents; the boundary is the
   unit normal of its hyperplane;
5. validation accuracy, and the accuracy on the remaining (middle) latents labelled by
   whether their score is above ``(max + min) / 2``, are logged.

Deviations: the split is seeded per attribute (``seed``) instead of numpy's global state;
the SVM intercept is kept (``Boundaries.offsets``, folded to the unit normal) so that a
signed distance is the distance to the learned hyperplane, not to a parallel one through
the origin. One fit learns every requested attribute; the latents may be z, w or w+ (w+
flattened to ``num_ws * w_dim``, or one boundary per layer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from exface.boundaries.base import Boundaries, BoundaryLearner, check_boundary_inputs, hyperplanes_to_raw
from exface.boundaries.metrics import balanced_accuracy, roc_auc

__all__ = ["InterFaceGANBoundary", "ScoreSplit", "score_split"]

log = logging.getLogger(__name__)


@dataclass
class ScoreSplit:
    """Bank indices of one attribute's InterFaceGAN split (see :func:`score_split`)."""

    train_pos: Tensor
    train_neg: Tensor
    val_pos: Tensor
    val_neg: Tensor
    remaining: Tensor
    remaining_label: Tensor
    num_valid: int
    chosen_num: int


def _chosen_num(n: int, chosen_num_or_ratio: float) -> int:
    if chosen_num_or_ratio <= 0:
        raise ValueError(f"chosen_num_or_ratio must be > 0 (a fraction in (0, 1] or a count), got {chosen_num_or_ratio}")
    k = int(n * chosen_num_or_ratio) if chosen_num_or_ratio <= 1 else int(chosen_num_or_ratio)
    return min(k, n // 2)


def score_split(scores: Tensor, chosen_num_or_ratio: float = 0.02, split_ratio: float = 0.7,
                invalid_value: float | None = None, seed: int = 0, name: str = "attribute") -> ScoreSplit:
    """InterFaceGAN's positives/negatives of one attribute from its scores ``[N]``."""
    if not 0.0 < split_ratio <= 1.0:
        raise ValueError(f"split_ratio must be in (0, 1], got {split_ratio}")
    s = torch.as_tensor(scores).double().reshape(-1)
    valid = torch.isfinite(s)
    if invalid_value is not None:
        valid &= s != float(invalid_value)
    idx = valid.nonzero().flatten()
    order = torch.argsort(s[idx], descending=True, stable=True)
    ranked = idx[order]
    n = len(ranked)
    k = _chosen_num(n, chosen_num_or_ratio)
    n_train = int(k * split_ratio)
    if n_train < 1:
        raise ValueError(
            f"{name}: {n} valid scores and chosen_num_or_ratio={chosen_num_or_ratio} give {k} latents per side, "
            f"too few to train on; use a larger bank or a larger chosen_num_or_ratio"
        )
    pos, neg = ranked[:k], ranked[n - k:]
    rng = np.random.default_rng(seed)
    pp, pn = torch.from_numpy(rng.permutation(k)), torch.from_numpy(rng.permutation(k))
    remaining = ranked[k: n - k]
    decision = (s[ranked[0]] + s[ranked[-1]]) / 2
    return ScoreSplit(
        train_pos=pos[pp[:n_train]], train_neg=neg[pn[:n_train]], val_pos=pos[pp[n_train:]], val_neg=neg[pn[n_train:]],
        remaining=remaining, remaining_label=(s[remaining] >= decision).to(torch.int8), num_valid=n, chosen_num=k,
    )


class InterFaceGANBoundary(BoundaryLearner):
    """InterFaceGAN's attribute boundaries: linear SVC on the top/bottom scored latents.

    :meth:`fit_scores` applies the whole rule to attribute scores (the usual entry);
    :meth:`fit` is the learner contract for labels that are already made (1 / 0 / -1
    ignore), split ``split_ratio`` per side the same way.
    """

    def __init__(self, chosen_num_or_ratio: float = 0.02, split_ratio: float = 0.7,
                 invalid_value: float | None = None, C: float = 1.0, seed: int = 0) -> None:
        if C <= 0:
            raise ValueError(f"C must be > 0, got {C}")
        _chosen_num(100, chosen_num_or_ratio)  # validates the value now
        if not 0.0 < split_ratio <= 1.0:
            raise ValueError(f"split_ratio must be in (0, 1], got {split_ratio}")
        self.chosen_num_or_ratio = chosen_num_or_ratio
        self.split_ratio = split_ratio
        self.invalid_value = invalid_value
        self.C = C
        self.seed = seed

    def _meta(self) -> dict:
        return {"learner": type(self).__name__, "chosen_num_or_ratio": float(self.chosen_num_or_ratio),
                "split_ratio": float(self.split_ratio), "invalid_value": self.invalid_value, "C": float(self.C),
                "seed": int(self.seed)}

    def _svc(self, x: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, float, object]:
        from sklearn.svm import SVC

        data = np.concatenate([x[pos], x[neg]])
        label = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
        clf = SVC(kernel="linear", C=self.C).fit(data, label)
        return clf.coef_.reshape(-1).astype(np.float64), float(clf.intercept_[0]), clf

    def _fit_rows(self, x: Tensor, splits: list[ScoreSplit]) -> tuple[Tensor, Tensor, Tensor, Tensor, list, list]:
        x_np = x.double().numpy()
        weights, biases, ba, auc, val_acc, rem_acc = [], [], [], [], [], []
        for sp in splits:
            w, b, clf = self._svc(x_np, sp.train_pos.numpy(), sp.train_neg.numpy())
            weights.append(w)
            biases.append(b)
            val = torch.cat([sp.val_pos, sp.val_neg]).numpy()
            lab = torch.cat([torch.ones(len(sp.val_pos)), torch.zeros(len(sp.val_neg))]).to(torch.int8)
            if len(val):
                dv = torch.from_numpy(clf.decision_function(x_np[val])).float()
                ba.append(balanced_accuracy(dv[None], lab[None])[0])
                auc.append(roc_auc(dv[None], lab[None])[0])
                val_acc.append(float(((dv > 0).to(torch.int8) == lab).float().mean()))
            else:
                ba.append(torch.tensor(float("nan")))
                auc.append(torch.tensor(float("nan")))
                val_acc.append(float("nan"))
            if len(sp.remaining):
                pred = clf.predict(x_np[sp.remaining.numpy()])
                rem_acc.append(float((pred == sp.remaining_label.numpy()).mean()))
            else:
                rem_acc.append(float("nan"))
        normals, offsets = hyperplanes_to_raw(torch.from_numpy(np.stack(weights)), torch.tensor(biases, dtype=torch.float64))
        return normals, offsets, torch.stack(ba), torch.stack(auc), val_acc, rem_acc

    def fit(self, x: Tensor, y: Tensor, space: str = "w") -> Boundaries:
        """Boundaries from labels ``[R, N]`` (1 positive, 0 negative, -1 ignore), split per side."""
        x, y = check_boundary_inputs(x, y)
        splits = []
        for r in range(y.shape[0]):
            rng = np.random.default_rng([self.seed, r])
            sides = []
            for value in (1, 0):
                idx = (y[r] == value).nonzero().flatten()
                idx = idx[torch.from_numpy(rng.permutation(len(idx)))]
                n_train = int(len(idx) * self.split_ratio)
                if n_train < 1:
                    raise ValueError(f"reference {r} has {len(idx)} latents labelled {value}; every row needs both labels")
                sides.append((idx[:n_train], idx[n_train:]))
            (tp, vp), (tn, vn) = sides
            empty = torch.zeros(0, dtype=torch.int64)
            splits.append(ScoreSplit(tp, tn, vp, vn, empty, empty.to(torch.int8), int((y[r] >= 0).sum()), len(sides[0][0])))
        normals, offsets, ba, auc, val_acc, _ = self._fit_rows(x, splits)
        return Boundaries(normals, offsets, space, ba, auc, {**self._meta(), "val_accuracy": val_acc})

    def fit_scores(self, x: Tensor, scores: dict[str, Tensor], space: str, names: Sequence[str] | None = None,
                   layers: Sequence[int | None] | None = None) -> Boundaries:
        """One boundary per attribute of ``scores`` (``{name: [N]}``) over latents ``x [N, d]``.

        ``names`` orders the attributes (default: the dict's order). ``layers`` records, per
        boundary, the w+ layer it belongs to (None = the whole latent); it only documents.
        """
        x = torch.as_tensor(x)
        if x.ndim != 2 or not x.is_floating_point():
            raise ValueError(f"latents must be a float [N, d] array, got shape {tuple(x.shape)}")
        names = list(scores) if names is None else list(names)
        splits = []
        for r, name in enumerate(names):
            s = torch.as_tensor(scores[name]).reshape(-1)
            if len(s) != x.shape[0]:
                raise ValueError(f"scores of {name!r} have {len(s)} values for {x.shape[0]} latents")
            splits.append(score_split(s, self.chosen_num_or_ratio, self.split_ratio, self.invalid_value,
                                      seed=self.seed + r, name=name))
        normals, offsets, ba, auc, val_acc, rem_acc = self._fit_rows(x.float(), splits)
        for name, sp, va, ra in zip(names, splits, val_acc, rem_acc):
            log.info("%s: %d valid, %d per side (%d train), val accuracy %.4f, remaining accuracy %.4f",
                     name, sp.num_valid, sp.chosen_num, len(sp.train_pos), va, ra)
        meta = {
            **self._meta(), "attribute_names": names, "layers": list(layers) if layers is not None else [None] * len(names),
            "val_accuracy": val_acc, "remaining_accuracy": rem_acc,
            "num_valid": [sp.num_valid for sp in splits], "chosen_num": [sp.chosen_num for sp in splits],
            "num_train_per_side": [len(sp.train_pos) for sp in splits],
        }
        return Boundaries(normals, offsets, space, ba, auc, meta)
