"""Small random StyleGAN generators written in NVIDIA's pickle layout and in
rosinality's ``.pt`` layout, built by exface's own code, for tests and recipe checks.

:func:`make_stylegan2_pickle` / :func:`make_stylegan3_pickle` write what NVIDIA's
training loop writes: a plain pickle of ``{'G', 'D', 'G_ema', 'augment_pipe',
'training_set_kwargs'}`` where every network is a ``torch_utils.persistence`` record
(``_reconstruct_persistent_obj(meta)`` with the class name, constructor kwargs and the
module ``__dict__`` holding the tensors) and dict-valued kwargs are
``dnnlib.util.EasyDict``. The globals are emitted by name, so neither NVIDIA's code nor
``dnnlib`` is needed to write (or, with exface, to read) the file. The embedded
``module_src`` is a comment, not NVIDIA's source: a reader must rebuild the network
from ``init_kwargs`` (as exface does). ``D`` and ``augment_pipe`` are None.

The weights are random but not degenerate: non-zero noise strengths and biases,
``w_avg`` the mean of 2000 mapped z, and (StyleGAN3) each layer's ``magnitude_ema`` set
to the mean square of its input, as training would.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exface.models import stylegan2 as sg2
from exface.models import stylegan3 as sg3
from exface.models.rosinality import to_rosinality_state_dict

__all__ = [
    "build_stylegan2",
    "build_stylegan3",
    "write_network_pickle",
    "make_stylegan2_pickle",
    "make_stylegan3_pickle",
    "make_rosinality_checkpoint",
]

_SOURCE_NOTE = (
    "# Network pickle written by exface.testing.stylegan_pickles: no network source is embedded.\n"
    "# Rebuild the network from the recorded init_kwargs ({variant}).\n"
)

# exface class -> NVIDIA class name
_CLASS_NAMES = {
    sg2.FullyConnectedLayer: "FullyConnectedLayer",
    sg2.MappingNetwork: "MappingNetwork",
    sg2.Conv2dLayer: "Conv2dLayer",
    sg2.SynthesisLayer: "SynthesisLayer",
    sg2.ToRGBLayer: "ToRGBLayer",
    sg2.SynthesisBlock: "SynthesisBlock",
    sg2.SynthesisNetwork: "SynthesisNetwork",
    sg2.StyleGAN2Generator: "Generator",
    sg3.SynthesisInput: "SynthesisInput",
    sg3.SynthesisLayer3: "SynthesisLayer",
    sg3.SynthesisNetwork3: "SynthesisNetwork",
    sg3.StyleGAN3Generator: "Generator",
}


class _GlobalRef:
    """A global (module, name) to emit by name, without importing it."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle requires reduce functions to be callable
        raise RuntimeError(f"{self.module}.{self.name} is only a name to write into a pickle")


class _EasyDictOut(dict):
    """Pickles as ``dnnlib.util.EasyDict`` (a dict subclass) with the same items."""

    def __reduce__(self):  # type: ignore[override]
        return (_GlobalRef("dnnlib.util", "EasyDict"), (), None, None, iter(self.items()))


