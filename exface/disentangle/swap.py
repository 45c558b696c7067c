"""``exface swap`` and ``exface disentangle-report``: use a trained disentanglement checkpoint.

A checkpoint written by ``exface fit --config recipes/*_disentangle.yaml`` stores the trained
networks and the recipe's part configuration (LightningCLI's hyperparameters), so the
frozen networks are rebuilt from their own files (zoo entries, ``.pkl``/``.pth`` paths)
and nothing else is needed.

``exface swap`` renders an identity x attribute grid: the top row holds the attribute
sources, the left column the identity sources, cell (r, c) the face with identity r and
the pose/expression/lighting of c. Sources are generator seeds (rendered by the frozen
generator) or image files; files must be aligned like the generator's own faces (the same
crop and scale; they are resized to the generator's resolution).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from exface.commands import command

__all__ = ["read_checkpoint", "load_disentangle_checkpoint", "load_images", "swap", "swap_identity",
           "refuse_other_swap_grid", "disentangle_report", "SWAP_RECORD"]


def read_checkpoint(checkpoint: str | Path) -> dict:
    """The dict of a Lightning checkpoint, read with ``torch.load(weights_only=True)``.

    Loaders never run code from a pickle: a checkpoint of ``exface fit`` holds only tensors
    and plain data (numbers, strings, lists, dicts: Lightning's hyperparameters of a
    LightningCLI run are the recipe's configuration), which torch's weights-only unpickler
    builds without any extra allowed globals. Anything else (an object whose ``__reduce__``
    would call a function) is refused with an :class:`~exface.errors.ExfaceError`.
    """
    import pickle
    import re
    import zipfile

    from exface.errors import ExfaceError, ExfaceFileError

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: train first (exface fit --config recipes/dcgan_faceapi_disentangle.yaml) "
            f"and pass its checkpoints/last.ckpt"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        glob = re.search(r"GLOBAL (\S+)", text)  # torch names the global it refused
        if glob:
            raise ExfaceError(
                f"refusing to load the checkpoint: it pickles {glob.group(1)}, not only tensors and plain "
                f"data, and unpickling it could run code from the file",
                where=path,
                fix="use a checkpoint written by `exface fit` with a disentangle recipe; never load a file "
                    "from an untrusted source with weights_only=False",
            ) from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        detail = [ln for ln in lines if "WeightsUnpickler error" in ln or "Unsupported operand" in ln]
        why = (detail[-1] if detail else (lines[0] if lines else type(err).__name__))[:300]
        raise ExfaceFileError(f"not a readable checkpoint (torch's weights-only reader: {why})", where=path,
                              fix="pass a checkpoints/*.ckpt of `exface fit` (this file is damaged or is not one)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise ExfaceFileError(f"not a readable checkpoint ({type(err).__name__}: {str(err)[:300]})", where=path,
                              fix="pass a checkpoints/*.ckpt of `exface fit` (this file is truncated or damaged)") from None
    if not isinstance(data, dict):
        raise ExfaceError(f"not a Lightning checkpoint (a pickled {type(data).__name__}, not a dict)", where=path,
                          fix="pass a checkpoints/*.ckpt of `exface fit`")
    return data


def load_disentangle_checkpoint(checkpoint: str | Path, device: str = "cpu"):
    """A :class:`~exface.disentangle.module.DisentangleModule` from a checkpoint of ``exface fit``, in eval mode.

    The file is read without running code from it (:func:`read_checkpoint`)."""
    from exface.disentangle.module import DisentangleModule

    path = Path(checkpoint)
    hp = read_checkpoint(path).get("hyper_parameters") or {}
    if not isinstance(hp, dict) or "_instantiator" not in hp:
        raise ValueError(
            f"{path} does not record its parts (it was not written by `exface fit`); build the "
            f"DisentangleModule in Python and call DisentangleModule.load_from_checkpoint({str(path)!r}, **parts)"
        )
    return DisentangleModule.load_from_checkpoint(path, map_location=device, weights_only=True).eval()


def load_images(paths: list[str], resolution: int) -> Tensor:
    """Image files -> ``[N, 3, resolution, resolution]`` in [-1, 1] RGB (bilinear resize)."""
    from PIL import Image

    from PIL import UnidentifiedImageError

    from exface.errors import ExfaceFileError

    out = []
    for p in paths:
        if not Path(p).is_file():
            raise ExfaceFileError(f"no image file {p}", where=p, fix="pass existing image files (PNG, JPEG, ...)")
        try:
            img = Image.open(p).convert("RGB").resize((resolution, resolution), Image.BILINEAR)
        except (UnidentifiedImageError, OSError) as err:
            raise ExfaceFileError(f"{Path(p).name} is not a readable image ({type(err).__name__}: {str(err)[:200]})",
                                  where=p, fix="pass image files (PNG, JPEG, ...) aligned like the generator's faces"
                                  ) from None
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1.0)
    return torch.stack(out)


def _check_sources(seeds: list[int] | None, images: list[str] | None, who: str) -> None:
    from exface.errors import ExfaceError

    if bool(seeds) == bool(images):
        raise ExfaceError(f"give either --{who}_seeds or --{who}_images (one of them, not both)",
                          where=f"--{who}_seeds / --{who}_images",
                          fix=f"e.g. --{who}_seeds '[1, 2, 3]', or --{who}_images '[a.png, b.png]'")


def _sources(module, seeds: list[int] | None, images: list[str] | None, who: str) -> Tensor:
    _check_sources(seeds, images, who)
    if images:
        return load_images(images, module.generator.resolution).to(module.device)
    with torch.no_grad():
        return module.render(module.latents(torch.tensor(seeds)))


@command("swap")
def swap(checkpoint: str, output: str = "swap_grid.png", id_seeds: list[int] | None = None,
         attr_seeds: list[int] | None = None, id_images: list[str] | None = None,
         attr_images: list[str] | None = None, device: str = "cpu") -> None:
    """Render an identity x attribute grid from a trained disentanglement checkpoint.

    Args:
        checkpoint: a checkpoint of `exface fit --config recipes/*_disentangle.yaml` (e.g. checkpoints/last.ckpt).
        output: the PNG to write (top row: attribute sources; left column: identity sources). It
            records what made it (the checkpoint's sha256, the seeds or image files) in a PNG text
            chunk; an existing file is replaced only by the same grid.
        id_seeds: generator seeds of the identity sources (or give id_images).
        attr_seeds: generator seeds of the attribute sources (or give attr_images).
        id_images: image files of the identity sources, aligned like the generator's faces.
        attr_images: image files of the attribute sources, aligned like the generator's faces.
        device: cpu or cuda.
    """
    import json

    from exface.disentangle.evaluation import save_png, swap_grid

    _check_sources(id_seeds, id_images, "id")
    _check_sources(attr_seeds, attr_images, "attr")
    made_by = swap_identity(checkpoint, id_seeds, id_images, attr_seeds, attr_images)
    refuse_other_swap_grid(output, made_by)  # before loading the networks and rendering
    m = load_disentangle_checkpoint(checkpoint, device)
    ids = _sources(m, id_seeds, id_images, "id")
    attrs = _sources(m, attr_seeds, attr_images, "attr")
    with torch.no_grad():
        outs = torch.stack([m.swap(ids[r:r + 1].expand_as(attrs), attrs) for r in range(len(ids))])
    path = save_png(swap_grid(ids, attrs, outs), output, text={SWAP_RECORD: json.dumps(made_by, sort_keys=True)})
    print(f"wrote {path} ({len(ids)} identities x {len(attrs)} attribute sources)")


#: The PNG text chunk in which ``exface swap`` records what made the grid.
SWAP_RECORD = "exface-swap"


def swap_identity(checkpoint: str | Path, id_seeds: list[int] | None, id_images: list[str] | None,
                  attr_seeds: list[int] | None, attr_images: list[str] | None) -> dict:
    """What makes a swap grid: the checkpoint (resolved path, sha256) and each side's seeds, or its
    image files (resolved paths, sha256), in order."""
    from exface.report_dir import file_sha256

    ck = Path(checkpoint)
    ident: dict = {"made_by": "exface swap",
                   "checkpoint": {"path": str(ck.resolve()), "sha256": file_sha256(ck) if ck.is_file() else None}}
    for who, seeds, images in (("id", id_seeds, id_images), ("attr", attr_seeds, attr_images)):
        if images:
            ident[f"{who}_images"] = [{"path": str(Path(p).resolve()),
                                       "sha256": file_sha256(p) if Path(p).is_file() else None} for p in images]
        else:
            ident[f"{who}_seeds"] = [int(v) for v in seeds or []]
    return ident


def refuse_other_swap_grid(output: str | Path, made_by: dict) -> None:
    """Refuse to replace ``output`` unless it is a swap grid of the same checkpoint and sources (then it
    is rendered again); a folder, or a file that is not an ``exface swap`` grid, is refused too."""
    import json

    from PIL import Image, UnidentifiedImageError

    from exface.errors import ExfaceError, ExfaceStateError
    from exface.report_dir import identity_differences

    path = Path(output)
    if path.is_dir():
        raise ExfaceError(f"--output {path} is a folder, not a PNG file", where="--output",
                          fix=f"pass a file path, e.g. --output {path / 'swap_grid.png'}")
    if not path.exists():
        return
    fix = f"pass another --output for this grid, or delete {path} if the old one is no longer needed"
    try:
        with Image.open(path) as img:
            img.load()
            record = img.text.get(SWAP_RECORD) if hasattr(img, "text") else None
    except (OSError, UnidentifiedImageError):
        record = None
    try:
        old = json.loads(record) if record else None
    except ValueError:
        old = None
    if not isinstance(old, dict):
        raise ExfaceStateError(f"{path.name} exists and is not a grid written by `exface swap`; it is not overwritten",
                               where=path, fix=fix)
    diffs = identity_differences(old, made_by, holder="the file")
    if diffs:
        raise ExfaceStateError(f"{path.name} holds another swap grid; it is not overwritten:\n  " + "\n  ".join(diffs[:10]),
                               where=path, fix=fix)


@command("disentangle-report")
def disentangle_report(checkpoint: str, output_dir: str, pairs: int | None = None, batch_size: int | None = None,
                       device: str = "cpu") -> None:
    """Evaluate a disentanglement checkpoint on held-out pairs and write report.md/json and swap_grid.png.

    Args:
        checkpoint: a checkpoint of `exface fit --config recipes/*_disentangle.yaml`.
        output_dir: folder for report.md, report.json, per_pair.npz, swap_grid.png.
        pairs: held-out cross-identity pairs (as many same-image pairs are reconstructed); default:
            the recipe's report_pairs, so that the report (and its grid's seeds) match the one
            written at the end of training.
        batch_size: pairs per evaluation batch (default: the recipe's eval_batch_size; smaller uses less memory).
        device: cpu or cuda.
    """
    import logging
    import time

    from exface.errors import ExfaceError

    for name, value in (("pairs", pairs), ("batch_size", batch_size)):
        if value is not None and int(value) < 1:
            raise ExfaceError(f"--{name} must be at least 1, got {value}", where=f"--{name}",
                              fix=f"pass --{name} 1 or more, or leave it out for the recipe's value")
    logging.getLogger("exface.disentangle").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s")
    m = load_disentangle_checkpoint(checkpoint, device)
    if batch_size is not None:
        m.eval_batch_size = int(batch_size)
    ck = read_checkpoint(checkpoint)
    t0 = time.time()
    result = m.report(output_dir, pairs=pairs, settings={
        "checkpoint": str(checkpoint), "global_step": ck.get("global_step"),
        "batches_trained": ck.get("GeneratorPairDataModule", {}).get("consumed"),
    })
    print(result["verdict"])
    print(f"report in {output_dir} ({time.time() - t0:.0f} s)")
