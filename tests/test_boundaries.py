"""Boundary learners: separable data, raw-space mapping, unit normals, Lightning module, save/load."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from exface.boundaries import (
    BatchedLinearSVM,
    BoundaryFitModule,
    Boundaries,
    LinearSVCBoundary,
    LogisticBoundary,
    RidgeBoundary,
    TorchLinearSVM,
)
from exface.boundaries.metrics import balanced_accuracy, roc_auc
from exface.boundaries.sklearn_learners import hyperplanes_to_raw
from exface.boundaries.torch_svm import _InMemoryBoundaryData
from exface.registry import get_part


def _separable(n: int = 400, d: int = 6, r: int = 3, seed: int = 0):
    """Latents with per-dimension offsets/scales (so raw != scaled space) and R linear labelings
    with a margin; a few latents per reference are ignored (-1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 4.0, d) + torch.linspace(-3.0, 5.0, d)
    normals = torch.nn.functional.normalize(torch.randn(r, d, generator=g), dim=1)
    dist = x @ normals.T
    dist = dist - dist.median(0).values
    keep = dist.abs() > 0.3  # margin
    y = (dist > 0).to(torch.int8).T.contiguous()
    y[~keep.T] = -1
    return x, y, normals


LEARNERS = [
    lambda: LinearSVCBoundary(C=100.0),
    lambda: LinearSVCBoundary(C=100.0, minmax_scale=True, balanced_split=True),
    lambda: LogisticBoundary(C=100.0),
    lambda: TorchLinearSVM(C=100.0),
    lambda: TorchLinearSVM(C=100.0, optimizer="adam", lr=0.05, max_epochs=150, batch_size=128),
]


@pytest.mark.parametrize("make", LEARNERS, ids=["svc", "svc-exfacegan", "logistic", "torch-lbfgs", "torch-adam"])
def test_learners_separate_linearly_separable_data(make):
    x, y, normals = _separable()
    b = make().fit(x, y, "z")
    assert isinstance(b, Boundaries) and len(b) == 3 and b.space == "z"
    torch.testing.assert_close(b.normals.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert (b.val_balanced_accuracy > 0.97).all(), b.val_balanced_accuracy
    assert (b.val_auc > 0.99).all(), b.val_auc
    # the learned normals point along the true ones (sign: positives on the + side)
    assert ((b.normals * normals).sum(1) > 0.9).all()
    # and classify the raw latents themselves: signed distance sign == label
    pred = (b.signed_distance(x) > 0).T
    valid = y >= 0
    acc = (pred[valid] == (y[valid] == 1)).float().mean()
    assert acc > 0.97


def test_minmax_mapping_matches_sklearn_decision_function_on_scaled_inputs():
    """A hyperplane fitted on x' = scale * x + shift, folded back, gives the same signs in raw space
    (and the same distances up to the normalization factor)."""
    from sklearn.preprocessing import MinMaxScaler
    from sklearn.svm import LinearSVC

    x, y, _ = _separable(n=300, d=5, r=1, seed=3)
    y0 = y[0]
    ok = y0 >= 0
    scaler = MinMaxScaler(feature_range=(-1, 1)).fit(x.numpy())
    xs = scaler.transform(x.numpy())
    clf = LinearSVC(C=0.5, dual=False).fit(xs[ok.numpy()], y0[ok].numpy())
    n, b = hyperplanes_to_raw(
        torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_),
        torch.from_numpy(scaler.scale_), torch.from_numpy(scaler.min_),
    )
    raw = (x.double() @ n[0].double() + b[0].double()).numpy()
    dec = clf.decision_function(xs)
    assert (np.sign(raw) == np.sign(dec)).all()
    np.testing.assert_allclose(raw * np.linalg.norm(clf.coef_ * scaler.scale_), dec, rtol=1e-4, atol=1e-4)


def test_linearsvc_exfacegan_recipe_equals_sklearn_on_scaled_space():
    """LinearSVCBoundary(minmax_scale, balanced_split) == LinearSVC on MinMax(-1, 1) inputs, mapped back."""
    from sklearn.svm import LinearSVC

    x, y, _ = _separable(n=300, d=5, r=2, seed=4)
    b = LinearSVCBoundary(C=1.0, minmax_scale=True, balanced_split=True, seed=7).fit(x, y, "w")
    lo, hi = x.min(0).values.double(), x.max(0).values.double()
    xs = (2 * (x.double() - lo) / (hi - lo) - 1).numpy()
    for r in range(2):
        yr = y[r].numpy()
        # the learner's own balanced split for reference r
        rng = np.random.default_rng([7, r])
        pos, neg = rng.permutation(np.flatnonzero(yr == 1)), rng.permutation(np.flatnonzero(yr == 0))
        k = min(len(pos), len(neg))
        n_tr = int(k * 0.7)
        tr = np.concatenate([pos[:n_tr], neg[:n_tr]])
        clf = LinearSVC(C=1.0, dual=False).fit(xs[tr], yr[tr])
        dec = clf.decision_function(xs)
        raw = b.signed_distance(x.double(), r).numpy()
        assert (np.sign(raw) == np.sign(dec)).all()