class _PersistentOut:
    """Pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def __reduce__(self):  # type: ignore[override]
        return (_GlobalRef("torch_utils.persistence", "_reconstruct_persistent_obj"), (self.meta,))


class _Pickler(pickle._Pickler):  # the pure-Python pickler lets a type choose its opcodes
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_ref(self, obj: _GlobalRef) -> None:
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
        self.memoize(obj)

    dispatch[_GlobalRef] = _save_global_ref


def _easydicts(v: Any) -> Any:
    if isinstance(v, dict):
        return _EasyDictOut({k: _easydicts(x) for k, x in v.items()})
    return v


def _plain_attr(v: Any) -> bool:
    if isinstance(v, (bool, int, float, str, type(None), np.ndarray, np.generic)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain_attr(x) for x in v)
    return False


def _to_record(module: nn.Module, variant: str, init_kwargs: dict[str, Any] | None = None) -> _PersistentOut:
    cls_name = _CLASS_NAMES.get(type(module))
    if cls_name is None:
        raise TypeError(f"cannot write {type(module).__name__} as an NVIDIA network record")
    params = OrderedDict()
    for name, p in module._parameters.items():
        params[name] = None if p is None else nn.Parameter(p.detach().cpu().clone(), requires_grad=False)
    buffers = OrderedDict((n, None if b is None else b.detach().cpu().clone()) for n, b in module._buffers.items())
    children = OrderedDict((n, _to_record(m, variant)) for n, m in module._modules.items())
    state: dict[str, Any] = {
        "training": False,
        "_parameters": params,
        "_buffers": buffers,
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": OrderedDict(),
        "_forward_hooks": OrderedDict(),
        "_forward_pre_hooks": OrderedDict(),
        "_state_dict_hooks": OrderedDict(),
        "_load_state_dict_pre_hooks": OrderedDict(),
        "_modules": children,
    }
    for name, value in vars(module).items():
        if not name.startswith("_") and name not in ("training", "init_kwargs") and _plain_attr(value):
            state[name] = value
    state["_init_args"] = ()
    state["_init_kwargs"] = _easydicts(dict(init_kwargs or {}))
    meta = dict(type="class", version=6, module_src=_SOURCE_NOTE.format(variant=variant),
                class_name=cls_name, state=state)
    return _PersistentOut(meta)


def _generator_kwargs_out(net: nn.Module, layout: str) -> dict[str, Any]:
    kw = dict(net.init_kwargs)
    synthesis = kw.pop("synthesis_kwargs")
    if layout == "ada":  # stylegan2-ada-pytorch: Generator(..., synthesis_kwargs={})
        kw["synthesis_kwargs"] = synthesis
    else:  # stylegan3 repository: Generator(..., **synthesis_kwargs)
        kw.update(synthesis)
    return kw


def write_network_pickle(path: str | Path, G_ema: nn.Module, G: nn.Module | None = None, layout: str = "stylegan3",
                         training_set_kwargs: dict[str, Any] | None = None, protocol: int = 4) -> Path:
    """Write ``G_ema`` (and ``G``, default the same network) as an NVIDIA snapshot pickle.

    ``layout='ada'`` nests the synthesis kwargs under ``synthesis_kwargs`` like
    stylegan2-ada-pytorch; ``'stylegan3'`` passes them flat like the stylegan3 repo.
    ``protocol`` 3 is what Python 3.7 (NVIDIA's published pickles) wrote by default.
    """
    if layout not in ("ada", "stylegan3"):
        raise ValueError("layout must be 'ada' or 'stylegan3'")
    variant = "networks_stylegan3" if isinstance(G_ema, sg3.StyleGAN3Generator) else (
        "training.networks (stylegan2-ada-pytorch)" if layout == "ada" else "networks_stylegan2 (stylegan3 repo)")
    g_ema = _to_record(G_ema, variant, _generator_kwargs_out(G_ema, layout))
    g = g_ema if G is None or G is G_ema else _to_record(G, variant, _generator_kwargs_out(G, layout))
    data = {
        "G": g,
        "D": None,
        "G_ema": g_ema,
        "augment_pipe": None,
        "training_set_kwargs": _easydicts(training_set_kwargs or dict(
            class_name="training.dataset.ImageFolderDataset", path="random.zip", use_labels=False,
            max_size=None, xflip=False, resolution=G_ema.img_resolution)),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        _Pickler(f, protocol=protocol).dump(data)
    return path


def _randomize(net: nn.Module, seed: int) -> None:
    """Non-zero noise strengths and biases, so that every path of the network matters."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("noise_strength"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias") and "affine" not in name and "mapping" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@torch.no_grad()
def _set_w_avg(net: nn.Module, seed: int, n: int = 2000) -> None:
    gen = torch.Generator().manual_seed(seed + 2)
    z = torch.randn(n, net.z_dim, generator=gen)
    c = None
    if net.c_dim > 0:  # random one-hot labels
        c = torch.eye(net.c_dim)[torch.randint(net.c_dim, (n,), generator=gen)]
    net.mapping.w_avg.copy_(net.mapping(z, c)[:, 0].mean(0))


def build_stylegan2(
    resolution: int = 32,
    z_dim: int = 32,
    w_dim: int = 32,
    seed: int = 0,
    channels: int = 32,
    channel_max: int | None = None,
    num_mapping_layers: int = 2,
    architecture: str = "skip",
    num_fp16_res: int = 0,
    conv_clamp: float | None = 256,
    c_dim: int = 0,
) -> sg2.StyleGAN2Generator:
    """A random exface StyleGAN2 network; ``channels`` at every resolution unless
    ``channel_max`` is given (then ``min(channels * resolution // res, channel_max)``)."""
    torch.manual_seed(seed)
    channel_base = channels * resolution
    net = sg2.StyleGAN2Generator(
        z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=resolution, img_channels=3,
        mapping_kwargs=dict(num_layers=num_mapping_layers),
        synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max or channels,
                              num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, architecture=architecture),
    )
    _randomize(net, seed)
    _set_w_avg(net, seed)
    return net.eval().requires_grad_(False)


