"""Reading face-recognition checkpoints safely and mapping them onto :class:`~exface.models.iresnet.IResNet`.

Published IResNet checkpoints come in three layouts:

- **arcface_torch** ``backbone.pth``: a plain state dict with IResNet's own keys
  (``conv1.weight``, ``layer1.0.bn1.*``, ``fc.weight``, ``features.*``). Its training
  checkpoints (``checkpoint_gpu_0.pt``) hold the same dict under ``state_dict_backbone``.
- **ElasticFace** ``<step>backbone.pth``: the same keys, sometimes behind the ``module.``
  prefix that ``DataParallel``/``DistributedDataParallel`` adds.
- **AdaFace** ``.ckpt``: a PyTorch Lightning checkpoint; ``state_dict`` holds the
  backbone as ``model.input_layer.*``, ``model.body.<i>.res_layer.<j>.*``,
  ``model.body.<i>.shortcut_layer.*``, ``model.output_layer.*`` and the training head as
  ``head.*``. Its IR blocks are the IResNet block with other names, except that the
  first block keeps a strided identity shortcut, so it loads into
  ``IResNet(strided_identity_shortcut=True)``.

Every file is read with ``torch.load(weights_only=True)``. Lightning checkpoints may
also pickle hyper-parameter objects (``argparse.Namespace``, numpy scalars, a project's
own classes); those, and only those, are then replaced by inert stand-in objects that
record nothing and run nothing, so the tensors come out without executing code from
the file.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from exface.models.iresnet import IResNet, iresnet_arch_of

__all__ = [
    "CheckpointFormat",
    "IResNetCheckpoint",
    "adaface_to_iresnet",
    "detect_iresnet_layout",
    "extract_state_dict",
    "iresnet_to_adaface",
    "load_state_dict_strict",
    "load_torch_file",
    "read_iresnet_checkpoint",
    "strip_prefix",
]

log = logging.getLogger(__name__)

CheckpointFormat = Literal["auto", "arcface_torch", "elasticface", "adaface"]
FORMATS: tuple[str, ...] = ("auto", "arcface_torch", "elasticface", "adaface")

# ---------------------------------------------------------------------------------------
# Safe loading
# ---------------------------------------------------------------------------------------


class _StandIn:
    """Inert replacement for a pickled global that ``weights_only`` does not allow.

    Whatever the pickle asks of it (call, ``__new__``, ``__setstate__``) it accepts and
    ignores, so hyper-parameter objects turn into placeholders and no code from the
    file runs.
    """

    _qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_StandIn":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<not loaded: {self._qualified_name}>"


def _stand_in_for(qualified_name: str) -> type:
    return type("StandIn", (_StandIn,), {"_qualified_name": qualified_name})


#: modules whose globals run code or touch the system, and the code-running builtins: a
#: checkpoint naming one is hostile (other unknown globals become inert stand-ins)
_CODE_RUNNING_MODULES = ("os", "posix", "nt", "sys", "subprocess", "shutil", "importlib", "runpy", "pickle",
                         "marshal", "code", "codeop", "ctypes", "socket", "webbrowser", "pty", "multiprocessing")
_CODE_RUNNING_BUILTINS = ("exec", "eval", "compile", "__import__", "open", "getattr", "setattr", "delattr",
                          "globals", "locals", "vars", "input", "breakpoint", "exit", "quit")


def _code_running(names: list[str]) -> list[str]:
    """The globals in ``names`` that could run code (never replaced by an inert stand-in)."""
    out = []
    for n in names:
        mod, _, name = n.rpartition(".")
        if mod.split(".")[0] in _CODE_RUNNING_MODULES or (mod in ("builtins", "__builtin__")
                                                          and name in _CODE_RUNNING_BUILTINS):
            out.append(n)
    return out


def _refuse_hostile(path: Path, names: list[str]) -> None:
    hostile = _code_running(names)
    if hostile:
        from exface.models.nvidia_pickle import UnsafePickleError

        raise UnsafePickleError(
            f"refusing to load {path}: it references {', '.join(sorted(hostile))}, which could run code; "
            f"the file is malicious or not a weights file. Nothing from it was executed."
        )


def load_torch_file(path: str | Path) -> Any:
    """``torch.load`` a checkpoint onto the CPU without running code from it.

    First a plain ``weights_only=True`` load. If the file pickles other objects (typical
    for Lightning ``.ckpt`` hyper-parameters), each global it names is allowlisted as an
    inert stand-in and the load is repeated, still with ``weights_only=True``; tensors
    are unaffected. Globals from ``os``/``sys`` stay refused by torch.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_error = err
    _refuse_hostile(path, re.findall(r"GLOBAL ([\w.]+)", str(first_error)))
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a zip-format torch checkpoint and pickles objects that "
            f"weights_only loading refuses ({first_error}). exface does not unpickle "
            f"arbitrary objects; re-save just the tensors in a trusted environment: "
            f"torch.save(torch.load(p, weights_only=False)['state_dict'], 'weights.pth')"
        ) from None
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    _refuse_hostile(path, names)
    stand_ins = [(_stand_in_for(n), n) for n in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} could not be read with weights_only loading even with inert stand-ins "
            f"for {names}: {err}. Re-save just the state dict in a trusted environment."
        ) from None
    log.info("%s: replaced non-tensor pickled objects %s with inert stand-ins", path, names)
    return obj


