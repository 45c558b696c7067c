"""Identity-folder data for FR training: ``root/<identity>/<image>`` as written by ``exface synthesize``.

Augmentation is what the recipe says, applied in this order to the uint8 image: an
albumentations pipeline (``albumentations``: the dict of ``A.to_dict(pipeline)``, so any
pipeline can be written in YAML), a random horizontal flip (``flip``), and torchvision's
RandAugment (``randaugment: [num_ops, magnitude]``). arcface_torch's default is the flip alone.

ExFaceGAN trains with flip + its own RandAugment(num_ops=4, magnitude=16) (its
utils/rand_augment.py), which torchvision's ``RandAugment(4, 16)`` does *not* reproduce:

* magnitude: torchvision applies every op at the one bin ``magnitude`` (16 of 31, e.g. a
  16-degree rotation, shear 0.16, brightness x(1 +- 0.48)); ExFaceGAN draws each op's bin
  uniformly from 1..magnitude (1..16 of the same 31 bins), so its ops are weaker on average
  (mean bin 8.5) and vary in strength;
* op set: torchvision draws from 14 ops (Identity, ShearX/Y, TranslateX/Y, Rotate,
  Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize);
  ExFaceGAN's 13 drop ShearY and TranslateY and add Grayscale;
* ExFaceGAN transforms PIL images and draws the bin from numpy's global RNG (op and sign
  from torch's); here torchvision transforms uint8 tensors, all draws from torch's RNG.

The magnitude ranges of the shared ops (bins of 31 over the same intervals) are the same.
``randaugment_variant: exfacegan`` selects :class:`ExFaceGANRandAugment`, exface's own
implementation of ExFaceGAN's variant (its bin and op draws, on tensors, all from torch's RNG).

Randomness in DataLoader workers: flip and RandAugment use torch's RNG, which PyTorch seeds
per worker. An albumentations ``Compose`` carries its own generator, created in the main
process, so every forked worker would copy one stream; :class:`Augmentation` therefore
reseeds it from ``torch.initial_seed()`` in the process that runs it (a distinct,
reproducible seed per worker and epoch; Lightning's ``seed_everything(workers=True)`` also
mixes in the rank).

The training loader is resumable mid-epoch (:class:`ResumableDataLoader`): the shuffle is a
seeded permutation per epoch (:class:`EpochShuffleSampler`) and the loader's state, (epoch,
batches handed out), goes into Lightning's checkpoints, so ``--ckpt_path last`` continues
the interrupted epoch with exactly its remaining batches, in order, then the same later
epochs as an uninterrupted run. (The random augmentations are not part of that state.)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["IdentityFolderDataModule", "IdentityFolderDataset", "list_identity_folder", "training_data_sha256",
           "Augmentation", "ExFaceGANRandAugment", "EpochShuffleSampler", "ResumableDataLoader"]

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
    from exface.errors import ExfaceError

    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels, empty = [], [], []
    for label, name in enumerate(names):
        found = [p for p in sorted((root / name).iterdir())
                 if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")]
        paths += found
        labels += [label] * len(found)
        if not found:
            empty.append(name)
    if not paths:
        raise ExfaceError(f"{root} holds no images in identity sub-folders ({', '.join(sorted(_IMAGE_SUFFIXES))})",
                          where=root, fix="point data.init_args.root at a folder of identity sub-folders of images")
    if empty:  # as torchvision's ImageFolder: a class without images would be a centre no image trains
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ExfaceError(f"{len(empty)} identity folder(s) hold no images: {shown}", where=root,
                          fix="remove the empty identity folders (or move their images in)")
    return paths, labels, names


def training_data_sha256(root: str | Path, paths: list[Path], labels: list[int]) -> str:
    """A fingerprint of a training set: the SHA-256 of its ``manifest.jsonl`` (a dataset of
    ``exface synthesize``, whose manifest names every image and its settings), else of its
    ``label<TAB>relative path<TAB>size in bytes`` list (one ``stat`` per image: a second or two
    for a million). Another set of images, identities or labels changes it; an image rewritten
    in place to the same size does not."""
    import hashlib

    root = Path(root)
    manifest = root / "manifest.jsonl"
    h = hashlib.sha256()
    if manifest.is_file():
        with open(manifest, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for p, lab in zip(paths, labels):
        h.update(f"{lab}\t{Path(p).relative_to(root).as_posix()}\t{os.stat(p).st_size}\n".encode())
    return h.hexdigest()


class ExFaceGANRandAugment:
    """RandAugment as ExFaceGAN trains with it (its utils/rand_augment.py), on uint8 ``[3, H, W]`` tensors.

    Each of ``num_ops`` rounds picks one of 13 ops uniformly (Identity, ShearX, TranslateX,
    Rotate, Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast,
    Equalize, Grayscale), a magnitude bin uniformly from ``1..magnitude`` of
    ``num_magnitude_bins`` (31), and for signed ops a random sign; the bins span torchvision's
    RandAugment ranges. Nearest-neighbour geometry, black fill. All draws use torch's RNG
    (ExFaceGAN draws the bin from numpy's), so DataLoader workers are seeded as usual.
    """

    #: op -> (magnitude of the last bin, signed); None: the op takes no magnitude
    _OPS = {"Identity": (None, False), "ShearX": (0.3, True), "TranslateX": (150.0 / 331.0, True),
            "Rotate": (30.0, True), "Brightness": (0.9, True), "Color": (0.9, True), "Contrast": (0.9, True),
            "Sharpness": (0.9, True), "Posterize": (None, False), "Solarize": (None, False),
            "AutoContrast": (None, False), "Equalize": (None, False), "Grayscale": (None, False)}

    def __init__(self, num_ops: int = 4, magnitude: int = 16, num_magnitude_bins: int = 31) -> None:
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        if not 1 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude must be in 1..{num_magnitude_bins - 1}, got {magnitude}")
        self.num_ops, self.magnitude, self.num_bins = int(num_ops), int(magnitude), int(num_magnitude_bins)
        self.names = list(self._OPS)

    def value(self, name: str, level: int, width: int) -> float:
        """The op's magnitude at bin ``level`` (0-based, of ``num_bins``), before the sign."""
        frac = level / (self.num_bins - 1)
        if name == "Posterize":
            return float(8 - round(level / ((self.num_bins - 1) / 4)))  # bits kept: 8 down to 4
        if name == "Solarize":
            return 255.0 * (1.0 - frac)  # threshold: 255 down to 0
        top, _ = self._OPS[name]
        return 0.0 if top is None else top * frac * (width if name == "TranslateX" else 1.0)

    def apply(self, img: torch.Tensor, name: str, v: float) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        near = InterpolationMode.NEAREST
        if name == "ShearX":
            return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(v)), 0.0],
                            interpolation=near, center=[0, 0])
        if name == "TranslateX":
            return F.affine(img, angle=0.0, translate=[int(v), 0], scale=1.0, shear=[0.0, 0.0], interpolation=near)
        if name == "Rotate":
            return F.rotate(img, v, interpolation=near)
        enhance = {"Brightness": F.adjust_brightness, "Color": F.adjust_saturation, "Contrast": F.adjust_contrast,
                   "Sharpness": F.adjust_sharpness}
        if name in enhance:
            return enhance[name](img, 1.0 + v)
        if name == "Posterize":
            return F.posterize(img, int(v))
        if name == "Solarize":
            return F.solarize(img, v)
        if name == "AutoContrast":
            return F.autocontrast(img)
        if name == "Equalize":
            return F.equalize(img)
        if name == "Grayscale":
            return F.rgb_to_grayscale(img, num_output_channels=img.shape[-3])
        return img  # Identity

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_ops):
            name = self.names[int(torch.randint(len(self.names), ()))]
            level = int(torch.randint(1, self.magnitude + 1, ()))
            v = self.value(name, level, img.shape[-1])
            if self._OPS[name][1] and torch.rand(()) < 0.5:
                v = -v
            img = self.apply(img, name, v)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, bins={self.num_bins})"


