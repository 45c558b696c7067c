"""Any timm model as a face-recognition backbone, with an insightface-style embedding head."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from exface.embedders.base import IdentityEmbedder
from exface.models.checkpoint_io import extract_state_dict, load_state_dict_strict, load_torch_file, strip_prefix

__all__ = ["TimmEmbedder"]

log = logging.getLogger(__name__)

#: Where an embedder's own keys may sit inside a saved training checkpoint.
_EMBEDDER_PREFIXES = ("", "embedder.", "model.", "model.embedder.", "backbone_model.")


def _create_backbone(model_name: str, input_size: tuple[int, int]) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0)``, sized for ``input_size``.

    Models with a fixed input size (ViTs and the like) are built with ``img_size`` set to
    the face crop size; a forward pass on one blank image checks the result is a
    ``[1, num_features]`` vector.
    """
    import timm

    if not timm.is_model(model_name):
        near = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(f"timm has no model named {model_name!r}{hint} (timm.list_models() lists them)")
    model = timm.create_model(model_name, pretrained=False, num_classes=0)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size") and tuple(cfg.get("input_size", (3, 0, 0))[1:]) != tuple(input_size):
        model = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=tuple(input_size))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, *input_size))
    except Exception as err:
        raise ValueError(
            f"timm model {model_name!r} does not run on {tuple(input_size)} input ({err}); pick "
            f"another input_size or a model that accepts it"
        ) from err
    model.train(was_training)
    if out.ndim != 2 or out.shape[1] != model.num_features:
        raise ValueError(
            f"timm model {model_name!r} with num_classes=0 returns {tuple(out.shape)}, not a "
            f"pooled [N, {model.num_features}] feature vector"
        )
    return model


class TimmEmbedder(IdentityEmbedder):
    """A timm backbone (classifier removed) + BN -> Linear -> BN embedding head.

    Args:
        model_name: any ``timm.list_models()`` name, e.g. ``resnet50``, ``convnext_tiny``,
            ``vit_small_patch16_224`` (fixed-size models are rebuilt at ``input_size``).
        embedding_dim: output size of the head.
        pretrained_path: weights to start from: either a whole ``TimmEmbedder`` state dict
            (keys ``backbone.*``/``head.*``, also inside a Lightning checkpoint under
            ``embedder.`` or ``model.``), or a plain timm backbone checkpoint
            (``.pth``/``.bin``/``.safetensors``), whose classifier weights are dropped.
        input_size: face crop size ``(H, W)``.

    The input normalization is insightface's (RGB, ``(x - 127.5) / 127.5``); an
    ImageNet-pretrained backbone adapts to it during face-recognition training.
    """

    def __init__(
        self,
        model_name: str,
        embedding_dim: int = 512,
        pretrained_path: str | Path | None = None,
        input_size: tuple[int, int] = (112, 112),
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.embedding_dim = embedding_dim
        self.color_order = "RGB"
        self.mean = (127.5, 127.5, 127.5)
        self.std = (127.5, 127.5, 127.5)
        self.backbone = _create_backbone(model_name, self.input_size)
        width = self.backbone.num_features
        self.head = nn.Sequential(
            nn.BatchNorm1d(width),
            nn.Linear(width, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )
        if pretrained_path is not None:
            self.load_pretrained(pretrained_path)
            self.eval()

    def load_pretrained(self, path: str | Path) -> None:
        """Load a whole-embedder or backbone-only checkpoint (see the class docstring)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = extract_state_dict(load_torch_file(path), source=str(path))
        state = strip_prefix(state, "module.")
        for prefix in _EMBEDDER_PREFIXES:
            if any(k.startswith(prefix + "backbone.") for k in state):
                own = {k[len(prefix):]: v for k, v in state.items()
                       if k.startswith((prefix + "backbone.", prefix + "head."))}
                load_state_dict_strict(self, own, source=f"{path} (TimmEmbedder weights)")
                return
        classifiers = (self.backbone.pretrained_cfg or {}).get("classifier") or ()
        if isinstance(classifiers, str):
            classifiers = (classifiers,)
        own_keys = set(self.backbone.state_dict())
        dropped = [k for k in state if k not in own_keys and k.startswith(tuple(f"{c}." for c in classifiers))]
        backbone_state = {k: v for k, v in state.items() if k not in dropped}
        if dropped:
            log.info("%s: dropped classifier weights %s", path, dropped)
        load_state_dict_strict(self.backbone, backbone_state, source=f"{path} (timm {self.model_name} backbone)")

    def embed_raw(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