# ---------------------------------------------------------------------------------------
# State-dict plumbing
# ---------------------------------------------------------------------------------------

_STATE_DICT_KEYS = ("state_dict", "state_dict_backbone", "model_state_dict", "backbone")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The tensor dict inside a loaded checkpoint.

    Accepts a bare state dict, or a dict holding one under ``state_dict`` (Lightning),
    ``state_dict_backbone`` (arcface_torch training checkpoints), ``model_state_dict``
    or ``backbone``.
    """
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                tensors = {k: v for k, v in inner.items() if isinstance(v, Tensor)}
                if tensors:
                    return tensors
        found = ", ".join(map(repr, list(obj)[:12]))
        raise ValueError(
            f"{source} holds no state dict: expected tensors at the top level or under one of "
            f"{', '.join(_STATE_DICT_KEYS)}; found top-level keys {found}"
        )
    raise ValueError(f"{source} holds a {type(obj).__name__}, not a dict of tensors")


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove ``prefix`` from every key, repeatedly, when all keys start with it."""
    state = dict(state)
    while state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _key_summary(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_state_dict_strict(module: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """``module.load_state_dict(state)`` with an error that names what does not match.

    Missing keys, unexpected keys and shape mismatches are listed together (first few of
    each), instead of torch's one-problem-at-a-time message.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_key_summary(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_key_summary(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_key_summary(shapes, 6)}")
        raise ValueError(
            f"{source} does not fit {type(module).__name__}: " + "; ".join(parts)
            + ". Check the arch and checkpoint_format arguments."
        )
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------
# AdaFace <-> IResNet key mapping
# ---------------------------------------------------------------------------------------

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

#: AdaFace module path (inside ``model.``) -> IResNet module path, per block and globally.
_ADAFACE_BLOCK = {
    "res_layer.0": "bn1",
    "res_layer.1": "conv1",
    "res_layer.2": "bn2",
    "res_layer.3": "prelu",
    "res_layer.4": "conv2",
    "res_layer.5": "bn3",
    "shortcut_layer.0": "downsample.0",
    "shortcut_layer.1": "downsample.1",
}
_ADAFACE_GLOBAL = {
    "input_layer.0": "conv1",
    "input_layer.1": "bn1",
    "input_layer.2": "prelu",
    "output_layer.0": "bn2",
    "output_layer.3": "fc",
    "output_layer.4": "features",
}
_ADAFACE_BODY = re.compile(r"^body\.(\d+)\.(res_layer\.\d+|shortcut_layer\.\d+)\.(\w+)$")
_ADAFACE_OTHER = re.compile(r"^((?:input|output)_layer\.\d+)\.(\w+)$")
_STAGE_WIDTHS = (64, 128, 256, 512)


def _adaface_stage_layout(body: Mapping[int, Mapping[str, Tensor]]) -> tuple[int, ...]:
    """Blocks per stage, read from each block's output width (64/128/256/512)."""
    widths = []
    for i in sorted(body):
        conv = body[i].get("res_layer.1.weight")
        if conv is None:
            raise ValueError(f"AdaFace block body.{i} has no res_layer.1.weight (found {sorted(body[i])})")
        widths.append(int(conv.shape[0]))
    layers = tuple(widths.count(w) for w in _STAGE_WIDTHS)
    if sum(layers) != len(widths) or widths != sorted(widths):
        raise ValueError(
            f"AdaFace body widths {sorted(set(widths))} are not the IR-18/34/50/101 layout "
            f"(64/128/256/512 channels); bottleneck IR-152/200 backbones are not supported"
        )
    return layers


def adaface_to_iresnet(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], tuple[int, ...], list[str]]:
    """Rename an AdaFace backbone state dict (``model.`` prefix removed) to IResNet keys.

    Returns ``(iresnet_state, layers, ignored_keys)``. AdaFace's final BatchNorm1d has no
    affine parameters; they are filled in as scale 1 / shift 0, which computes the same.
    """
    body: dict[int, dict[str, Tensor]] = {}
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if "se_block" in key:
            raise ValueError(
                f"{key}: AdaFace IR-SE backbones (squeeze-excitation blocks) are not supported; "
                f"use an IR (not IR-SE) checkpoint"
            )
        m = _ADAFACE_BODY.match(key)
        if m:
            idx, mod, param = int(m.group(1)), m.group(2), m.group(3)
            if mod not in _ADAFACE_BLOCK:
                raise ValueError(
                    f"{key}: AdaFace block with more than 6 res_layer entries (bottleneck "
                    f"IR-152/200) is not supported"
                )
            body.setdefault(idx, {})[f"{mod}.{param}"] = value
            continue
        m = _ADAFACE_OTHER.match(key)
        if m and m.group(1) in _ADAFACE_GLOBAL:
            out[f"{_ADAFACE_GLOBAL[m.group(1)]}.{m.group(2)}"] = value
        else:
            ignored.append(key)
    if not body:
        raise ValueError("AdaFace checkpoint has no model.body.* blocks")
    layers = _adaface_stage_layout(body)
    stage_of: list[tuple[int, int]] = [(s + 1, j) for s, n in enumerate(layers) for j in range(n)]
    for i, params in body.items():
        stage, j = stage_of[i]
        for name, value in params.items():
            mod, param = name.rsplit(".", 1)
            out[f"layer{stage}.{j}.{_ADAFACE_BLOCK[mod]}.{param}"] = value
    if "features.running_mean" in out and "features.weight" not in out:
        n = out["features.running_mean"].shape[0]
        out["features.weight"] = torch.ones(n)
        out["features.bias"] = torch.zeros(n)
    return out, layers, ignored


def iresnet_to_adaface(state: Mapping[str, Tensor], layers: tuple[int, ...]) -> dict[str, Tensor]:
    """Inverse of :func:`adaface_to_iresnet`, with the ``model.`` prefix (for writing test files).

    The IResNet must have AdaFace's layout (``strided_identity_shortcut=True``) and a
    ``features`` BatchNorm with scale 1 / shift 0, which AdaFace cannot store.
    """
    if "layer1.0.downsample.0.weight" in state:
        raise ValueError("AdaFace has no projection shortcut in layer1.0; build the IResNet "
                         "with strided_identity_shortcut=True")
    if not (torch.all(state["features.weight"] == 1) and torch.all(state["features.bias"] == 0)):
        raise ValueError("AdaFace's output BatchNorm1d is not affine; features.weight must be 1 and bias 0")
    to_ada_global = {v: k for k, v in _ADAFACE_GLOBAL.items()}
    to_ada_block = {v: k for k, v in _ADAFACE_BLOCK.items()}
    offsets = [sum(layers[:s]) for s in range(4)]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in ("features.weight", "features.bias"):
            continue
        m = re.match(r"^layer(\d)\.(\d+)\.(.+)\.(\w+)$", key)
        if m:
            idx = offsets[int(m.group(1)) - 1] + int(m.group(2))
            out[f"model.body.{idx}.{to_ada_block[m.group(3)]}.{m.group(4)}"] = value
        else:
            mod, param = key.rsplit(".", 1)
            out[f"model.{to_ada_global[mod]}.{param}"] = value
    return out


# ---------------------------------------------------------------------------------------
# Format detection and the one-call reader
# ---------------------------------------------------------------------------------------


def detect_iresnet_layout(state: Mapping[str, Tensor]) -> str | None:
    """``"adaface"`` or ``"arcface_torch"`` from the keys (prefixes already stripped), else None."""
    keys = list(state)
    if any(k.startswith(("input_layer.", "body.")) for k in keys):
        return "adaface"
    if "conv1.weight" in state and any(k.startswith("layer1.0.") for k in keys):
        return "arcface_torch"
    return None


@dataclass
class IResNetCheckpoint:
    """An IResNet checkpoint read into exface's key layout, plus what was inferred from it."""

    state_dict: dict[str, Tensor]
    layout: str  # "arcface_torch" (also ElasticFace) or "adaface"
    layers: tuple[int, ...]
    num_features: int
    input_size: int
    strided_identity_shortcut: bool
    ignored_keys: list[str] = field(default_factory=list)

    @property
    def arch(self) -> str | None:
        """``r18`` ... ``r200``, or None for a non-standard depth."""
        return iresnet_arch_of(self.layers)

    def build(self) -> IResNet:
        """An :class:`IResNet` of this shape with these weights, in eval mode."""
        net = IResNet(
            self.layers,
            num_features=self.num_features,
            input_size=self.input_size,
            strided_identity_shortcut=self.strided_identity_shortcut,
        )
        load_state_dict_strict(net, self.state_dict, source=f"{self.layout} checkpoint")
        return net.eval()


_WRAPPER_PREFIXES = ("", "model.", "backbone.", "model.backbone.", "embedder.backbone.")


def _iresnet_layers(state: Mapping[str, Tensor]) -> tuple[int, ...]:
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"^layer{stage}\.(\d+)\.", k))}
        if not idx:
            raise ValueError(f"missing keys: no layer{stage}.* blocks in the checkpoint")
        counts.append(max(idx) + 1)
    return tuple(counts)


