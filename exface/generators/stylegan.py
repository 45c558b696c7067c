"""NVIDIA StyleGAN2(-ADA) and StyleGAN3 generators from their published pickles.

``StyleGAN2(pkl=...)`` reads an NVIDIA ``.pkl`` (stylegan2-ada-pytorch or the stylegan3
repository's StyleGAN2) or a rosinality stylegan2-pytorch ``.pt``; ``StyleGAN3(pkl=...)``
reads StyleGAN3 config T or R pickles. Files are read by a restricted unpickler that
never runs code from the file (:mod:`exface.models.nvidia_pickle`); the networks are
exface's own (:mod:`exface.models.stylegan2`, :mod:`exface.models.stylegan3`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from exface.generators.base import Generator
from exface.models.nvidia_pickle import PersistentRecord, check_not_tensorflow, generator_from_record, safe_load
from exface.models.rosinality import from_rosinality_state_dict, is_rosinality_checkpoint
from exface.models.stylegan2 import StyleGAN2Generator, check_noise_mode
from exface.models.stylegan3 import StyleGAN3Generator

__all__ = ["StyleGAN2", "StyleGAN3", "load_stylegan_network"]


def load_stylegan_network(pkl: str | Path, network: str = "G_ema") -> nn.Module:
    """Read an NVIDIA network pickle or a rosinality checkpoint as an exface network
    (:class:`StyleGAN2Generator` or :class:`StyleGAN3Generator`, eval mode)."""
    path = Path(pkl).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"no generator file at {path}: pass pkl= the path of an NVIDIA StyleGAN2-ADA/StyleGAN3 "
            f".pkl (e.g. ffhq.pkl from NVIDIA's model pages) or a rosinality stylegan2-pytorch .pt"
        )
    data = safe_load(path)
    check_not_tensorflow(data, path)
    if isinstance(data, dict) and any(isinstance(v, PersistentRecord) for v in data.values()):
        if network not in data or not isinstance(data[network], PersistentRecord):
            have = sorted(k for k, v in data.items() if isinstance(v, PersistentRecord))
            raise KeyError(f"{path} has no network {network!r}; it has {have}")
        return generator_from_record(data[network])
    if is_rosinality_checkpoint(data):
        key = {"G_ema": "g_ema", "G": "g"}.get(network, network)
        if not isinstance(data.get(key), dict):
            raise KeyError(f"{path} is a rosinality checkpoint without a {key!r} generator state dict")
        latent_avg = data.get("latent_avg")
        return from_rosinality_state_dict(data[key], latent_avg=latent_avg if isinstance(latent_avg, Tensor) else None)
    raise ValueError(
        f"{path} is neither an NVIDIA StyleGAN2-ADA/StyleGAN3 network pickle nor a rosinality "
        f"stylegan2-pytorch checkpoint (found {type(data).__name__}"
        + (f" with keys {sorted(map(str, data))[:10]})" if isinstance(data, dict) else ")")
    )


class _StyleGANBase(Generator):
    """Shared z/w/w+ plumbing; subclasses pick which network family they accept."""

    latent_spaces: ClassVar[tuple[str, ...]] = ("z", "w", "w+")
    _network_class: ClassVar[type]
    _other: ClassVar[str]

    def __init__(
        self,
        pkl: str,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "const",
        network: str = "G_ema",
    ) -> None:
        super().__init__()
        check_noise_mode(noise_mode)
        net = load_stylegan_network(pkl, network)
        if type(net) is not self._network_class:
            raise ValueError(
                f"{pkl} holds a {type(net).__name__.removesuffix('Generator')} generator; use the "
                f"{self._other} generator part for it, not {type(self).__name__}"
            )
        if net.c_dim > 0:
            raise ValueError(
                f"{pkl} is class-conditional (c_dim={net.c_dim}); exface's Generator contract has no "
                f"class input, so only unconditional generators (c_dim=0) are supported"
            )
        if net.img_channels != 3:
            raise ValueError(f"{pkl} renders {net.img_channels}-channel images; exface needs RGB generators")
        self.net = net
        self.pkl = str(pkl)
        self.z_dim, self.w_dim, self.num_ws = net.z_dim, net.w_dim, net.num_ws
        self.resolution = net.img_resolution
        self.truncation_psi = float(truncation_psi)
        self.truncation_cutoff = truncation_cutoff
        self.noise_mode = noise_mode

    def train(self, mode: bool = True) -> "_StyleGANBase":
        """The pretrained network stays in eval mode whatever the wrapper's mode."""
        super().train(mode)
        self.net.eval()
        return self

    @property
    def w_avg(self) -> Tensor:
        """The mapping network's average w (the truncation centre), ``[w_dim]``."""
        return self.net.mapping.w_avg

    def _psi(self, truncation_psi: float | None, truncation_cutoff: int | None) -> tuple[float, int | None]:
        psi = self.truncation_psi if truncation_psi is None else float(truncation_psi)
        cutoff = self.truncation_cutoff if truncation_cutoff is None else truncation_cutoff
        return psi, cutoff

    def _check_z(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [N, {self.z_dim}], got {tuple(z.shape)}")
        return z.to(self.device, torch.float32)

    def to_wplus(self, z: Tensor, truncation_psi: float | None = None, truncation_cutoff: int | None = None) -> Tensor:
        """z -> w+ ``[N, num_ws, w_dim]`` with truncation (the cutoff applies here)."""
        psi, cutoff = self._psi(truncation_psi, truncation_cutoff)
        return self.net.mapping(self._check_z(z), None, truncation_psi=psi, truncation_cutoff=cutoff)

    def to_w(self, z: Tensor, truncation_psi: float | None = None, truncation_cutoff: int | None = None) -> Tensor:
        """z -> w ``[N, w_dim]``, pulled toward ``w_avg`` by ``1 - psi``.

        ``None`` means the generator's own ``truncation_psi``. A single w has no layers,
        so ``truncation_cutoff`` does not apply here (use :meth:`to_wplus`).
        """
        psi, _ = self._psi(truncation_psi, truncation_cutoff)
        w = self.net.mapping(self._check_z(z), None)[:, 0]
        return self.net.mapping.truncate(w, psi)

    def synthesize(self, latent: Tensor, space: str = "z", noise_mode: str | None = None, **kwargs: Any) -> Tensor:
        """Render ``[N, 3, R, R]`` images in [-1, 1] from z, w (broadcast to every layer) or w+.

        z is mapped with the generator's truncation settings; w and w+ are used as given.
        ``noise_mode`` overrides the generator's (StyleGAN2: 'const', 'random', 'none').
        """
        self.check_space(space)
        if space == "z":
            ws = self.to_wplus(latent)
        elif space == "w":
            if latent.ndim != 2 or latent.shape[1] != self.w_dim:
                raise ValueError(f"w must have shape [N, {self.w_dim}], got {tuple(latent.shape)}")
            ws = latent.to(self.device, torch.float32).unsqueeze(1).repeat(1, self.num_ws, 1)
        else:
            if latent.ndim != 3 or latent.shape[1:] != (self.num_ws, self.w_dim):
                raise ValueError(f"w+ must have shape [N, {self.num_ws}, {self.w_dim}], got {tuple(latent.shape)}")
            ws = latent.to(self.device, torch.float32)
        img = self.net.synthesis(ws, noise_mode=noise_mode or self.noise_mode, **kwargs)
        return img.clamp(-1, 1)


class StyleGAN2(_StyleGANBase):
    """StyleGAN2 / StyleGAN2-ADA generator.

    Args:
        pkl: an NVIDIA network pickle (stylegan2-ada-pytorch, or a StyleGAN2 pickle of the
            stylegan3 repository) or a rosinality stylegan2-pytorch ``.pt``.
        truncation_psi: pull z-sampled w toward the average w (1 = off, 0.7 typical).
        truncation_cutoff: truncate only the first N of the w+ layers (None = all).
        noise_mode: per-pixel noise: 'const' (the network's stored noise, deterministic),
            'random' or 'none'.
        network: which network of an NVIDIA pickle ('G_ema', or 'G').
    """

    _network_class = StyleGAN2Generator
    _other = "StyleGAN3"


class StyleGAN3(_StyleGANBase):
    """StyleGAN3 (alias-free) generator, config T or R, from an NVIDIA network pickle.

    Args as :class:`StyleGAN2`; StyleGAN3 has no noise inputs, so ``noise_mode`` has no
    effect. The Fourier input's transform is ``net.synthesis.input.transform`` (3x3).
    """

    _network_class = StyleGAN3Generator
    _other = "StyleGAN2"