def build_stylegan3(
    resolution: int = 32,
    z_dim: int = 32,
    w_dim: int = 32,
    seed: int = 0,
    config: str = "T",
    channel_base: int = 1024,
    channel_max: int = 64,
    num_layers: int = 6,
    num_critical: int = 2,
    margin_size: int = 4,
    num_mapping_layers: int = 2,
    num_fp16_res: int = 0,
) -> sg3.StyleGAN3Generator:
    """A random exface StyleGAN3 network of config ``'T'`` or ``'R'`` (1x1 convs, radial
    filters, doubled channels), with calibrated ``magnitude_ema`` buffers."""
    if config not in ("T", "R"):
        raise ValueError("config must be 'T' or 'R'")
    torch.manual_seed(seed)
    synthesis = dict(channel_base=channel_base, channel_max=channel_max, num_layers=num_layers,
                     num_critical=num_critical, margin_size=margin_size, num_fp16_res=num_fp16_res,
                     conv_clamp=256, magnitude_ema_beta=0.999)
    if config == "R":
        synthesis.update(conv_kernel=1, use_radial_filters=True, channel_base=channel_base * 2,
                         channel_max=channel_max * 2)
    net = sg3.StyleGAN3Generator(
        z_dim=z_dim, c_dim=0, w_dim=w_dim, img_resolution=resolution, img_channels=3,
        mapping_kwargs=dict(num_layers=num_mapping_layers), synthesis_kwargs=synthesis,
    )
    _randomize(net, seed)
    _set_w_avg(net, seed)
    with torch.no_grad():  # what training's magnitude EMA converges to
        gen = torch.Generator().manual_seed(seed + 3)
        ws = net.mapping(torch.randn(16, z_dim, generator=gen))
        syn = net.synthesis
        x = syn.input(ws[:, 0])
        for name, w in zip(syn.layer_names, ws.unbind(1)[1:]):
            layer = getattr(syn, name)
            layer.magnitude_ema.copy_(x.square().mean())
            x = layer(x, w)
    return net.eval().requires_grad_(False)


def make_stylegan2_pickle(
    path: str | Path,
    resolution: int = 32,
    z_dim: int = 32,
    w_dim: int = 32,
    seed: int = 0,
    layout: str = "stylegan3",
    **kwargs: Any,
) -> Path:
    """Write a random StyleGAN2 NVIDIA-layout pickle (see :func:`build_stylegan2` for kwargs)."""
    net = build_stylegan2(resolution=resolution, z_dim=z_dim, w_dim=w_dim, seed=seed, **kwargs)
    return write_network_pickle(path, net, layout=layout)


def make_stylegan3_pickle(
    path: str | Path,
    resolution: int = 32,
    z_dim: int = 32,
    w_dim: int = 32,
    seed: int = 0,
    config: str = "T",
    **kwargs: Any,
) -> Path:
    """Write a random StyleGAN3 (config T or R) NVIDIA-layout pickle."""
    net = build_stylegan3(resolution=resolution, z_dim=z_dim, w_dim=w_dim, seed=seed, config=config, **kwargs)
    return write_network_pickle(path, net, layout="stylegan3")


def make_rosinality_checkpoint(
    path: str | Path,
    resolution: int = 32,
    style_dim: int = 32,
    n_mlp: int = 2,
    channels: int = 32,
    seed: int = 0,
    with_latent_avg: bool = True,
) -> Path:
    """Write a random generator as a rosinality stylegan2-pytorch checkpoint
    (``{'g_ema': state_dict, 'latent_avg': w_avg}``, ``torch.save`` zip format)."""
    net = build_stylegan2(resolution=resolution, z_dim=style_dim, w_dim=style_dim, seed=seed,
                          channels=channels, num_mapping_layers=n_mlp, conv_clamp=None)
    ckpt: dict[str, Any] = {"g_ema": to_rosinality_state_dict(net)}
    if with_latent_avg:
        ckpt["latent_avg"] = net.mapping.w_avg.clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path