def read_iresnet_checkpoint(path: str | Path, checkpoint_format: str = "auto") -> IResNetCheckpoint:
    """Load an arcface_torch / ElasticFace / AdaFace IResNet checkpoint into exface's layout.

    ``checkpoint_format="auto"`` tells the layouts apart by their keys; naming a format
    makes a file of the other layout an error. Unknown layouts are an error that lists
    the keys found.
    """
    if checkpoint_format not in FORMATS:
        raise ValueError(f"checkpoint_format must be one of {', '.join(FORMATS)}, got {checkpoint_format!r}")
    path = Path(path)
    full = strip_prefix(extract_state_dict(load_torch_file(path), source=str(path)), "module.")
    # The backbone may sit under a wrapper's attribute name (AdaFace's Lightning module
    # keeps it as ``model``; exface's embedders as ``backbone``); keys outside are ignored.
    state, layout, prefix = full, None, ""
    for prefix in _WRAPPER_PREFIXES:
        view = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
        layout = detect_iresnet_layout(strip_prefix(view, "module.")) if view else None
        if layout is not None:
            state = strip_prefix(view, "module.")
            break
    wanted = {"auto": layout, "arcface_torch": "arcface_torch", "elasticface": "arcface_torch",
              "adaface": "adaface"}[checkpoint_format]
    if layout is None or layout != wanted:
        keys = list(full)
        what = "an unrecognized layout" if layout is None else f"the {layout} layout"
        raise ValueError(
            f"{path} has {what}, not {checkpoint_format!r}. arcface_torch/ElasticFace files have "
            f"keys conv1.weight, layer1.0.bn1.weight, ..., fc.weight, features.running_mean "
            f"(optionally behind 'module.'); AdaFace .ckpt files have model.input_layer.0.weight, "
            f"model.body.0.res_layer.0.weight, ... Found {len(keys)} keys: {_key_summary(keys)}"
        )
    ignored = [k for k in full if not k.startswith(prefix)]
    if layout == "adaface":
        state, layers, more = adaface_to_iresnet(state)
        ignored += [prefix + k for k in more]
    else:
        if any("se_block" in k for k in state):
            raise ValueError(f"{path}: IResNet-SE checkpoints (se_block keys) are not supported")
        layers = _iresnet_layers(state)
        # arcface_torch/ElasticFace always give layer1.0 a projection shortcut: the variant
        # follows from the layout, never from which keys happen to be there (a file missing
        # them is damaged, and would otherwise build AdaFace's variant and load strictly).
        projection = [k for k in state if k.startswith("layer1.0.downsample.")]
        if not projection:
            raise ValueError(
                f"{path}: missing keys: layer1.0.downsample.* (the projection shortcut every "
                f"arcface_torch/ElasticFace IResNet has in layer1.0). The file is damaged, or it holds "
                f"an IResNet of AdaFace's variant under arcface_torch key names (e.g. the state dict of "
                f"an IResNetEmbedder built from an AdaFace .ckpt): load the AdaFace .ckpt itself, or an "
                f"exface FR training checkpoint with FRCheckpointEmbedder"
            )
    for key in ("fc.weight", "conv1.weight"):
        if key not in state:
            raise ValueError(f"{path}: missing keys: {key} (found {_key_summary(list(state))})")
    fc = state["fc.weight"]
    side2 = fc.shape[1] // 512
    side = int(round(side2**0.5))
    if side * side * 512 != fc.shape[1]:
        raise ValueError(f"{path}: fc.weight has {fc.shape[1]} inputs, not 512 x side x side")
    if ignored:
        log.info("%s: ignoring non-backbone keys %s", path, _key_summary(ignored))
    return IResNetCheckpoint(
        state_dict=state,
        layout=layout,
        layers=layers,
        num_features=int(fc.shape[0]),
        input_size=side * 16,
        strided_identity_shortcut=(layout == "adaface"),
        ignored_keys=ignored,
    )
