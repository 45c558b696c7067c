"""The DCGAN generator of the PyTorch DCGAN tutorial (Radford et al. 2016), as trained on
DigiFace-1M by the ``gan-face-generate`` package (its ``weights.tar``).

``z [N, nz, 1, 1]`` goes through five transposed convolutions, 1 -> 4 -> 8 -> 16 -> 32
-> 64 pixels, with batch norm and ReLU between them and tanh at the end. The layers
sit in an ``nn.Sequential`` called ``main`` so the state dict keys are the package's
(``main.0.weight``, ``main.1.running_mean``, ...).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["DCGANGenerator", "load_dcgan_weights"]


class DCGANGenerator(nn.Module):
    """DCGAN generator: ``nz``-D noise to a ``nc`` x 64 x 64 image in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        self.nz, self.ngf, self.nc = nz, ngf, nc
        widths = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim == 2:
            z = z[:, :, None, None]
        if z.ndim != 4 or z.shape[1] != self.nz or z.shape[2:] != (1, 1):
            raise ValueError(f"z must have shape [N, {self.nz}] or [N, {self.nz}, 1, 1], got {tuple(z.shape)}")
        return self.main(z)


def load_dcgan_weights(path: str | Path) -> DCGANGenerator:
    """Read ``weights.tar`` of gan-face-generate (a torch zip whose ``netG_state_dict``
    holds the generator) with ``weights_only=True`` into an eval-mode generator."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no DCGAN weights at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and "netG_state_dict" in ckpt:
        sd = ckpt["netG_state_dict"]
    elif isinstance(ckpt, dict) and "main.0.weight" in ckpt:
        sd = ckpt
    else:
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a gan-face-generate checkpoint: no 'netG_state_dict' ({keys})")
    nz, ngf8 = sd["main.0.weight"].shape[:2]
    nc = sd["main.12.weight"].shape[1]
    net = DCGANGenerator(nz=int(nz), ngf=int(ngf8) // 8, nc=int(nc))
    net.load_state_dict(sd, strict=True)
    return net.eval().requires_grad_(False)
