"""Readers for face-verification pair sets: insightface ``.bin`` files and LFW ``pairs.txt``.

Both give a :class:`VerificationSet`: the images (decoded, or files to decode on demand),
the pairs as index pairs into them, the same/different labels, and each pair's official
fold when the format has one.

The ``.bin`` format is a pickle, and unpickling runs code named in the file. These files
are downloaded from third parties, so :func:`load_insightface_bin` uses a restricted
unpickler: only lists, tuples, bytes, bools, and uint8/bool numpy arrays and scalars can be
built, through stand-ins for the numpy globals such files name (they validate and copy raw
data; no numpy object is unpickled), plus ``_codecs.encode`` limited to rebuilding bytes
(how Python 3 writes ``bytes`` at protocol 2); any other global is refused.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from exface.errors import ExfaceFileError

__all__ = ["VerificationSet", "load_insightface_bin", "load_lfw_pairs", "load_verification_set", "lfw_variant", "LFW_LAYOUTS", "write_insightface_bin", "build_aligned_bin"]


@dataclass
class VerificationSet:
    """Pairs of face images labelled same/different person.

    ``images`` holds decoded RGB uint8 ``[M, H, W, 3]`` faces (``.bin``), or is ``None`` and
    ``paths`` names the ``M`` files (LFW). ``pairs[i] = (a, b)`` indexes them. ``folds`` is the
    official fold id per pair, or ``None`` when the format has none. ``aligned`` says whether
    the images are already aligned crops (``.bin``: ArcFace-aligned 112x112) or raw photos.
    """

    name: str
    pairs: np.ndarray
    issame: np.ndarray
    folds: np.ndarray | None = None
    images: np.ndarray | None = None
    paths: list[Path] | None = None
    aligned: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.paths is None):
            raise ValueError("give exactly one of images or paths")
        n = len(self.images) if self.images is not None else len(self.paths)
        if self.pairs.ndim != 2 or self.pairs.shape[1] != 2 or len(self.pairs) != len(self.issame):
            raise ValueError(f"pairs must be [P, 2] with one issame per pair, got {self.pairs.shape}, {self.issame.shape}")
        if len(self.pairs) and (self.pairs.min() < 0 or self.pairs.max() >= n):
            raise ValueError(f"pair indices must lie in 0..{n - 1}")

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def num_images(self) -> int:
        return len(self.images) if self.images is not None else len(self.paths)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as RGB uint8 ``[H, W, 3]``."""
        if self.images is not None:
            return self.images[i]
        return _read_rgb(self.paths[i])


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    from exface.errors import ExfaceFileError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated, not an image, bad header
        raise ExfaceFileError(f"cannot decode the image ({err})", where=path,
                              fix="replace or remove that file (re-extract the dataset)") from err


def _decode_jpeg(data: bytes, path: Path, index: int) -> np.ndarray:
    """Decode one encoded face of a ``.bin`` to RGB uint8, refusing damaged data.

    JPEGs are decoded by libjpeg-turbo through simplejpeg in strict mode: what libjpeg only
    warns about (corrupt entropy data, extraneous bytes, a premature end: the marks a bit flip
    or a truncation leaves) is an error here, where OpenCV and Pillow print it, or nothing, and
    return the damaged pixels. JPEG has no checksum, so a flip that leaves a decodable stream
    (most flips in the DC/AC data resynchronize) cannot be seen by any decoder; the benchmark
    records the file's sha256 for that. PNG entries (CRC-checked) go through OpenCV.
    """
    from exface.errors import ExfaceFileError

    if data[:2] == b"\xff\xd8":
        import simplejpeg

        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        except ValueError as err:
            raise ExfaceFileError(f"image {index} (pair {index // 2}) is a damaged JPEG (libjpeg: {err})", where=path,
                                  fix="download or copy the .bin file again (its bytes changed)") from err
    import cv2

    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ExfaceFileError(f"image {index} (pair {index // 2}) is not a decodable image (JPEG/PNG)", where=path,
                              fix="download or copy the .bin file again (it is damaged)")
    return np.ascontiguousarray(img[:, :, ::-1])  # OpenCV decodes to BGR


