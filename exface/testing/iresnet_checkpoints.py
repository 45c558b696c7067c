"""Small random IResNet checkpoints written in each published layout.

Tests and recipe checks need arcface_torch / ElasticFace / AdaFace files without
downloading real ones. :func:`make_iresnet_checkpoint` writes a deterministic random
network (every BatchNorm has non-trivial statistics, so a wrong key mapping shows up
as a different embedding) in the exact container each project publishes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

from exface.models.checkpoint_io import iresnet_to_adaface
from exface.models.iresnet import IResNet, build_iresnet

__all__ = ["make_iresnet_checkpoint", "random_iresnet"]

_FORMATS = ("arcface_torch", "elasticface", "adaface")


def random_iresnet(arch: str = "r18", seed: int = 0, strided_identity_shortcut: bool = False) -> IResNet:
    """An IResNet with seeded random weights and BatchNorm statistics, in eval mode.

    Convolutions are scaled by ``1/sqrt(fan_in)`` and residual branches damped so that
    activations stay O(1) through 100+ blocks (arcface_torch's N(0, 0.1) init explodes
    without BatchNorm's batch statistics, which eval mode does not use).
    """
    gen = torch.Generator().manual_seed(seed)
    net = build_iresnet(arch, strided_identity_shortcut=strided_identity_shortcut)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen)

    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(randn(*m.weight.shape) / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(0.1 * randn(*m.bias.shape))
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(0.1 * randn(n))
                m.running_var.copy_(0.5 + rand(n))
                m.num_batches_tracked.fill_(int(rand(1).item() * 1000))
                if name == "features":  # arcface_torch freezes its scale at 1; AdaFace has none
                    m.weight.fill_(1.0)
                    m.bias.copy_(0.1 * randn(n) if not strided_identity_shortcut else torch.zeros(n))
                elif name.endswith("bn3"):  # damp residual branches
                    m.weight.copy_(0.2 * (1 + 0.1 * randn(n)))
                    m.bias.copy_(0.05 * randn(n))
                else:
                    m.weight.copy_(1 + 0.1 * randn(n))
                    m.bias.copy_(0.1 * randn(n))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.25 + 0.05 * randn(*m.weight.shape))
    return net.eval()


def make_iresnet_checkpoint(path: str | Path, arch: str = "r18", fmt: str = "arcface_torch", seed: int = 0) -> Path:
    """Write a random IResNet checkpoint to ``path`` in a published layout; returns the path.

    - ``arcface_torch``: ``torch.save(state_dict)`` (``backbone.pth``).
    - ``elasticface``: the same weights behind DataParallel's ``module.`` prefix.
    - ``adaface``: a Lightning-style ``.ckpt`` dict (``state_dict`` with ``model.*`` backbone
      keys and a ``head.kernel``, plus ``hyper_parameters``, ``epoch``, ...). The network
      has AdaFace's layout (strided identity in ``layer1.0``, plain output BatchNorm1d),
      so its weights are not those of the other two formats for the same seed.

    arcface_torch and elasticface files with the same ``arch``/``seed`` hold identical weights.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(_FORMATS)}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = random_iresnet(arch, seed, strided_identity_shortcut=(fmt == "adaface"))
    state = net.state_dict()
    if fmt == "arcface_torch":
        torch.save(state, path)
    elif fmt == "elasticface":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        ckpt_state = iresnet_to_adaface(state, net.layers)
        gen = torch.Generator().manual_seed(seed + 1)
        ckpt_state["head.kernel"] = torch.randn(net.num_features, 10, generator=gen)
        ckpt_state["head.t"] = torch.zeros(1)
        hparams = argparse.Namespace(arch=f"ir_{arch[1:]}", head="adaface", m=0.4, h=0.333)
        torch.save(
            {
                "epoch": 25,
                "global_step": 1000,
                "pytorch-lightning_version": "1.8.6",
                "state_dict": ckpt_state,
                "hyper_parameters": {"hparams": hparams, "arch": hparams.arch},
            },
            path,
        )
    return path