def test_torch_svm_matches_linearsvc_objective_optimum():
    """Same latents, labels and split: the batched SVM reaches LinearSVC's solution."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(600, 8, generator=g)
    w_true = torch.randn(4, 8, generator=g)
    noisy = x @ w_true.T + 0.8 * torch.randn(600, 4, generator=g)  # not separable: hinge is active
    y = (noisy > 0).to(torch.int8).T.contiguous()
    tb = TorchLinearSVM(C=1.0, standardize=False).fit(x, y, "z")
    sb = LinearSVCBoundary(C=1.0).fit(x, y, "z")
    cos = (tb.normals * sb.normals).sum(1)
    assert (cos > 0.999).all(), cos
    assert (tb.val_balanced_accuracy - sb.val_balanced_accuracy).abs().max() < 0.01


def test_manual_gradient_equals_autograd():
    g = torch.Generator().manual_seed(6)
    svm = BatchedLinearSVM(5, 7)
    with torch.no_grad():
        svm.weight.normal_(generator=g)
        svm.bias.normal_(generator=g)
    x = torch.randn(40, 7, generator=g)
    y = torch.randint(-1, 2, (40, 5), generator=g).to(torch.int8)
    s, c = BatchedLinearSVM.targets(y, torch.rand(2, 5, generator=g))
    reg = torch.rand(5, generator=g)
    loss, gw, gb = svm.loss_and_grad(x, s, c, reg)
    ref = svm.objective(x, s, c, reg)
    ref.sum().backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(gw, svm.weight.grad)
    torch.testing.assert_close(gb, svm.bias.grad)


def test_boundary_fit_module_fast_dev_run_and_save(tmp_path):
    x, y, _ = _separable(n=200, d=4, r=3)
    dm = _InMemoryBoundaryData(x, y, torch.arange(140), torch.arange(140, 200), batch_size=64, space="w")
    out = tmp_path / "sub" / "boundaries.pt"
    module = BoundaryFitModule(C=10.0, optimizer="adam", lr=0.05, save_path=str(out))
    trainer = pl.Trainer(fast_dev_run=True, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=dm)
    assert module.svm.weight.shape == (3, 4)
    assert module.val_balanced_accuracy is not None and module.val_balanced_accuracy.shape == (3,)
    assert "val/balanced_accuracy" in trainer.callback_metrics
    loaded = Boundaries.load(out)
    assert loaded.space == "w" and loaded.normals.shape == (3, 4)
    torch.testing.assert_close(loaded.normals.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(loaded.normals, module.boundaries().normals)


def test_boundary_fit_module_needs_datamodule_attributes():
    class NoDims(pl.LightningDataModule):
        def train_dataloader(self):
            return [{"x": torch.zeros(2, 3), "y": torch.zeros(2, 1, dtype=torch.int8)}]

    trainer = pl.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, accelerator="cpu")
    with pytest.raises(ValueError, match="latent_dim"):
        trainer.fit(BoundaryFitModule(), datamodule=NoDims())


def test_boundaries_save_load_roundtrip(tmp_path):
    x, y, _ = _separable(n=200, d=4, r=2)
    b = LinearSVCBoundary().fit(x, y, "w")
    b.save(tmp_path / "b.pt")
    c = Boundaries.load(tmp_path / "b.pt")
    torch.testing.assert_close(c.normals, b.normals)
    torch.testing.assert_close(c.offsets, b.offsets)
    torch.testing.assert_close(c.val_auc, b.val_auc)
    assert c.space == "w" and c.meta["learner"] == "LinearSVCBoundary"
    torch.testing.assert_close(c.signed_distance(x), b.signed_distance(x))


def test_learners_are_registered_and_reject_bad_labels():
    for name in ("LinearSVCBoundary", "LogisticBoundary", "TorchLinearSVM"):
        assert get_part("boundaries", name).__name__ == name
    x = torch.randn(20, 3)
    with pytest.raises(ValueError, match=r"\[R, N\]"):
        LinearSVCBoundary().fit(x, torch.zeros(20, 2, dtype=torch.int8))
    with pytest.raises(ValueError, match="1 \\(positive\\)"):
        LinearSVCBoundary().fit(x, torch.full((1, 20), 2, dtype=torch.int8))
    with pytest.raises(ValueError, match="positive"):
        TorchLinearSVM().fit(x, torch.zeros(1, 20, dtype=torch.int8))
    with pytest.raises(ValueError, match="optimizer"):
        TorchLinearSVM(optimizer="sgd")


def test_metrics_match_sklearn_with_ties_and_ignored_labels():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    g = torch.Generator().manual_seed(7)
    scores = torch.randn(6, 80, generator=g).round(decimals=1)
    labels = torch.randint(-1, 2, (6, 80), generator=g).to(torch.int8)
    auc = roc_auc(scores, labels, chunk_rows=4)
    ba = balanced_accuracy(scores, labels)
    for r in range(6):
        m = (labels[r] >= 0).numpy()
        yr, sr = labels[r].numpy()[m], scores[r].numpy()[m]
        assert auc[r].item() == pytest.approx(roc_auc_score(yr, sr), abs=1e-6)
        assert ba[r].item() == pytest.approx(balanced_accuracy_score(yr, (sr > 0).astype(int)), abs=1e-6)
    one_class = torch.zeros(1, 10, dtype=torch.int8)
    assert torch.isnan(roc_auc(torch.randn(1, 10), one_class)).all()


@pytest.mark.parametrize("n_ignored", [0, 1, 3, 200])
def test_ridge_equals_sklearn_ridge_per_reference_on_its_valid_latents(n_ignored):
    """One shared solve, the Woodbury downdate (few ignored latents) and a reference's own
    Gram (many) all equal sklearn Ridge fitted on that reference's valid latents alone."""
    from sklearn.linear_model import Ridge

    from exface.boundaries.ridge import ridge_solve

    g = torch.Generator().manual_seed(n_ignored)
    x = torch.randn(500, 7, generator=g) * 2 + 1
    y = (torch.rand(4, 500, generator=g) > 0.4).to(torch.int8)
    y[1, torch.randperm(500, generator=g)[:n_ignored]] = -1
    y[3, :n_ignored] = -1
    w, b = ridge_solve(x, y, alpha=2.5)
    for r in range(4):
        keep = (y[r] >= 0).numpy()
        ref = Ridge(alpha=2.5).fit(x.numpy()[keep].astype(np.float64), np.where(y[r].numpy()[keep] == 1, 1.0, -1.0))
        np.testing.assert_allclose(w[r].numpy(), ref.coef_, rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(b[r].item(), ref.intercept_, rtol=2e-5, atol=1e-7)


def test_ridge_boundary_classifies_separable_data():
    # least squares is not max-margin, so its normals need not align with the true ones
    x, y, _ = _separable()
    b = RidgeBoundary(alpha=1e-3).fit(x, y, "z")
    torch.testing.assert_close(b.normals.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert (b.val_balanced_accuracy > 0.9).all() and (b.val_auc > 0.97).all(), (b.val_balanced_accuracy, b.val_auc)
    assert b.meta["learner"] == "RidgeBoundary"


def test_ridge_boundary_is_registered_and_validated():
    assert get_part("boundaries", "RidgeBoundary") is RidgeBoundary
    with pytest.raises(ValueError, match="alpha"):
        RidgeBoundary(alpha=-1.0)
    x, y, _ = _separable()
    y[0, :] = 1
    with pytest.raises(ValueError, match="no positive or no negative"):
        RidgeBoundary().fit(x, y)


def test_lbfgs_tolerance_reaches_the_optimizer_and_loose_stops_earlier():
    from exface.boundaries.torch_svm import RowwiseLBFGS

    m = BoundaryFitModule(lbfgs_tolerance=3e-3)
    m.configure_svm(2, 4)
    opt = m.configure_optimizers()
    assert isinstance(opt, RowwiseLBFGS) and opt.param_groups[0]["tolerance_change"] == 3e-3
    x, y, _ = _separable()
    loose = TorchLinearSVM(C=1.0, lbfgs_tolerance=1e-1).fit(x, y, "z")
    tight = TorchLinearSVM(C=1.0, lbfgs_tolerance=1e-7).fit(x, y, "z")
    assert (tight.val_balanced_accuracy > 0.95).all()
    assert ((loose.normals * tight.normals).sum(1) > 0.9).all()
