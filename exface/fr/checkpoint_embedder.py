"""A trained ``FaceRecognitionModule`` checkpoint used as an identity embedder, by path.

``exface fit`` with an FR recipe writes Lightning checkpoints; :class:`FRCheckpointEmbedder`
rebuilds the backbone from the checkpoint alone (its ``exface_backbone`` record: class and
init arguments, written by :meth:`FaceRecognitionModule.on_save_checkpoint`) and loads the
trained weights, so a benchmark names it like any embedder::

    embedder: {class_path: FRCheckpointEmbedder, init_args: {ckpt: runs/fr/checkpoints/last.ckpt}}

The file is read with ``torch.load(weights_only=True)``: no code from the checkpoint runs.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch import Tensor

from exface.embedders.base import IdentityEmbedder
from exface.errors import ExfaceFileError
from exface.registry import create_part
from exface.resume_check import is_plain_data

__all__ = ["FRCheckpointEmbedder", "backbone_spec", "read_fr_checkpoint"]

#: init arguments never recorded: the trained weights come from the checkpoint's state_dict
_WEIGHT_ARGS = {"weights": None, "pretrained": False}


def backbone_spec(backbone: IdentityEmbedder) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuild ``backbone``'s architecture.

    Each ``__init__`` parameter is read from the attribute of the same name (embedders keep
    their arguments); weight files are recorded as None (the checkpoint holds the weights).
    A parameter without a plain attribute keeps its default; a required one is an error.
    """
    cls = type(backbone)
    args: dict[str, Any] = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in _WEIGHT_ARGS:
            args[name] = _WEIGHT_ARGS[name]
            continue
        value = backbone.__dict__.get(name, getattr(cls, name, inspect.Parameter.empty))
        if isinstance(value, tuple):
            value = list(value)
        if value is not inspect.Parameter.empty and is_plain_data(value):
            args[name] = value
        elif p.default is inspect.Parameter.empty:
            raise ValueError(f"cannot record {cls.__name__}'s required argument {name!r} for the checkpoint; "
                             f"keep it as a plain attribute self.{name}")
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": args}


def read_fr_checkpoint(ckpt: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The backbone record and the backbone's state_dict of a FaceRecognitionModule checkpoint."""
    from exface.torch_files import read_torch_file

    path = Path(ckpt)
    if not path.is_file():
        raise ExfaceFileError("the FR checkpoint does not exist", where=path,
                              fix="train with an FR recipe (`exface fit --config recipes/<fr recipe>.yaml`) or give "
                                  "the path of its checkpoints/*.ckpt")
    data = read_torch_file(path, "the FR checkpoint", "Lightning checkpoint",
                           "re-create it by training with the FR recipe again (`exface fit`), or copy it again")
    spec = data.get("exface_backbone") if isinstance(data, dict) else None
    state_dict = data.get("state_dict") if isinstance(data, dict) else None
    if not isinstance(spec, dict) or "class_path" not in spec or not isinstance(state_dict, dict):
        raise ExfaceFileError("the file is not a FaceRecognitionModule checkpoint of exface (no 'exface_backbone' "
                              "record or no state_dict)", where=path,
                              fix="pass a checkpoints/*.ckpt of an FR `exface fit` run; for published backbones use "
                                  "IResNetEmbedder(weights=...)")
    state = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    return spec, state


class FRCheckpointEmbedder(IdentityEmbedder):
    """The backbone of a ``FaceRecognitionModule`` checkpoint (eval mode).

    Args:
        ckpt: path of the Lightning checkpoint (``.ckpt``).
    """

    def __init__(self, ckpt: str | Path) -> None:
        super().__init__()
        self.ckpt = str(ckpt)
        spec, state = read_fr_checkpoint(ckpt)
        cls = spec["class_path"].rsplit(".", 1)[-1]
        self.net = create_part("embedders", cls, **spec["init_args"])
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{ckpt}: the backbone {cls} does not match the checkpoint's weights "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.backbone_class = cls
        self.input_size = tuple(self.net.input_size)
        self.embedding_dim = int(self.net.embedding_dim)
        self.color_order, self.mean, self.std = self.net.color_order, self.net.mean, self.net.std
        self.eval()

    def embed_raw(self, x: Tensor) -> Tensor:
        return self.net.embed_raw(x)