class Augmentation:
    """uint8 HWC image -> augmented uint8 HWC image (albumentations, flip, RandAugment; see the module doc).

    ``randaugment`` is torchvision's ``RandAugment(num_ops, magnitude)`` (every op at the fixed
    bin ``magnitude`` of 31), or with ``randaugment_variant="exfacegan"``
    :class:`ExFaceGANRandAugment` (bins drawn from 1..magnitude, ExFaceGAN's op set; see the
    module doc). The albumentations
    pipeline is reseeded from ``torch.initial_seed()`` on its first use in each process (each
    DataLoader worker), so workers draw distinct, reproducible streams.
    """

    def __init__(self, flip: bool = True, randaugment: tuple[int, int] | None = None,
                 albumentations: dict[str, Any] | None = None,
                 randaugment_variant: Literal["torchvision", "exfacegan"] = "torchvision") -> None:
        if randaugment_variant not in ("torchvision", "exfacegan"):
            raise ValueError(f"randaugment_variant must be 'torchvision' or 'exfacegan', got {randaugment_variant!r}")
        self.flip = bool(flip)
        self.albu = None
        self._albu_seed: int | None = None  # the torch.initial_seed() the pipeline was last seeded from
        if albumentations is not None:
            import albumentations as A

            try:
                self.albu = A.from_dict(albumentations)
            except Exception as err:
                raise ValueError(f"data.init_args.albumentations is not a serialized albumentations pipeline "
                                 f"(A.to_dict(...) output): {err}") from None
        self.randaugment = None
        if randaugment is not None:
            num_ops, magnitude = (int(v) for v in randaugment)
            if randaugment_variant == "exfacegan":
                self.randaugment = ExFaceGANRandAugment(num_ops, magnitude)
            else:
                from torchvision.transforms import v2

                self.randaugment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    @property
    def active(self) -> bool:
        return self.flip or self.albu is not None or self.randaugment is not None

    def _reseed_albumentations(self) -> None:
        """Seed the pipeline's own generators from torch's seed of this process, once per seed.

        In a DataLoader worker ``torch.initial_seed()`` is the worker's seed (base seed + worker
        id, drawn from the main process's torch RNG for each epoch's workers, or what
        Lightning's worker_init_fn set), so each worker gets its own stream; in the main
        process it is the seed of ``torch.manual_seed``/``seed_everything``.
        """
        seed = torch.initial_seed()
        if seed != self._albu_seed:
            self.albu.set_random_seed(seed % 2**63)
            self._albu_seed = seed

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        if self.albu is not None:
            self._reseed_albumentations()
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


