"""Identity-folder data for FR training: ``root/<identity>/<image>`` as written by ``exface synthesize``."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

__all__ = ["IdentityFolderDataModule", "IdentityFolderDataset", "list_identity_folder"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def list_identity_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Image paths, integer labels and identity names of a folder-per-identity dataset.

    A dataset of ``exface synthesize`` (``manifest.jsonl`` beside the folders) lists its images
    in the manifest (its ``frames/`` folder is no identity); any other folder is scanned.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder {root} does not exist; run `exface synthesize` first "
                                f"or point data.init_args.root at a folder of identity sub-folders")
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        import json

        rows = [json.loads(ln) for ln in manifest.read_text().splitlines() if ln.strip()]
        names = sorted({r["identity"] for r in rows})
        index = {n: i for i, n in enumerate(names)}
        if not rows:
            raise ValueError(f"{manifest} lists no images; re-run `exface synthesize`")
        return [root / r["file"] for r in rows], [index[r["identity"]] for r in rows], names
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(names):
        for p in sorted((root / name).iterdir()):
            if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith("."):
                paths.append(p)
                labels.append(label)
    if not paths:
        raise ValueError(f"{root} holds no images in identity sub-folders ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    return paths, labels, names


class IdentityFolderDataset(Dataset):
    """Images as float ``[3, H, W]`` RGB in [-1, 1], resized to ``image_size``, with their label."""

    def __init__(self, paths: list[Path], labels: list[int], image_size: tuple[int, int],
                 transform=None) -> None:
        self.paths, self.labels = paths, labels
        self.image_size = tuple(image_size)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.open(self.paths[i]).convert("RGB")
        if img.size != (self.image_size[1], self.image_size[0]):
            img = img.resize((self.image_size[1], self.image_size[0]), Image.BILINEAR)
        arr = np.array(img)
        if self.transform is not None:
            arr = self.transform(image=arr)["image"]
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 127.5 - 1.0
        return x, self.labels[i]


class IdentityFolderDataModule(pl.LightningDataModule):
    """Folder-per-identity training data (a synthetic dataset from ``exface synthesize``).

    Args:
        root: dataset folder with one sub-folder per identity.
        image_size: (H, W) the backbone takes; images are resized to it.
        batch_size: images per step.
        num_workers: DataLoader workers.
        augment: random horizontal flip and mild colour jitter (albumentations).
        val_fraction: fraction of each identity's images held out for validation
            (classification accuracy on seen identities; 0 disables validation).
        seed: split seed.
    """

    def __init__(self, root: str, image_size: tuple[int, int] = (112, 112), batch_size: int = 128,
                 num_workers: int = 2, augment: bool = True, val_fraction: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.root = root
        self.image_size = tuple(image_size)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_classes: int | None = None
        self._train = self._val = None

    def setup(self, stage: str | None = None) -> None:
        paths, labels, names = list_identity_folder(self.root)
        self.num_classes = len(names)
        rng = np.random.default_rng(self.seed)
        val_mask = rng.random(len(paths)) < self.val_fraction
        transform = None
        if self.augment:
            import albumentations as A

            transform = A.Compose([A.HorizontalFlip(p=0.5), A.ColorJitter(0.2, 0.2, 0.2, 0.0, p=0.5)])
        pick = lambda m: ([p for p, k in zip(paths, m) if k], [lab for lab, k in zip(labels, m) if k])  # noqa: E731
        self._train = IdentityFolderDataset(*pick(~val_mask), self.image_size, transform)
        if val_mask.any():
            self._val = IdentityFolderDataset(*pick(val_mask), self.image_size, None)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, drop_last=len(self._train) > self.batch_size,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self._val is None:
            return []
        return DataLoader(self._val, batch_size=self.batch_size, num_workers=self.num_workers)
