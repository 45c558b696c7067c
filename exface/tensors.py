"""Tensor conventions shared by every part: the [-1, 1] image <-> uint8 mapping, a module's device."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["module_device", "to_uint8"]


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8 [0, 255], rounded (what is written to PNG)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