class EpochShuffleSampler(DistributedSampler):
    """A seeded permutation per epoch (``randperm`` of ``seed + epoch``), this rank's share of it.

    Like ``DistributedSampler`` (which it is, so Lightning leaves it in place under DDP): the
    permutation is padded by repetition to a multiple of ``num_replicas`` and rank ``r`` takes
    every ``num_replicas``-th index from ``r``. ``set_epoch`` picks the epoch (Lightning calls
    it at every epoch start); :meth:`skip_next` makes the next iteration start ``n`` indices
    into the epoch (a resumed epoch; the iteration after it is whole again).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0  # a skip loaded for one epoch never applies to another
        self.epoch = epoch

    def skip_next(self, n: int) -> None:
        """Leave out the first ``n`` indices of this epoch in the next iteration."""
        self._skip = max(0, int(n))

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's indices of epoch ``epoch`` (default: the current one), in order."""
        g = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        perm = torch.randperm(len(self.dataset), generator=g).tolist()
        if self.total_size > len(perm):
            perm += (perm * math.ceil(self.total_size / max(1, len(perm))))[: self.total_size - len(perm)]
        return perm[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return iter(self.indices()[skip:])

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochShuffleSampler` whose position is a Lightning-checkpointable state.

    ``state_dict()`` is ``{epoch, batches}``: the sampler's epoch and how many batches of it were
    handed out (Lightning saves it with the fit loop; its fetcher takes no batch ahead when the
    loader has a length). ``load_state_dict`` makes the next iteration of that epoch start
    after those batches. The underlying iterator (and worker prefetching) starts at the first
    ``next``, after Lightning's ``set_epoch``, so the order never comes from a stale epoch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, sampler: EpochShuffleSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, EpochShuffleSampler):
            raise TypeError(f"ResumableDataLoader needs an EpochShuffleSampler, got {type(sampler).__name__}")
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._position = (sampler.epoch, 0)  # (epoch, batches of it handed out)

    def __iter__(self) -> Iterator[Any]:
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        epoch, done = self.sampler.epoch, self.sampler._skip // self.batch_size
        self._position = (epoch, done)
        for batch in super().__iter__():
            done += 1
            self._position = (epoch, done)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        epoch, done = self._position
        if epoch != self.sampler.epoch:  # a new epoch set, not started yet
            epoch, done = self.sampler.epoch, self.sampler._skip // self.batch_size
        return {"epoch": epoch, "batches": done, "batch_size": self.batch_size, "seed": self.sampler.seed,
                "num_samples": len(self.sampler), "dataset_size": len(self.dataset),
                "num_replicas": self.sampler.num_replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches"])
        if "seed" in state:  # the interrupted run's order, whatever this run was seeded with
            self.sampler.seed = int(state["seed"])
        now = {"num_replicas": self.sampler.num_replicas, "dataset_size": len(self.dataset)}
        changed = [f"{k} {state[k]} -> {v}" for k, v in now.items() if k in state and state[k] != v]
        if changed:
            warnings.warn(f"the training data's order changed since the checkpoint ({', '.join(changed)}): the "
                          f"resumed epoch {epoch} restarts from its first batch", stacklevel=2)
            done = 0
        elif state.get("batch_size", self.batch_size) != self.batch_size:
            seen = done * int(state["batch_size"])
            done = seen // self.batch_size
            warnings.warn(f"batch size changed since the checkpoint ({state['batch_size']} -> {self.batch_size}): "
                          f"the resumed epoch skips {done * self.batch_size} of the {seen} images seen", stacklevel=2)
        self.sampler.set_epoch(epoch)
        self.sampler.skip_next(done * self.batch_size)
        self._position = (epoch, done)


class IdentityFolderDataModule(pl.LightningDataModule):
    """Folder-per-identity training data (a synthetic dataset from ``exface synthesize``).

    Args:
        root: dataset folder with one sub-folder per identity.
        image_size: (H, W) images are resized to (the backbone's input size).
        batch_size: images per step and device (the global batch is this x devices).
        num_workers: DataLoader workers.
        flip: random horizontal flip (p = 0.5).
        randaugment: RandAugment ``[num_ops, magnitude]``; null: off. ExFaceGAN: [4, 16] with
            ``randaugment_variant: exfacegan``.
        randaugment_variant: ``torchvision`` (``v2.RandAugment``: every op at bin ``magnitude``)
            or ``exfacegan`` (:class:`ExFaceGANRandAugment`: bins drawn from 1..magnitude,
            ExFaceGAN's 13 ops).
        albumentations: an albumentations pipeline as ``A.to_dict`` writes it; null: none.
        in_memory: decode all images once into memory (small datasets, CPU training).
        val_fraction: fraction of the images held out for validation (classification accuracy
            on seen identities; 0 disables it). Face verification on real faces is
            :class:`~exface.fr.verification_callback.VerificationCallback`.
        seed: split seed.

    The training order is a permutation per epoch seeded by ``seed_everything``'s seed
    (``PL_GLOBAL_SEED``, 0 without one, as Lightning seeds its DistributedSampler) plus the
    epoch, saved in checkpoints with the loader's position (see the module doc).
    """

    def __init__(self, root: str, image_size: tuple[int, int] = (112, 112), batch_size: int = 128,
                 num_workers: int = 2, flip: bool = True, randaugment: tuple[int, int] | None = None,
                 albumentations: dict[str, Any] | None = None, in_memory: bool = False,
                 val_fraction: float = 0.0, seed: int = 0,
                 randaugment_variant: Literal["torchvision", "exfacegan"] = "torchvision") -> None:
        super().__init__()
        self.root = root
        self.image_size = tuple(image_size)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augmentation = Augmentation(flip, randaugment, albumentations, randaugment_variant)
        self.in_memory = in_memory
        self.val_fraction = val_fraction
        self.seed = seed
        #: what is trained on besides the images themselves (a resume must match; see load_state_dict)
        self._data_settings = {"image_size": list(self.image_size), "flip": bool(flip),
                               "randaugment": None if randaugment is None else list(randaugment),
                               "randaugment_variant": randaugment_variant, "albumentations": albumentations,
                               "val_fraction": float(val_fraction), "seed": int(seed)}
        self.num_classes: int | None = None
        self._data_sha256: str | None = None
        self._listing: tuple[list[Path], list[int]] | None = None
        self._train = self._val = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        paths, labels, names = list_identity_folder(self.root)
        if len(names) < 2:
            from exface.errors import ExfaceError

            raise ExfaceError(f"the training data has {len(names)} identity; a classification loss needs at least 2 "
                              f"(with one, every margin loss is 0 and nothing trains)", where=self.root,
                              fix="train on a dataset of two or more identities")
        self.num_classes = len(names)
        self._listing = (paths, labels)  # fingerprinted when a checkpoint needs it (fit only)
        rng = np.random.default_rng(self.seed)
        val_mask = rng.random(len(paths)) < self.val_fraction
        pick = lambda m: ([p for p, k in zip(paths, m) if k], [lab for lab, k in zip(labels, m) if k])  # noqa: E731
        self._train = IdentityFolderDataset(*pick(~val_mask), self.image_size, self.augmentation, self.in_memory)
        if val_mask.any():
            self._val = IdentityFolderDataset(*pick(val_mask), self.image_size, None, self.in_memory)

    def train_dataloader(self) -> ResumableDataLoader:
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochShuffleSampler(self._train, num_replicas=world, rank=rank,
                                      seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        return ResumableDataLoader(self._train, batch_size=self.batch_size, sampler=sampler,
                                   drop_last=len(sampler) > self.batch_size, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self._val is None:
            return []
        return DataLoader(self._val, batch_size=self.batch_size, num_workers=self.num_workers)

    # ------------------------------------------------------------------ checkpoints
    @property
    def data_sha256(self) -> str | None:
        """:func:`training_data_sha256` of the data ``setup`` listed (computed once, when first asked: a
        checkpoint's save or restore, so ``validate``/``test`` never pay for it); None before ``setup``."""
        if self._data_sha256 is None and self._listing is not None:
            self._data_sha256 = training_data_sha256(self.root, *self._listing)
        return self._data_sha256

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint's model was trained on: the dataset's fingerprint and the data settings."""
        if self.data_sha256 is None:
            return {}
        return {"data_sha256": self.data_sha256, "images": len(self._train) + (len(self._val) if self._val else 0),
                "identities": self.num_classes, **self._data_settings}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse to resume on other training data or other data settings than the checkpoint's.

        Another dataset (another folder's images, or the same folder after more identities were
        synthesized into it) would silently mix two training sets in one model; another image size,
        augmentation or validation split would mix two trainings. The per-device ``batch_size`` and
        ``num_workers``/``in_memory`` may change (the global batch is compared by the model); the
        folder may move (``root`` is not compared, its contents are).
        """
        from exface.resume_check import check_data_resume

        if not state or self._listing is None:
            return

        def other_images() -> list[str]:  # only when fitting: the fingerprint costs a stat per image
            if state.get("data_sha256") in (None, self.data_sha256):
                return []
            return [f"the training images: checkpoint {state.get('images')} images of {state.get('identities')} "
                    f"identities (sha256 {str(state['data_sha256'])[:12]}), this run "
                    f"{len(self._train) + (len(self._val) if self._val else 0)} of {self.num_classes} "
                    f"(sha256 {self.data_sha256[:12]}) in {self.root}"]

        check_data_resume(self, {k: state[k] for k in self._data_settings if k in state}, self._data_settings,
                          notes=other_images)
