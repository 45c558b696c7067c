"""Margin losses (ArcFace, CosFace, combined margin) and Partial FC, single-process and distributed."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from exface.losses.margin import ArcFace, CombinedMargin, CosFace, MarginFunction
from exface.losses.partial_fc import PartialFC, exclude_partial_fc_from_ddp
from exface.registry import get_registry

DIM, CLASSES = 16, 40


def _batch(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def test_losses_are_registered():
    reg = get_registry("losses")
    assert {"ArcFace", "CosFace", "CombinedMargin", "PartialFC"} <= set(reg)


def test_arcface_without_margin_is_scaled_cosine_softmax():
    torch.manual_seed(0)
    loss = ArcFace(DIM, CLASSES, s=30.0, m=0.0)
    emb, labels = _batch()
    cos = F.normalize(emb) @ F.normalize(loss.weight).T
    assert torch.allclose(loss(emb, labels), F.cross_entropy(30.0 * cos, labels), atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: ArcFace(DIM, CLASSES, s=64.0, m=0.5),
    lambda: CosFace(DIM, CLASSES, s=64.0, m=0.4),
    lambda: CombinedMargin(DIM, CLASSES, s=64.0, m1=1.0, m2=0.3, m3=0.2),
])
def test_margin_lowers_only_the_target_logit(make):
    torch.manual_seed(0)
    loss = make()
    emb, labels = _batch()
    plain = loss.margin.s * (F.normalize(emb) @ F.normalize(loss.weight).T)
    with torch.no_grad():
        logits = loss.logits(emb, labels)
    rows = torch.arange(len(labels))
    assert (logits[rows, labels] < plain[rows, labels] - 1.0).all()
    mask = torch.ones_like(logits, dtype=torch.bool)
    mask[rows, labels] = False
    assert torch.allclose(logits[mask], plain[mask], atol=1e-4)
    assert loss(emb, labels) > F.cross_entropy(plain, labels)


def test_arcface_target_logit_values():
    """cos(theta + m) inside the valid range; continuous and decreasing across theta_b = pi - m."""
    f = MarginFunction(s=1.0, m2=0.5)
    theta = torch.tensor([0.3, 1.2, 2.0])
    assert torch.allclose(f.target_logit(torch.cos(theta)), torch.cos(theta + 0.5), atol=1e-6)
    grid = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    vals = f.target_logit(torch.cos(grid))
    assert (vals.diff() <= 1e-12).all()  # monotone in theta
    assert vals.diff().abs().max() < 1e-2  # no jump at theta_b
    assert (vals <= torch.cos(grid) + 1e-12).all()  # never a bonus
    easy = MarginFunction(s=1.0, m2=0.5, easy_margin=True)
    c = torch.tensor([-0.5, 0.5])
    assert torch.allclose(easy.target_logit(c), torch.stack([c[0], torch.cos(torch.acos(c[1]) + 0.5)]))


@pytest.mark.parametrize("make", [
    lambda: ArcFace(DIM, 3, m=0.5),
    lambda: CombinedMargin(DIM, 3, m1=1.2, m2=0.3, m3=0.1),
    lambda: CosFace(DIM, 3),
])
def test_gradients_finite_at_theta_zero_and_pi(make):
    """Embeddings exactly on (theta = 0) and opposite (theta = pi) their class centre."""
    loss = make()
    with torch.no_grad():
        loss.weight.copy_(torch.eye(3, DIM))
    emb = torch.tensor([[1.0] + [0.0] * (DIM - 1), [-1.0] + [0.0] * (DIM - 1), [-1.0 + 1e-7] + [1e-4] * (DIM - 1)],
                       requires_grad=True)
    labels = torch.tensor([0, 0, 0])
    out = loss(emb, labels)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(emb.grad).all() and torch.isfinite(loss.weight.grad).all()
    assert emb.grad[1:].abs().sum() > 0  # the far samples are still pulled


def test_gradient_is_softmax_minus_onehot_times_scale():
    """arcface_torch's formulation: d loss / d cos = s * (softmax(margin logits) - onehot) / N."""
    torch.manual_seed(0)
    f = MarginFunction(s=10.0, m2=0.5)
    cos = (torch.rand(5, 7) * 2 - 1).requires_grad_()
    labels = torch.tensor([0, 3, 6, 2, 2])
    logits = f(cos, labels)
    F.cross_entropy(logits, labels).backward()
    want = 10.0 * (logits.detach().softmax(1) - F.one_hot(labels, 7)) / 5
    assert torch.allclose(cos.grad, want, atol=1e-6)


def test_out_of_range_labels_are_a_clear_error():
    loss = ArcFace(DIM, CLASSES)
    emb, _ = _batch(2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 40\)"):
        loss(emb, torch.tensor([0, 40]))


def _copy_weight(dst, src) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)


def test_partial_fc_full_rate_equals_full_fc():
    torch.manual_seed(0)
    full = CombinedMargin(DIM, CLASSES, s=32.0, m1=1.0, m2=0.4, m3=0.1)
    pfc = PartialFC(DIM, CLASSES, sample_rate=1.0, s=32.0, m1=1.0, m2=0.4, m3=0.1)
    _copy_weight(pfc, full)
    emb, labels = _batch()
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    l1, l2 = full(e1, labels), pfc(e2, labels)
    l1.backward()
    l2.backward()
    assert torch.allclose(l1, l2, atol=1e-6)
    assert torch.allclose(e1.grad, e2.grad, atol=1e-6)
    assert torch.allclose(full.weight.grad, pfc.weight.grad, atol=1e-6)


