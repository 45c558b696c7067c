"""Identity-folder data for FR training: ``root/<identity>/<image>`` as written by ``exface synthesize``.

Augmentation is what the recipe says, applied in this order to the uint8 image: an
albumentations pipeline (``albumentations``: the dict of ``A.to_dict(pipeline)``, so any
pipeline can be written in YAML), a random horizontal flip (``flip``), and torchvision's
RandAugment (``randaugment: [num_ops, magnitude]``; ExFaceGAN trains with flip +
RandAugment(4, 16)). arcface_torch's default is the flip alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

__all__ = ["IdentityFolderDataModule", "IdentityFolderDataset", "list_identity_folder", "Augmentation"]

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
        rows = [json.loads(ln) for ln in manifest.read_text().splitlines() if ln.strip()]
        if not rows:
            raise ValueError(f"{manifest} lists no images; re-run `exface synthesize`")
        names = sorted({r["identity"] for r in rows})
        index = {n: i for i, n in enumerate(names)}
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


class Augmentation:
    """uint8 HWC image -> augmented uint8 HWC image (albumentations, flip, RandAugment; see the module doc)."""

    def __init__(self, flip: bool = True, randaugment: tuple[int, int] | None = None,
                 albumentations: dict[str, Any] | None = None) -> None:
        self.flip = bool(flip)
        self.albu = None
        if albumentations is not None:
            import albumentations as A

            try:
                self.albu = A.from_dict(albumentations)
            except Exception as err:
                raise ValueError(f"data.init_args.albumentations is not a serialized albumentations pipeline "
                                 f"(A.to_dict(...) output): {err}") from None
        self.randaugment = None
        if randaugment is not None:
            from torchvision.transforms import v2

            num_ops, magnitude = (int(v) for v in randaugment)
            self.randaugment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    @property
    def active(self) -> bool:
        return self.flip or self.albu is not None or self.randaugment is not None

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        if self.albu is not None:
            arr = self.albu(image=arr)["image"]
        if self.flip and torch.rand(()) < 0.5:
            arr = arr[:, ::-1]
        if self.randaugment is not None:
            t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
            arr = self.randaugment(t).permute(1, 2, 0).numpy()
        return arr


def _load(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as im:
        img = im.convert("RGB")
        if img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        return np.array(img)


class IdentityFolderDataset(Dataset):
    """Images as float ``[3, H, W]`` RGB in [-1, 1], resized to ``image_size``, with their label.

    ``in_memory`` decodes every image once, at construction (uint8; 37 KB per 112x112 image),
    instead of at every epoch.
    """

    def __init__(self, paths: list[Path], labels: list[int], image_size: tuple[int, int],
                 transform: Augmentation | None = None, in_memory: bool = False) -> None:
        self.paths, self.labels = paths, labels
        self.image_size = tuple(image_size)
        self.transform = transform if transform is not None and transform.active else None
        self.cache = np.stack([_load(p, self.image_size) for p in paths]) if in_memory and paths else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = self.cache[i] if self.cache is not None else _load(self.paths[i], self.image_size)
        if self.transform is not None:
            arr = self.transform(arr)
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 127.5 - 1.0
        return x, self.labels[i]


class IdentityFolderDataModule(pl.LightningDataModule):
    """Folder-per-identity training data (a synthetic dataset from ``exface synthesize``).

    Args:
        root: dataset folder with one sub-folder per identity.
        image_size: (H, W) images are resized to (the backbone's input size).
        batch_size: images per step and device (the global batch is this x devices).
        num_workers: DataLoader workers.
        flip: random horizontal flip (p = 0.5).
        randaugment: torchvision RandAugment ``[num_ops, magnitude]`` (ExFaceGAN: [4, 16]); null: off.
        albumentations: an albumentations pipeline as ``A.to_dict`` writes it; null: none.
        in_memory: decode all images once into memory (small datasets, CPU training).
        val_fraction: fraction of the images held out for validation (classification accuracy
            on seen identities; 0 disables it). Face verification on real faces is
            :class:`~exface.fr.verification_callback.VerificationCallback`.
        seed: split seed.
    """

    def __init__(self, root: str, image_size: tuple[int, int] = (112, 112), batch_size: int = 128,
                 num_workers: int = 2, flip: bool = True, randaugment: tuple[int, int] | None = None,
                 albumentations: dict[str, Any] | None = None, in_memory: bool = False,
                 val_fraction: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.root = root
        self.image_size = tuple(image_size)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augmentation = Augmentation(flip, randaugment, albumentations)
        self.in_memory = in_memory
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_classes: int | None = None
        self._train = self._val = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        paths, labels, names = list_identity_folder(self.root)
        self.num_classes = len(names)
        rng = np.random.default_rng(self.seed)
        val_mask = rng.random(len(paths)) < self.val_fraction
        pick = lambda m: ([p for p, k in zip(paths, m) if k], [lab for lab, k in zip(labels, m) if k])  # noqa: E731
        self._train = IdentityFolderDataset(*pick(~val_mask), self.image_size, self.augmentation, self.in_memory)
        if val_mask.any():
            self._val = IdentityFolderDataset(*pick(val_mask), self.image_size, None, self.in_memory)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, drop_last=len(self._train) > self.batch_size,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self._val is None:
            return []
        return DataLoader(self._val, batch_size=self.batch_size, num_workers=self.num_workers)
