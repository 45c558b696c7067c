"""A tiny folder-per-identity image dataset, as ``exface synthesize`` writes, for FR tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_identity_folder"]


def make_identity_folder(root: str | Path, num_identities: int = 4, images_per_identity: int = 3,
                         size: int = 32, seed: int = 0) -> Path:
    """``root/<identity>/<k>.png``: noise around an identity-specific mean colour (separable classes)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for ident in range(num_identities):
        base = rng.integers(0, 255, 3)
        folder = root / f"{ident:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(images_per_identity):
            img = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{k}.png")
    return root
