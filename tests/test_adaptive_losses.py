"""AdaFace, MagFace and CurricularFace against direct transcriptions of the published equations.

Each reference below is written element by element with Python's ``math`` from the paper's
equations (and the authors' code where the paper leaves a choice open: the EMA update
before use, the ``theta > pi - m`` fallback), on fixed inputs, independent of the
vectorized implementation.
"""

from __future__ import annotations

import math

import pytest
import torch

from exface.losses.adaface import AdaFace
from exface.losses.curricularface import CurricularFace
from exface.losses.magface import MagFace
from exface.registry import get_registry

DIM, C, N = 6, 5, 8


def _inputs(scale: float = 1.0):
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(N, DIM, generator=g, dtype=torch.float64) * scale
    emb[0] *= 0.05  # a low-norm (low-quality) sample
    emb[1] *= 3.0
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    w = torch.randn(C, DIM, generator=g, dtype=torch.float64)
    return emb, labels, w


def _cos(e, w):
    ne = math.sqrt(sum(v * v for v in e))
    nw = math.sqrt(sum(v * v for v in w))
    return max(-1.0, min(1.0, sum(a * b for a, b in zip(e, w)) / (ne * nw)))


def _set(loss, w):
    with torch.no_grad():
        loss.weight.copy_(w.float())


def test_registered():
    assert {"AdaFace", "MagFace", "CurricularFace"} <= set(get_registry("losses"))


def test_adaface_logits_match_equations():
    emb, labels, w = _inputs(scale=8.0)
    s, m, h, alpha, eps = 64.0, 0.4, 0.333, 0.01, 1e-3
    loss = AdaFace(DIM, C, s=s, m=m, h=h, t_alpha=alpha, eps=eps).train()
    _set(loss, w)
    out = loss.logits(emb.float(), labels).double()
    norms = [min(100.0, max(0.001, math.sqrt(sum(v * v for v in e.tolist())))) for e in emb]
    mu_b = sum(norms) / N
    sd_b = math.sqrt(sum((x - mu_b) ** 2 for x in norms) / (N - 1))  # unbiased, as torch.std
    mu = alpha * mu_b + (1 - alpha) * 20.0
    sd = alpha * sd_b + (1 - alpha) * 100.0
    for i in range(N):
        z = max(-1.0, min(1.0, (norms[i] - mu) / (sd + eps) * h))
        for j in range(C):
            c = min(1 - eps, max(-1 + eps, _cos(emb[i].tolist(), w[j].tolist())))
            theta = math.acos(c)
            if j == labels[i]:
                ref = s * (math.cos(min(math.pi - eps, max(eps, theta - m * z))) - (m * z + m))
            else:
                ref = s * math.cos(min(math.pi - eps, max(eps, theta)))
            assert out[i, j].item() == pytest.approx(ref, abs=2e-3), (i, j)
    assert loss.batch_mean.item() == pytest.approx(mu, rel=1e-5)
    # eval mode: the statistics stay put
    loss.eval()
    loss.logits(emb.float(), labels)
    assert loss.batch_mean.item() == pytest.approx(mu, rel=1e-5)


def test_magface_logits_and_regularizer_match_equations():
    emb, labels, w = _inputs(scale=20.0)
    s, l_a, u_a, l_m, u_m, lam = 64.0, 10.0, 110.0, 0.45, 0.8, 35.0
    loss = MagFace(DIM, C, s=s, l_a=l_a, u_a=u_a, l_m=l_m, u_m=u_m, lambda_g=lam)
    _set(loss, w)
    out = loss.logits(emb.float(), labels).double()
    g_total, ce_total = 0.0, 0.0
    for i in range(N):
        a = min(u_a, max(l_a, math.sqrt(sum(v * v for v in emb[i].tolist()))))
        m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
        row = []
        for j in range(C):
            c = _cos(emb[i].tolist(), w[j].tolist())
            if j == labels[i]:
                theta = math.acos(c)
                ref = s * (math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m))
            else:
                ref = s * c
            row.append(ref)
            assert out[i, j].item() == pytest.approx(ref, abs=2e-3), (i, j)
        lse = math.log(sum(math.exp(v - max(row)) for v in row)) + max(row)
        ce_total += lse - row[labels[i]]
        g_total += 1.0 / a + a / u_a ** 2
    ref_loss = ce_total / N + lam * g_total / N
    assert loss(emb.float(), labels).item() == pytest.approx(ref_loss, rel=1e-4)


def test_curricularface_logits_match_equations():
    emb, labels, w = _inputs()
    s, m, alpha = 64.0, 0.5, 0.01
    loss = CurricularFace(DIM, C, s=s, m=m, t_alpha=alpha).train()
    _set(loss, w)
    with torch.no_grad():
        loss.t.fill_(0.3)  # a curriculum already under way
    out = loss.logits(emb.float(), labels).double()
    cos = [[_cos(emb[i].tolist(), w[j].tolist()) for j in range(C)] for i in range(N)]
    r = sum(cos[i][labels[i]] for i in range(N)) / N
    t = alpha * r + (1 - alpha) * 0.3  # updated with this batch before use
    hard = 0
    for i in range(N):
        ct = cos[i][labels[i]]
        theta = math.acos(ct)
        target_m = math.cos(theta + m)
        for j in range(C):
            c = cos[i][j]
            if j == labels[i]:
                ref = s * (target_m if theta + m <= math.pi else ct - m * math.sin(m))
            elif c > target_m:  # hard negative: N(t, cos) = cos (t + cos)
                ref, hard = s * c * (t + c), hard + 1
            else:
                ref = s * c
            assert out[i, j].item() == pytest.approx(ref, abs=2e-3), (i, j)
    assert hard > 0 and loss.t.item() == pytest.approx(t, rel=1e-5)


@pytest.mark.parametrize("make", [lambda: AdaFace(DIM, C), lambda: MagFace(DIM, C), lambda: CurricularFace(DIM, C)])
def test_gradients_finite_and_loss_decreases(make):
    torch.manual_seed(0)
    loss = make()
    emb = (torch.randn(N, DIM) * 15).requires_grad_()
    labels = torch.arange(N) % C
    opt = torch.optim.SGD([emb, *loss.parameters()], lr=0.05)
    first = None
    for _ in range(30):
        out = loss(emb, labels)
        opt.zero_grad()
        out.backward()
        assert torch.isfinite(emb.grad).all()
        opt.step()
        first = out.item() if first is None else first
    assert out.item() < first