def test_partial_fc_sampling_keeps_every_positive():
    torch.manual_seed(0)
    pfc = PartialFC(DIM, CLASSES, sample_rate=0.25)
    for seed in range(20):
        emb, labels = _batch(n=6, seed=seed)
        out = pfc(emb.requires_grad_(), labels)
        out.backward()
        sampled = pfc.last_sampled
        assert sampled.numel() == 10 and torch.isin(labels, sampled).all()
        assert torch.equal(sampled, sampled.sort().values)
        touched = pfc.weight.grad.abs().sum(1) > 0
        assert set(touched.nonzero().squeeze(1).tolist()) <= set(sampled.tolist())
        pfc.weight.grad = None
    # More positives than the sample size: exactly the positives are used.
    labels = torch.arange(12)
    pfc(torch.randn(12, DIM), labels)
    assert torch.equal(pfc.last_sampled, labels)


def test_partial_fc_sampled_loss_matches_full_fc_on_the_sampled_classes():
    """The sampled loss is the full loss restricted to the sampled centres."""
    torch.manual_seed(0)
    pfc = PartialFC(DIM, CLASSES, sample_rate=0.5, s=16.0, m2=0.3)
    emb, labels = _batch()
    loss = pfc(emb, labels)
    idx = pfc.last_sampled
    sub = ArcFace(DIM, idx.numel(), s=16.0, m=0.3)
    with torch.no_grad():
        sub.weight.copy_(pfc.weight[idx])
    assert torch.allclose(loss, sub(emb, torch.searchsorted(idx, labels)), atol=1e-6)
    pfc.eval()  # evaluation uses every centre
    full = ArcFace(DIM, CLASSES, s=16.0, m=0.3)
    _copy_weight(full, pfc)
    assert torch.allclose(pfc(emb, labels), full(emb, labels), atol=1e-6)


def test_exclude_partial_fc_from_ddp():
    root = torch.nn.Module()
    root.head = PartialFC(DIM, CLASSES)
    root.body = torch.nn.Linear(2, 2)
    assert exclude_partial_fc_from_ddp(root) == ["head.weight"]
    assert root._ddp_params_and_buffers_to_ignore == ["head.weight"]


# ---- distributed (2 gloo processes on the CPU) ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, world: int, port: int, sample_rate: float, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # Built before the process group exists (as in a LightningModule): shards on first use.
    pfc = PartialFC(DIM, CLASSES + 1, sample_rate=sample_rate, s=32.0, m2=0.4)  # 41: uneven shards
    full_weight = pfc.weight.detach().clone()
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        eager = PartialFC(DIM, CLASSES + 1)  # built after: sharded at once
        emb_all, labels_all = _batch(n=8 * world, seed=5)
        emb = emb_all[rank * 8:(rank + 1) * 8].clone().requires_grad_()
        loss = pfc(emb, labels_all[rank * 8:(rank + 1) * 8])
        loss.backward()
        assert eager.weight.shape == pfc.weight.shape == (pfc.num_local, DIM)
        out[rank] = dict(loss=loss.item(), emb_grad=emb.grad.clone(), w_grad=pfc.weight.grad.clone(),
                         start=pfc.class_start, n=pfc.num_local, full_weight=full_weight,
                         sampled=None if pfc.last_sampled is None else pfc.last_sampled.clone())
    finally:
        dist.destroy_process_group()


def _run_distributed(sample_rate: float) -> dict:
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_dist_worker, args=(2, _free_port(), sample_rate, out), nprocs=2, join=True)
        return dict(out)


@pytest.mark.slow
def test_partial_fc_distributed_matches_single_process():
    res = _run_distributed(1.0)
    assert (res[0]["start"], res[0]["n"], res[1]["start"], res[1]["n"]) == (0, 21, 21, 20)
    full = ArcFace(DIM, CLASSES + 1, s=32.0, m=0.4)
    with torch.no_grad():
        full.weight.copy_(res[0]["full_weight"])
    emb, labels = _batch(n=16, seed=5)
    emb.requires_grad_()
    loss = full(emb, labels)
    loss.backward()
    for r in (0, 1):
        assert abs(res[r]["loss"] - loss.item()) < 1e-5
        start, n = res[r]["start"], res[r]["n"]
        assert torch.allclose(res[r]["w_grad"], full.weight.grad[start:start + n], rtol=1e-4, atol=1e-4)
        # world-size factor: DDP's averaging of backbone gradients then gives the exact gradient
        assert torch.allclose(res[r]["emb_grad"], 2 * emb.grad[r * 8:(r + 1) * 8], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_partial_fc_distributed_sampling_keeps_positives():
    res = _run_distributed(0.5)
    _, labels = _batch(n=16, seed=5)
    for r in (0, 1):
        start, n = res[r]["start"], res[r]["n"]
        mine = labels[(labels >= start) & (labels < start + n)]
        assert res[r]["sampled"].numel() == max(int(0.5 * n), mine.unique().numel())
        assert torch.isin(mine, res[r]["sampled"]).all()
        assert math.isfinite(res[r]["loss"]) and res[0]["loss"] == pytest.approx(res[1]["loss"], abs=1e-5)