# --------------------------------------------------------------------------- insightface .bin


class _DtypeStub:
    """What the restricted unpickler builds for ``numpy.dtype(...)``: uint8 or bool only.

    A stand-in rather than a real ``np.dtype``, because pickle's BUILD would call
    ``__setstate__`` on it, and numpy's builtin dtypes are shared singletons.
    """

    def __init__(self, spec: Any, align: bool = False, copy: bool = False) -> None:
        name = spec.decode() if isinstance(spec, bytes) else spec
        if name in ("u1", "|u1", "uint8"):
            self.dtype = np.dtype(np.uint8)
        elif name in ("b1", "|b1", "?", "bool"):
            self.dtype = np.dtype(bool)
        else:
            raise pickle.UnpicklingError(f"the .bin pickle asks for numpy dtype {name!r}; only uint8/bool are allowed")

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("|", "=", "<", ">", b"|")):
            raise pickle.UnpicklingError("the .bin pickle holds an unexpected numpy dtype state")
        if any(x is not None for x in state[2:5]):
            raise pickle.UnpicklingError("the .bin pickle holds a structured numpy dtype; only uint8/bool are allowed")


class _ArrayStub:
    """What the restricted unpickler builds for ``numpy.core.multiarray._reconstruct``; pickle's
    BUILD fills it through :meth:`__setstate__` and :func:`_materialize` swaps in the array."""

    def __init__(self, cls: Any, shape: Any = (0,), typecode: Any = b"b") -> None:
        if cls is not _NDARRAY:
            raise pickle.UnpicklingError("the .bin pickle reconstructs something other than a plain numpy array")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("the .bin pickle holds an unexpected numpy array state")
        _, shape, dt, fortran, raw = state
        if not isinstance(dt, _DtypeStub) or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("the .bin pickle holds a numpy array that is not raw uint8/bool data")
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise pickle.UnpicklingError("the .bin pickle holds a numpy array with a bad shape")
        arr = np.frombuffer(bytes(raw), dtype=dt.dtype)
        if arr.size != int(np.prod(shape)):
            raise pickle.UnpicklingError("the .bin pickle holds a numpy array whose data does not match its shape")
        self.array = arr.reshape(shape, order="F" if fortran else "C")


_NDARRAY = object()  # what the pickle gets for the global numpy.ndarray: a token, never the type


def _np_scalar(dtype: Any, data: Any = None) -> bool:
    """Stand-in for ``numpy.core.multiarray.scalar``: numpy bool labels (``np.True_``) only."""
    if not isinstance(dtype, _DtypeStub) or dtype.dtype != np.dtype(bool) or not isinstance(data, bytes) or len(data) != 1:
        raise pickle.UnpicklingError("the .bin pickle holds a numpy scalar that is not a bool")
    return bool(data[0])


def _codecs_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: how Python 3 pickles ``bytes`` with protocol 2
    (``encode(bytes.decode('latin1'), 'latin1')``). Only that exact round trip is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("the .bin pickle calls _codecs.encode other than to rebuild bytes")
    return text.encode("latin1")


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    """Stand-in for ``numpy.core.numeric._frombuffer`` (numpy arrays pickled with protocol 5)."""
    if not isinstance(dtype, _DtypeStub) or not isinstance(buf, (bytes, bytearray)):
        raise pickle.UnpicklingError("the .bin pickle holds a numpy array that is not raw uint8/bool data")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise pickle.UnpicklingError("the .bin pickle holds a numpy array with a bad shape")
    order = order.decode() if isinstance(order, bytes) else order
    if order not in ("C", "F"):
        raise pickle.UnpicklingError("the .bin pickle holds a numpy array with a bad memory order")
    arr = np.frombuffer(bytes(buf), dtype=dtype.dtype)
    if arr.size != int(np.prod(shape)):
        raise pickle.UnpicklingError("the .bin pickle holds a numpy array whose data does not match its shape")
    return arr.reshape(shape, order=order)


