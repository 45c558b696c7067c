"""rosinality/stylegan2-pytorch checkpoints <-> :class:`~exface.models.stylegan2.StyleGAN2Generator`.

rosinality's ``.pt`` files are ``torch.save`` dicts with the EMA generator's state dict
under ``'g_ema'`` and, in files converted from NVIDIA's TensorFlow weights, the
average latent under ``'latent_avg'`` (training checkpoints also hold ``'g'``, ``'d'``,
optimizer states and an ``argparse.Namespace`` under ``'args'``). The generator is the
StyleGAN2 config-F 'skip' generator with other names and no activation clamping:

=============================================  ===========================================
rosinality                                      exface / NVIDIA
=============================================  ===========================================
``style.{i+1}.weight|bias``                     ``mapping.fc{i}.weight|bias``
``input.input`` [1, C, 4, 4]                    ``synthesis.b4.const`` [C, 4, 4]
``conv1.conv.weight`` [1, O, I, 3, 3]           ``synthesis.b4.conv1.weight``
``conv1.conv.modulation.weight|bias``           ``synthesis.b4.conv1.affine.weight|bias``
``conv1.noise.weight`` [1]                      ``synthesis.b4.conv1.noise_strength`` []
``conv1.activate.bias``                         ``synthesis.b4.conv1.bias``
``noises.noise_0`` [1, 1, 4, 4]                 ``synthesis.b4.conv1.noise_const`` [4, 4]
``to_rgb1.*`` (bias [1, 3, 1, 1])               ``synthesis.b4.torgb.*`` (bias [3])
``convs.{2k}`` / ``convs.{2k+1}``               ``synthesis.b{8*2^k}.conv0`` / ``.conv1``
``noises.noise_{2k+1}`` / ``noise_{2k+2}``      their ``noise_const``
``to_rgbs.{k}``                                 ``synthesis.b{8*2^k}.torgb``
=============================================  ===========================================

Both code bases store weights divided by the equalized-learning-rate gain and flip the
upsampling convolution the same way, so tensors copy over unchanged (reshaped). The
mapping's learning-rate multiplier is not stored; rosinality's default is 0.01.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from exface.models.stylegan2 import StyleGAN2Generator

__all__ = ["from_rosinality_state_dict", "to_rosinality_state_dict", "load_rosinality", "is_rosinality_checkpoint"]

_BLUR = torch.tensor([1.0, 3.0, 3.0, 1.0])


def _layer_pairs(resolution: int) -> list[tuple[str, str, int]]:
    """(rosinality prefix, exface prefix, noise index) of every modulated 3x3 conv."""
    pairs = [("conv1", "synthesis.b4.conv1", 0)]
    res, k = 8, 0
    while res <= resolution:
        pairs.append((f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1))
        pairs.append((f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2))
        res, k = res * 2, k + 1
    return pairs


def _torgb_pairs(resolution: int) -> list[tuple[str, str]]:
    pairs = [("to_rgb1", "synthesis.b4.torgb")]
    res, k = 8, 0
    while res <= resolution:
        pairs.append((f"to_rgbs.{k}", f"synthesis.b{res}.torgb"))
        res, k = res * 2, k + 1
    return pairs


def is_rosinality_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("g_ema"), dict) and "input.input" in obj["g_ema"]


def _channels_config(channels: dict[int, int]) -> tuple[int, int]:
    """(channel_base, channel_max) reproducing ``channels[res]`` as min(base // res, max)."""
    channel_max = max(channels.values())
    narrower = [(res, c) for res, c in sorted(channels.items()) if c < channel_max]
    if narrower:
        res, c = narrower[0]
        channel_base = c * res
    else:
        channel_base = max(channels) * channel_max
    if any(min(channel_base // r, channel_max) != c for r, c in channels.items()):
        raise ValueError(
            f"per-resolution channels {channels} do not follow min(base // res, max); this "
            f"rosinality generator layout is not supported"
        )
    return channel_base, channel_max


def from_rosinality_state_dict(
    sd: dict[str, Tensor], latent_avg: Tensor | None = None, lr_multiplier: float = 0.01,
    w_avg_samples: int = 10000, seed: int = 0,
) -> StyleGAN2Generator:
    """Build a :class:`StyleGAN2Generator` from a rosinality ``g_ema`` state dict.

    Without ``latent_avg`` the truncation centre ``w_avg`` is estimated as the mean of
    ``w_avg_samples`` mapped z (fixed ``seed``), as rosinality's ``mean_latent`` does.
    """
    if "input.input" not in sd or "style.1.weight" not in sd:
        raise ValueError("not a rosinality stylegan2-pytorch generator state dict (no input.input / style.1.weight)")
    n_mlp = len({m.group(1) for k in sd if (m := re.match(r"style\.(\d+)\.weight$", k))})
    style_dim = int(sd["style.1.weight"].shape[1])
    n_up = len({m.group(1) for k in sd if (m := re.match(r"to_rgbs\.(\d+)\.", k))})
    resolution = 4 * 2**n_up
    channels = {4: int(sd["input.input"].shape[1])}
    for k in range(n_up):
        channels[8 * 2**k] = int(sd[f"convs.{2 * k}.conv.weight"].shape[1])
    channel_base, channel_max = _channels_config(channels)
    img_channels = int(sd["to_rgb1.conv.weight"].shape[1])

    net = StyleGAN2Generator(
        z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=resolution, img_channels=img_channels,
        mapping_kwargs=dict(num_layers=n_mlp, lr_multiplier=lr_multiplier),
        synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=0,
                              conv_clamp=None, architecture="skip"),
    )
    own = net.state_dict()
    new: dict[str, Tensor] = {}
    for i in range(n_mlp):
        new[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
        new[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]
    new["synthesis.b4.const"] = sd["input.input"][0]
    for src, dst, noise_idx in _layer_pairs(resolution):
        new[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        new[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        new[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        new[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape([])
        new[f"{dst}.bias"] = sd[f"{src}.activate.bias"]
        noise = sd.get(f"noises.noise_{noise_idx}")
        if noise is None:
            raise ValueError(f"rosinality checkpoint lacks noises.noise_{noise_idx}")
        new[f"{dst}.noise_const"] = noise.reshape(noise.shape[-2:])
    for src, dst in _torgb_pairs(resolution):
        new[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        new[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        new[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        new[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(-1)
    for key, value in own.items():  # resampling filters are fixed [1, 3, 3, 1]
        if key.endswith("resample_filter"):
            new[key] = value
    if latent_avg is not None:
        new["mapping.w_avg"] = latent_avg.reshape(-1)
    else:
        new["mapping.w_avg"] = own["mapping.w_avg"]
    wrong = sorted(k for k in own if k not in new or tuple(new[k].shape) != tuple(own[k].shape))
    if wrong:
        raise ValueError(f"rosinality checkpoint does not fit the inferred generator; mismatched keys {wrong[:8]}")
    net.load_state_dict({k: v.to(torch.float32) for k, v in new.items()}, strict=True)
    net.eval().requires_grad_(False)
    if latent_avg is None:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed)
            z = torch.randn(w_avg_samples, style_dim, generator=gen)
            net.mapping.w_avg.copy_(net.mapping(z)[:, 0].mean(0))
    return net


def to_rosinality_state_dict(net: StyleGAN2Generator) -> dict[str, Tensor]:
    """The inverse mapping: a ``g_ema`` state dict in rosinality's key layout
    (including its noise and blur-kernel buffers)."""
    syn = net.synthesis
    if any(getattr(syn, f"b{r}").architecture != "skip" for r in syn.block_resolutions):
        raise ValueError("rosinality's generator is the 'skip' architecture only")
    sd = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    out: dict[str, Tensor] = {}
    for i in range(net.mapping.num_layers):
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    out["input.input"] = sd["synthesis.b4.const"][None]
    res = net.img_resolution
    blur = torch.outer(_BLUR, _BLUR)
    blur = blur / blur.sum()
    for src, dst, noise_idx in _layer_pairs(res):
        out[f"{src}.conv.weight"] = sd[f"{dst}.weight"][None]
        out[f"{src}.conv.modulation.weight"] = sd[f"{dst}.affine.weight"]
        out[f"{src}.conv.modulation.bias"] = sd[f"{dst}.affine.bias"]
        if dst.endswith("conv0"):
            out[f"{src}.conv.blur.kernel"] = blur * 4
        out[f"{src}.noise.weight"] = sd[f"{dst}.noise_strength"].reshape(1)
        out[f"{src}.activate.bias"] = sd[f"{dst}.bias"]
        out[f"noises.noise_{noise_idx}"] = sd[f"{dst}.noise_const"][None, None]
    for src, dst in _torgb_pairs(res):
        out[f"{src}.conv.weight"] = sd[f"{dst}.weight"][None]
        out[f"{src}.conv.modulation.weight"] = sd[f"{dst}.affine.weight"]
        out[f"{src}.conv.modulation.bias"] = sd[f"{dst}.affine.bias"]
        out[f"{src}.bias"] = sd[f"{dst}.bias"].reshape(1, -1, 1, 1)
        if src != "to_rgb1":
            out[f"{src}.upsample.kernel"] = blur * 4
    return out


def load_rosinality(path: str | Path, lr_multiplier: float = 0.01, key: str = "g_ema") -> StyleGAN2Generator:
    """Load a rosinality stylegan2-pytorch ``.pt`` file (read without running code from it)."""
    from exface.models.nvidia_pickle import safe_load

    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(key), dict):
        have = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a rosinality stylegan2-pytorch checkpoint: no {key!r} state dict ({have})")
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, Tensor):
        latent_avg = None
    return from_rosinality_state_dict(ckpt[key], latent_avg=latent_avg, lr_multiplier=lr_multiplier)