def _materialize(obj: Any) -> Any:
    """Replace array stand-ins by their arrays, through lists and tuples."""
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise pickle.UnpicklingError("the .bin pickle holds a numpy array without data")
        return obj.array
    if isinstance(obj, list):
        return [_materialize(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(x) for x in obj)
    return obj


class _BinUnpickler(pickle.Unpickler):
    """Unpickler for insightface ``.bin`` files that builds only data, never arbitrary objects."""

    _ALLOWED = {
        ("builtins", "list"): list,
        ("builtins", "tuple"): tuple,
        ("builtins", "bytes"): bytes,
        ("builtins", "bool"): bool,
        ("__builtin__", "list"): list,
        ("__builtin__", "tuple"): tuple,
        ("__builtin__", "bool"): bool,
        ("numpy", "dtype"): _DtypeStub,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy.core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy._core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy.core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
        ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
        ("_codecs", "encode"): _codecs_encode,
        ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a .bin file: a verification .bin holds only "
                f"JPEG bytes and booleans, so this file is not one (or is malicious)"
            ) from None


def _bin_issame(labels: Any, path: Path) -> np.ndarray:
    """The ``issame_list`` of a ``.bin`` as a bool array, accepting only labels that are
    unambiguous: Python/numpy bools and the integers 0 and 1 (any other value, e.g. the
    string ``'False'`` that ``bool()`` would read as True, is an error naming its index)."""
    from exface.errors import ExfaceError

    if not isinstance(labels, (list, tuple, np.ndarray)) or (isinstance(labels, np.ndarray) and labels.ndim != 1):
        raise ExfaceError(
            f"the issame list of the .bin is a {type(labels).__name__}"
            + (f" of shape {labels.shape}" if isinstance(labels, np.ndarray) else "")
            + ", expected a list of booleans (one per pair)",
            where=path, fix="use an insightface verification .bin (pickled (bins, issame_list)); rebuild the file")
    out = np.empty(len(labels), dtype=bool)
    for i, x in enumerate(labels):
        if isinstance(x, (bool, np.bool_)):
            out[i] = bool(x)
        elif isinstance(x, (int, np.integer)) and int(x) in (0, 1):
            out[i] = bool(int(x))
        else:
            shown = repr(x) if len(repr(x)) <= 60 else repr(x)[:57] + "..."
            raise ExfaceError(
                f"issame label {i} (of pair {i}) in the .bin is {shown} ({type(x).__name__}); labels must be "
                f"booleans or the integers 0/1",
                where=path, fix="use an insightface verification .bin whose issame_list holds True/False; rebuild the file")
    return out


class BinFileError(ExfaceFileError, pickle.UnpicklingError):
    """A verification ``.bin`` that is not a readable (or not a safe) insightface pickle."""


_BIN_FIX_DAMAGED = "download or copy the .bin again (it is truncated or damaged)"
_BIN_FIX_NOT_A_BIN = ("use an insightface verification .bin (lfw.bin, cfp_fp.bin, agedb_30.bin...: a pickled "
                      "(bins, issame_list)); download or copy it again")
#: the messages of this module's own refusals (a pickle that builds more than data)
_REFUSALS = ("refusing to load", "the .bin pickle holds")


def load_insightface_bin(path: str | Path, image_size: tuple[int, int] = (112, 112)) -> VerificationSet:
    """Read an insightface verification ``.bin`` (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin`` ...).

    The file is a pickle of ``(bins, issame_list)``: ``bins[2i]`` and ``bins[2i + 1]`` are the
    JPEG-encoded aligned faces of pair ``i`` (bytes, or 1-D uint8 arrays). Images are decoded to
    RGB uint8 and, if not already ``image_size`` (H, W), resized to it as insightface does.
    Folds are not stored in the format: :func:`evaluate_verification` splits contiguously.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise ExfaceFileError("the verification .bin does not exist", where=path,
                              fix="pass an insightface verification .bin file (lfw.bin, cfp_fp.bin...)")
    with path.open("rb") as f:
        try:
            obj = _materialize(_BinUnpickler(f, encoding="bytes").load())
        except pickle.UnpicklingError as err:  # refused, truncated or not a pickle: an UnpicklingError still
            if str(err).startswith(_REFUSALS):
                raise BinFileError(f"{err}", where=path, fix=_BIN_FIX_NOT_A_BIN) from err
            raise BinFileError(f"not a readable insightface .bin pickle (UnpicklingError: {err})", where=path,
                               fix=_BIN_FIX_DAMAGED) from err
        except Exception as err:  # truncated/garbled files raise all sorts of errors
            raise ExfaceFileError(f"not a readable insightface .bin pickle ({type(err).__name__}: {err})", where=path,
                                  fix=_BIN_FIX_DAMAGED) from err
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise ExfaceFileError(f"expected a pickled (bins, issame_list) pair, got {type(obj).__name__}", where=path,
                              fix=_BIN_FIX_NOT_A_BIN)
    bins, issame = obj
    issame = _bin_issame(issame, path)
    if len(bins) != 2 * len(issame):
        raise ExfaceFileError(f"{len(bins)} images for {len(issame)} pairs; expected two images per pair "
                              f"(the file is cut or was not written whole)", where=path, fix=_BIN_FIX_DAMAGED)
    h, w = image_size
    images = np.empty((len(bins), h, w, 3), dtype=np.uint8)
    for i, b in enumerate(bins):
        if isinstance(b, np.ndarray):
            b = b.tobytes()
        if not isinstance(b, (bytes, bytearray)):
            raise ExfaceFileError(f"image {i} is a {type(b).__name__}, expected encoded image bytes", where=path,
                                  fix=_BIN_FIX_NOT_A_BIN)
        img = _decode_jpeg(bytes(b), path, i)
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        images[i] = img
    pairs = np.arange(len(bins)).reshape(-1, 2)
    return VerificationSet(name=path.stem, pairs=pairs, issame=issame, images=images, aligned=True)


# --------------------------------------------------------------------------- LFW pairs.txt


#: Folder names of LFW's image variants, in the order they are preferred when several sit side
#: by side, with the variant each one is: the official tarballs unpack to ``lfw/``,
#: ``lfw-deepfunneled/`` and ``lfw_funneled/``; mirrors rename them (``images_deepfunneled/``,
#: scikit-learn's ``lfw_home/lfw_funneled/``, Kaggle's doubled ``lfw-deepfunneled/lfw-deepfunneled/``).
LFW_LAYOUTS = (
    ("lfw-deepfunneled", "deepfunneled"),
    ("lfw_deepfunneled", "deepfunneled"),
    ("images_deepfunneled", "deepfunneled"),
    ("deepfunneled", "deepfunneled"),
    ("lfw-funneled", "funneled"),
    ("lfw_funneled", "funneled"),
    ("images_funneled", "funneled"),
    ("funneled", "funneled"),
    ("lfw", "original"),
    ("images", "original"),
)


def lfw_variant(folder: str | Path) -> str:
    """Which LFW image variant a folder name suggests: ``deepfunneled``, ``funneled`` or
    ``original`` (any other name: LFW's original images, whose faces sit where Viola-Jones found them)."""
    name = Path(folder).name.lower().replace("-", "_")
    if "deep" in name and "funnel" in name:
        return "deepfunneled"
    if "funnel" in name:
        return "funneled"
    return "original"


def _lfw_image_root(image_dir: Path, some_name: str) -> Path:
    """The folder holding ``<Name>/`` subfolders: ``image_dir`` itself, a known LFW layout
    below it (:data:`LFW_LAYOUTS`, also doubled as Kaggle ships it), or else the one folder up
    to two levels down that holds ``<Name>/``."""
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"the image folder {image_dir} does not exist; pass --image_dir with the LFW folder "
            f"that holds one subfolder per person"
        )
    if (image_dir / some_name).is_dir():
        return image_dir
    for name, _ in LFW_LAYOUTS:
        for cand in (image_dir / name, image_dir / name / name, image_dir / "lfw_home" / name):
            if (cand / some_name).is_dir():
                return cand
    found = sorted(
        {p.parent for p in (*image_dir.glob(f"*/{some_name}"), *image_dir.glob(f"*/*/{some_name}")) if p.is_dir()}
    )
    if len(found) == 1:
        return found[0]
    if found:
        raise FileNotFoundError(
            f"several image folders under {image_dir} hold {some_name!r}/: "
            f"{', '.join(str(f) for f in found)}; pass --image_dir with the one to use"
        )
    raise FileNotFoundError(
        f"no folder {some_name!r} under {image_dir} (nor in its {', '.join(n + '/' for n, _ in LFW_LAYOUTS[:3])} "
        f"... or any subfolder two levels down); pass --image_dir with the LFW image folder that "
        f"holds one subfolder per person"
    )


def load_lfw_pairs(pairs_txt: str | Path, image_dir: str | Path | None = None) -> VerificationSet:
    """Read LFW's official ``pairs.txt`` (or ``pairsDevTest.txt``) and locate the images.

    Format: a header ``<folds> <pairs per class>`` (one number = one fold), then per fold that
    many matched lines ``Name n1 n2`` followed by as many mismatched lines ``Name1 n1 Name2 n2``
    (whitespace-separated; image ``n`` of ``Name`` is ``Name/Name_000n.jpg``). ``image_dir``
    defaults to the folder of ``pairs_txt``; it (or one of its :data:`LFW_LAYOUTS` folders, or
    the one subfolder up to two levels down holding the people) must hold the per-person
    folders. Every image must exist. ``folds`` gets the official fold; ``extra`` the image
    root and its variant (:func:`lfw_variant`: the benchmark's default face box depends on it).
    """
    pairs_txt = Path(pairs_txt)
    if not pairs_txt.is_file():
        raise ExfaceFileError("LFW's pairs.txt does not exist", where=pairs_txt,
                              fix="give LFW's pairs.txt (or its folder) in --datasets")
    lines = [ln.split() for ln in pairs_txt.read_text().splitlines() if ln.strip()]
    if not lines or not all(tok.isdigit() for tok in lines[0]) or len(lines[0]) not in (1, 2):
        raise ValueError(f"{pairs_txt}: the first line must be '<folds> <pairs per class>' (or one number)")
    n_folds, per_class = (1, int(lines[0][0])) if len(lines[0]) == 1 else map(int, lines[0])
    body = lines[1:]
    if len(body) != n_folds * 2 * per_class:
        raise ValueError(
            f"{pairs_txt}: the header promises {n_folds} folds x 2 x {per_class} pairs = "
            f"{n_folds * 2 * per_class} lines but the file has {len(body)}"
        )
    root = _lfw_image_root(Path(image_dir) if image_dir is not None else pairs_txt.parent, body[0][0])

    index: dict[tuple[str, int], int] = {}
    keys: list[tuple[str, int]] = []

    def idx(name: str, num: str, lineno: int) -> int:
        if not num.isdigit():
            raise ValueError(f"{pairs_txt} line {lineno}: image number {num!r} is not a number")
        key = (name, int(num))
        if key not in index:
            index[key] = len(keys)
            keys.append(key)
        return index[key]

    pairs, issame, folds = [], [], []
    for i, tok in enumerate(body):
        fold, pos = divmod(i, 2 * per_class)
        same = pos < per_class
        lineno = i + 2
        if same and len(tok) == 3:
            pairs.append((idx(tok[0], tok[1], lineno), idx(tok[0], tok[2], lineno)))
        elif not same and len(tok) == 4:
            pairs.append((idx(tok[0], tok[1], lineno), idx(tok[2], tok[3], lineno)))
        else:
            kind = "matched 'Name n1 n2'" if same else "mismatched 'Name1 n1 Name2 n2'"
            raise ValueError(f"{pairs_txt} line {lineno}: expected a {kind} line, got {' '.join(tok)!r}")
        issame.append(same)
        folds.append(fold)

    paths = [root / name / f"{name}_{num:04d}.jpg" for name, num in keys]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(paths)} images named by {pairs_txt} are missing under {root}, "
            f"e.g. {missing[0]}; pass --image_dir with the LFW image folder these pairs belong to"
        )
    return VerificationSet(
        name=f"lfw-{pairs_txt.stem}",
        pairs=np.asarray(pairs, dtype=np.int64),
        issame=np.asarray(issame, dtype=bool),
        folds=np.asarray(folds, dtype=np.int64),
        paths=paths,
        aligned=False,
        extra={"image_root": str(root), "official_folds": n_folds, "lfw_variant": lfw_variant(root)},
    )


def load_verification_set(path: str | Path, image_dir: str | Path | None = None) -> VerificationSet:
    """Open a ``.bin`` file, an LFW folder holding ``pairs.txt``, or ``pairs.txt`` itself.

    ``image_dir`` is the LFW image folder of a ``pairs.txt`` set (default: found beside it);
    ``.bin`` files hold their images and refuse it.
    """
    path = Path(path)
    if path.suffix == ".bin":
        if image_dir is not None:
            raise ValueError(f"{path} is an insightface .bin, which holds its own images; drop --image_dir")
        return load_insightface_bin(path)
    if path.is_dir():
        for name in ("pairs.txt", "pairsDevTest.txt"):
            if (path / name).is_file():
                return load_lfw_pairs(path / name, image_dir if image_dir is not None else path)
        raise FileNotFoundError(
            f"{path} has no pairs.txt; give the LFW pairs file itself in --datasets "
            f"(and its image folder as --image_dir)"
        )
    if path.suffix == ".txt":
        return load_lfw_pairs(path, image_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give an insightface .bin file, an LFW pairs.txt or its folder")
    raise ValueError(f"{path}: give an insightface .bin file, an LFW folder with pairs.txt, or a pairs.txt")


# --------------------------------------------------------------------------- writing .bin sets


def write_insightface_bin(
    path: str | Path, images: Sequence[np.ndarray], issame: Sequence[bool], quality: int = 95
) -> Path:
    """Write an insightface verification ``.bin``: ``(bins, issame_list)`` pickled, ``bins[2i]``
    and ``bins[2i + 1]`` the JPEG bytes of pair ``i``'s RGB uint8 ``[H, W, 3]`` images.

    Written atomically (a temporary file, then a rename). :func:`load_insightface_bin` reads it.
    """
    import os
    import tempfile

    import cv2

    path = Path(path)
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs; give two images per pair")
    bins = []
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image {i} must be RGB uint8 [H, W, 3], got {img.dtype} {img.shape}")
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ValueError(f"image {i} could not be JPEG-encoded")
        bins.append(buf.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump((bins, [bool(x) for x in issame]), f, protocol=4)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def build_aligned_bin(vs: VerificationSet, aligner: Any, path: str | Path, batch_size: int = 32, quality: int = 95) -> Path:
    """Align every image of a photo set (e.g. LFW ``pairs.txt``) with ``aligner`` (e.g.
    :class:`~exface.alignment.ArcFaceAligner` for insightface's 112x112 crops) and write the
    pairs as an insightface ``.bin``: the same pairs, as the ``.bin`` sets ship them."""
    import torch

    from exface.evaluation.benchmark import _image_batches
    from exface.tensors import to_uint8

    crops = np.zeros((vs.num_images, *aligner.output_size, 3), dtype=np.uint8)
    aligner = aligner.eval()
    with torch.no_grad():
        for start, x in _image_batches(vs, batch_size):
            crops[start : start + len(x)] = to_uint8(aligner(x)).permute(0, 2, 3, 1).numpy()
    images = [crops[i] for pair in vs.pairs for i in pair]
    return write_insightface_bin(path, images, vs.issame.tolist(), quality)
