"""Read NVIDIA StyleGAN2-ADA / StyleGAN3 network pickles without running their code.

An NVIDIA ``network-snapshot-*.pkl`` is a plain ``pickle.dump`` of a dict
``{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs', ...}``. Each network was
pickled by ``torch_utils.persistence``: its ``__reduce__`` makes the unpickler call
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` is a dict
``{type: 'class', version: 6, module_src: <the whole Python source of the network
module>, class_name, state}`` and ``state`` is the module's ``__dict__``
(``_parameters``/``_buffers``/``_modules`` ordered dicts, the constructor arguments
``_init_args``/``_init_kwargs``, plain attributes). NVIDIA's loader ``exec`` s that
source. Tensors inside are pickled the way torch pickles them into a plain pickle:
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` where each
storage is ``torch.storage._load_from_bytes(b)`` and ``b`` is a small legacy
``torch.save`` stream (magic number, protocol, sys info, a pickle whose persistent ids
are ``('storage', <torch.FloatStorage>, key, location, numel, view)``, the key list,
then each storage's int64 element count and raw little-endian bytes).

:class:`RestrictedUnpickler` resolves only a whitelist of globals (tensor/storage
rebuilding, ``collections.OrderedDict``, numpy array/scalar reconstruction, a few inert
builtins). NVIDIA's reconstruct function becomes :class:`PersistentRecord` (class
name, init args/kwargs, state; the embedded source is kept as text and never
executed), classes from the training code's namespaces (``training.*``,
``torch_utils.*``, ``dnnlib.*``, ``torch.nn.modules.*``...) become inert
:class:`InertObject` placeholders, and any other global (``os.system``,
``builtins.eval``, ``subprocess.Popen``...) raises :class:`UnsafePickleError` naming it
before anything is called. Module imports never happen.

:func:`load_stylegan` then builds exface's own network
(:class:`~exface.models.stylegan2.StyleGAN2Generator` or
:class:`~exface.models.stylegan3.StyleGAN3Generator`) from the recorded
``init_kwargs`` and loads the recorded tensors with ``strict=True``.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
import types
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "UnsafePickleError",
    "PersistentRecord",
    "InertObject",
    "RestrictedUnpickler",
    "safe_load",
    "load_network_pickle",
    "check_not_tensorflow",
    "load_stylegan",
    "generator_from_record",
    "record_tensors",
]


class UnsafePickleError(pickle.UnpicklingError):
    """The file references a global that exface will not resolve (code could run)."""


# ---------------------------------------------------------------------------------------
# Inert stand-ins


@dataclass
class PersistentRecord:
    """What ``_reconstruct_persistent_obj(meta)`` would have rebuilt, as data.

    ``module_src`` is the network source NVIDIA embedded in the pickle; it is kept only
    as text (e.g. to tell code versions apart) and never executed.
    """

    class_name: str
    module_src: str
    init_args: tuple
    init_kwargs: dict
    state: dict
    version: int | None = None

    @property
    def modules(self) -> "OrderedDict[str, Any]":
        return self.state.get("_modules") or OrderedDict()

    def child(self, name: str) -> Any:
        return self.modules.get(name)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    def __repr__(self) -> str:
        return (f"PersistentRecord({self.class_name}, init_kwargs={sorted(self.init_kwargs)}, "
                f"children={list(self.modules)})")


class InertObject:
    """Placeholder instance for a class the pickle names; records what the unpickler
    passes (constructor args, ``__setstate__`` state, dict/list items), runs nothing."""

    __module_path__ = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertObject":
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        obj.items, obj.list_items = {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.__module_path__}>"


_INERT_CLASSES: dict[str, type] = {}


def _inert_class(module: str, name: str) -> type:
    path = f"{module}.{name}"
    if path not in _INERT_CLASSES:
        _INERT_CLASSES[path] = type(name, (InertObject,), {"__module_path__": path})
    return _INERT_CLASSES[path]


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


# Namespaces whose classes may appear in training snapshots; they become inert records.
_INERT_NAMESPACES = (
    "training", "torch_utils", "dnnlib", "metrics", "legacy", "networks", "_imported_module_",
    "torch.nn.modules", "argparse",
)


def _is_inert_namespace(module: str) -> bool:
    return any(module == ns or module.startswith(ns + ".") or (ns.endswith("_") and module.startswith(ns))
               for ns in _INERT_NAMESPACES)


# ---------------------------------------------------------------------------------------
# Tensors and storages

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
_TORCH_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128,
              *(getattr(torch, n) for n in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2")
                if hasattr(torch, n)))
}


class _Sealed:
    """Base of the objects :meth:`RestrictedUnpickler.find_class` hands out: immutable.

    pickle's BUILD opcode writes into an object's ``__dict__`` (or calls ``setattr``)
    regardless of ``frozen=True``; these objects have no ``__dict__`` (``__slots__``),
    refuse ``setattr`` and answer BUILD (``__setstate__``) with an
    :class:`UnsafePickleError`, so a file cannot change what later loads get.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise UnsafePickleError(f"refusing to load: the pickle tries to modify {self!r} (attribute {name!r})")

    def __delattr__(self, name: str) -> None:
        raise UnsafePickleError(f"refusing to load: the pickle tries to modify {self!r}")

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"refusing to load: the pickle tries to set the state of {self!r} (BUILD)")


class _StorageType(_Sealed):
    """``torch.FloatStorage`` & co. named by a pickle: only its dtype matters."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        object.__setattr__(self, "dtype", dtype)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _StorageType) and other.dtype == self.dtype

    def __hash__(self) -> int:
        return hash(self.dtype)

    def __repr__(self) -> str:
        return f"_StorageType({self.dtype})"


class _SealedCallable(_Sealed):
    """An allowed function as the unpickler hands it out: callable, not modifiable
    (a bare function's ``__defaults__``/``__dict__`` could be rewritten by BUILD)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable) -> None:
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<allowed {getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', '?')}>"


class _Storage:
    """A flat tensor standing in for a torch storage; filled in place once its bytes
    are read, so tensors rebuilt as views of it before that see the data."""

    def __init__(self, dtype: torch.dtype, numel: int) -> None:
        self.dtype = dtype
        self.flat = torch.zeros(int(numel), dtype=dtype)

    def fill(self, raw: bytes) -> None:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        if len(raw) != self.flat.numel() * itemsize:
            raise pickle.UnpicklingError(
                f"storage data has {len(raw)} bytes, expected {self.flat.numel() * itemsize}; the file is truncated"
            )
        if raw:
            self.flat.copy_(torch.frombuffer(bytearray(raw), dtype=self.dtype))


def _as_flat(storage: Any) -> Tensor:
    if isinstance(storage, _Storage):
        return storage.flat
    raise pickle.UnpicklingError(f"expected a tensor storage, found {type(storage).__name__}")


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any, *_: Any) -> Tensor:
    flat = _as_flat(storage)
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(storage_offset)
    if any(n == 0 for n in size):
        return torch.empty(size, dtype=flat.dtype)
    end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if offset < 0 or any(s < 0 for s in stride) or end > flat.numel():
        raise pickle.UnpicklingError("a tensor reaches outside its storage; the file is corrupt")
    return flat.as_strided(size, stride, offset)


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: Any, stride: Any, requires_grad: bool = False,
                       backward_hooks: Any = None, metadata: Any = None) -> Tensor:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage: Any, storage_offset: int, size: Any, stride: Any, requires_grad: bool,
                       backward_hooks: Any, dtype: Any, metadata: Any = None) -> Tensor:
    """Tensors of newer dtypes are pickled over an untyped (byte) storage plus a dtype."""
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"expected a torch dtype, found {dtype!r}")
    flat = _as_flat(storage)
    typed = _Storage(dtype, 0)
    typed.flat = flat.view(torch.uint8).view(dtype) if flat.numel() else torch.empty(0, dtype=dtype)
    return _rebuild_tensor(typed, storage_offset, size, stride)


def _rebuild_parameter(data: Tensor, requires_grad: bool = False, backward_hooks: Any = None, *_: Any) -> Tensor:
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError(f"a parameter must wrap a tensor, found {type(data).__name__}")
    return data


class _TensorTypeMarker(_Sealed):
    """Marker for ``torch.Tensor`` / ``torch.nn.Parameter`` named as a type argument."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<torch.Tensor type marker>"


_TensorType = _TensorTypeMarker()


_REBUILDERS: set[Callable] = {_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter}


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    func = func.fn if isinstance(func, _SealedCallable) else func
    if func not in _REBUILDERS:
        raise UnsafePickleError(f"_rebuild_from_type_v2 may only call tensor rebuilders, not {func!r}")
    return func(*args)


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is only allowed for latin1 bytes (protocol-2 pickles)")
    return text.encode("latin1")


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, (InertObject, _EasyDict)):
        obj = cls.__new__(cls)
        if state is not None and issubclass(cls, _EasyDict):
            obj.update(state)
        return obj
    if cls in (OrderedDict, dict, set, list) and base in (object, dict, set, list):
        return cls() if state is None else cls(state)
    raise UnsafePickleError(f"copyreg._reconstructor of {cls!r} is not allowed")


_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001


def _load_storage_from_bytes(blob: bytes) -> Any:
    """``torch.storage._load_from_bytes``: parse the legacy ``torch.save`` stream."""
    return _load_legacy_torch_stream(io.BytesIO(blob))


def _load_legacy_torch_stream(f: BinaryIO) -> Any:
    magic = RestrictedUnpickler(f).load()
    if magic != _MAGIC_NUMBER:
        raise pickle.UnpicklingError("not a torch.save stream (bad magic number)")
    protocol = RestrictedUnpickler(f).load()
    if protocol != _PROTOCOL_VERSION:
        raise pickle.UnpicklingError(f"unsupported legacy torch.save protocol {protocol}")
    sys_info = RestrictedUnpickler(f).load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise pickle.UnpicklingError("big-endian torch.save streams are not supported")
    storages: dict[str, _Storage] = {}
    views: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or _ascii(pid[0]) != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r} in a torch.save stream")
        storage_type, key, _location, numel, view = pid[1:6]
        dtype = _storage_dtype(storage_type)
        key = _ascii(key)
        if key not in storages:
            storages[key] = _Storage(dtype, numel)
        if view is None:
            return storages[key]
        view_key, offset, view_size = view
        if view_key not in views:
            v = _Storage(dtype, 0)
            v.flat = storages[key].flat[int(offset): int(offset) + int(view_size)]
            views[view_key] = v
        return views[view_key]

    result = RestrictedUnpickler(f, storages=persistent_load).load()
    keys = RestrictedUnpickler(f).load()
    for key in keys:
        storage = storages[_ascii(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        itemsize = torch.empty((), dtype=storage.dtype).element_size()
        if numel != storage.flat.numel():
            raise pickle.UnpicklingError(f"storage {key} holds {numel} elements, expected {storage.flat.numel()}")
        storage.fill(f.read(numel * itemsize))
    return result


def _ascii(v: Any) -> str:
    return v.decode("ascii") if isinstance(v, bytes) else str(v)


def _storage_dtype(storage_type: Any) -> torch.dtype:
    if isinstance(storage_type, _StorageType):
        return storage_type.dtype
    raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")


def _reconstruct_record(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or "state" not in meta:
        raise pickle.UnpicklingError("torch_utils.persistence record without state; not an NVIDIA network pickle")
    if meta.get("type", "class") != "class":
        raise pickle.UnpicklingError(f"unsupported persistent object type {meta.get('type')!r}")
    state = dict(meta["state"]) if meta["state"] is not None else {}
    return PersistentRecord(
        class_name=str(meta.get("class_name", "?")),
        module_src=str(meta.get("module_src", "")),
        init_args=tuple(state.get("_init_args", ()) or ()),
        init_kwargs=dict(state.get("_init_kwargs", {}) or {}),
        state=state,
        version=meta.get("version"),
    )


def _safe_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TensorType,
        ("torch.nn.parameter", "Parameter"): _TensorType,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("builtins", "range"): range,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "object"): object,
        ("_codecs", "encode"): _codecs_encode,
        ("copyreg", "_reconstructor"): _copyreg_reconstructor,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_record,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = np.ndarray.__reduce__(np.zeros(0))[0]
        table[(mod, "scalar")] = np.float64(0).__reduce__()[0]
    for name, dtype in _STORAGE_DTYPES.items():
        table[("torch", name)] = _StorageType(dtype)
        table[("torch.cuda", name)] = _StorageType(dtype)
    table[("torch.storage", "UntypedStorage")] = _StorageType(torch.uint8)
    for name, dtype in _TORCH_DTYPES.items():
        table[("torch", name)] = dtype
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "Int16DType",
                 "Int8DType", "UInt8DType", "BoolDType"):
        dtype_cls = getattr(getattr(np, "dtypes", None), name, None)
        if dtype_cls is not None:
            table[("numpy.dtypes", name)] = dtype_cls
    return {k: _SealedCallable(v) if isinstance(v, types.FunctionType) else v for k, v in table.items()}


_SAFE_GLOBALS = _safe_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only whitelisted globals; see the module doc.

    ``storages`` resolves the persistent ids of torch's storage records (torch.save
    streams); plain pickles have none.
    """

    def __init__(self, file: BinaryIO, storages: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python-2 modules (__builtin__.set, copy_reg...).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        hit = _SAFE_GLOBALS.get((module, name))
        if hit is not None:
            return hit
        if _is_inert_namespace(module):
            return _inert_class(module, name)
        raise UnsafePickleError(
            f"refusing to load: the pickle references the global {module}.{name}, which exface "
            f"does not allow (it could run code). Only tensors, numpy arrays, basic containers and "
            f"NVIDIA/torch training-code records are read. If this file is trustworthy and needs "
            f"its own code, convert it with that code first."
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is not None:
            return self._storages(pid)
        raise pickle.UnpicklingError(
            f"unexpected persistent id {pid!r}: this is not a plain pickle; pass the file to safe_load()"
        )


# ---------------------------------------------------------------------------------------
# File formats


def _load_torch_zip(path_or_buf: Any) -> Any:
    with zipfile.ZipFile(path_or_buf) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise pickle.UnpicklingError("zip file without data.pkl: not a torch.save checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        # torch.save records the writer's byte order (``byteorder``: ``little``/``big``;
        # files older than torch 1.12 have none and are little-endian). Storages are read
        # as this machine's little-endian bytes, so a big-endian file would load as garbage.
        if f"{prefix}byteorder" in names:
            order = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order == "big":
                raise pickle.UnpicklingError(
                    "big-endian torch.save zip checkpoints are not supported (its byteorder record "
                    "says 'big'); re-save it with torch.save on a little-endian machine"
                )
            if order != "little":
                raise pickle.UnpicklingError(
                    f"the torch zip checkpoint's byteorder record is {order[:20]!r}, not 'little' or 'big'; "
                    f"the file is damaged"
                )
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> Any:
            if not isinstance(pid, tuple) or not pid or _ascii(pid[0]) != "storage":
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r} in a torch zip checkpoint")
            storage_type, key, _location, numel = pid[1:5]
            key = _ascii(key)
            if key not in storages:
                dtype = _storage_dtype(storage_type)
                st = _Storage(dtype, numel)
                st.fill(zf.read(f"{prefix}data/{key}"))
                storages[key] = st
            return storages[key]

        with zf.open(pkl[0]) as f:
            return RestrictedUnpickler(io.BytesIO(f.read()), storages=persistent_load).load()


def safe_load(source: str | Path | bytes | BinaryIO) -> Any:
    """Load a plain pickle, a ``torch.save`` zip checkpoint or a legacy ``torch.save``
    stream through :class:`RestrictedUnpickler`. Raises :class:`UnsafePickleError` for
    files that reference non-whitelisted globals."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        data = path.read_bytes()
    elif isinstance(source, bytes):
        data = source
    else:
        data = source.read()
    if data[:4] == b"PK\x03\x04":
        return _load_torch_zip(io.BytesIO(data))
    f = io.BytesIO(data)
    first = RestrictedUnpickler(f).load()
    if isinstance(first, int) and first == _MAGIC_NUMBER:
        return _load_legacy_torch_stream(io.BytesIO(data))
    if f.tell() != len(data):
        raise pickle.UnpicklingError("trailing data after the pickle; not a network pickle")
    return first


# ---------------------------------------------------------------------------------------
# NVIDIA network pickles -> exface networks


def check_not_tensorflow(data: Any, path: Any) -> None:
    """TensorFlow-era pickles are a tuple ``(G, D, Gs)`` of ``dnnlib.tflib`` networks."""
    if isinstance(data, tuple) and len(data) == 3 and all(isinstance(x, InertObject) for x in data):
        raise ValueError(
            f"{path} is a TensorFlow StyleGAN/StyleGAN2 pickle (dnnlib.tflib networks); exface reads the "
            f"PyTorch pickles of stylegan2-ada-pytorch / stylegan3. Convert it with NVIDIA's legacy.py "
            f"(stylegan2-ada-pytorch: python legacy.py --source=in.pkl --dest=out.pkl) first."
        )


def load_network_pickle(path: str | Path) -> dict[str, Any]:
    """The snapshot dict of an NVIDIA pickle with networks as :class:`PersistentRecord` s."""
    data = safe_load(path)
    check_not_tensorflow(data, path)
    if not isinstance(data, dict) or not any(isinstance(v, PersistentRecord) for v in data.values()):
        raise ValueError(
            f"{path} is not an NVIDIA StyleGAN2-ADA/StyleGAN3 network pickle (expected a dict with "
            f"'G_ema' etc. saved by torch_utils.persistence); got {type(data).__name__}"
            + (f" with keys {sorted(map(str, data))}" if isinstance(data, dict) else "")
        )
    return data


def record_tensors(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """Flatten a recorded module tree into a state dict (persistent parameters/buffers)."""
    state = obj.state if isinstance(obj, (PersistentRecord, InertObject)) else None
    if not isinstance(state, dict):
        return {}
    out: dict[str, Tensor] = {}
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, Tensor):
                raise ValueError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        out.update(record_tensors(child, f"{prefix}{name}."))
    return out


_G_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
_G_TOP = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"}


def _plain(v: Any) -> Any:
    """numpy scalars/EasyDicts -> plain Python values for constructor kwargs."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v) if isinstance(v, list) else tuple(_plain(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _generator_kwargs(record: PersistentRecord) -> dict[str, Any]:
    kwargs = dict(zip(_G_POSITIONAL, record.init_args))
    kwargs.update(record.init_kwargs)
    kwargs = _plain(kwargs)
    missing = [k for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels") if k not in kwargs]
    if missing:
        raise ValueError(f"the {record.class_name} record lacks constructor arguments {missing}")
    synthesis = dict(kwargs.pop("synthesis_kwargs", None) or {})
    for key in [k for k in kwargs if k not in _G_TOP]:  # stylegan3 code: **synthesis_kwargs
        synthesis[key] = kwargs.pop(key)
    kwargs["mapping_kwargs"] = dict(kwargs.get("mapping_kwargs") or {})
    kwargs["synthesis_kwargs"] = synthesis
    return kwargs


def _is_stylegan3(record: PersistentRecord) -> bool:
    synthesis = record.child("synthesis")
    if synthesis is None:
        raise ValueError(f"the {record.class_name} record has no 'synthesis' network; not a StyleGAN generator")
    children = synthesis.modules if isinstance(synthesis, PersistentRecord) else {}
    if "input" in children:
        return True
    if "b4" in children:
        return False
    raise ValueError(
        f"cannot tell the generator architecture: synthesis has modules {list(children)}; "
        f"expected StyleGAN2 blocks (b4, b8, ...) or a StyleGAN3 input layer"
    )


def _stylegan2_defaults(record: PersistentRecord, synthesis: dict[str, Any]) -> None:
    """Fill the arguments the two NVIDIA code bases default differently.

    stylegan2-ada-pytorch defaults to ``num_fp16_res=0, conv_clamp=None``, the stylegan3
    repository's StyleGAN2 to ``4, 256``. Their training scripts pass both explicitly;
    when they are absent (networks converted from TensorFlow) the values the network was
    actually built with are read from the recorded layers.
    """
    syn = record.child("synthesis")
    blocks = [syn.child(n) for n in syn.modules if n.startswith("b")] if isinstance(syn, PersistentRecord) else []
    if "conv_clamp" not in synthesis and blocks:
        layer = blocks[0].child("conv1") if isinstance(blocks[0], PersistentRecord) else None
        if isinstance(layer, PersistentRecord) and "conv_clamp" in layer.state:
            synthesis["conv_clamp"] = _plain(layer.state["conv_clamp"])
    if "num_fp16_res" not in synthesis:
        if isinstance(syn, PersistentRecord) and "num_fp16_res" in syn.state:
            synthesis["num_fp16_res"] = int(syn.state["num_fp16_res"])
        elif blocks and all(isinstance(b, PersistentRecord) and "use_fp16" in b.state for b in blocks):
            synthesis["num_fp16_res"] = sum(bool(b.state["use_fp16"]) for b in blocks)
        else:
            synthesis["num_fp16_res"] = 4 if "fused_modconv_default" in record.module_src else 0
    if "conv_clamp" not in synthesis:
        synthesis["conv_clamp"] = 256 if "fused_modconv_default" in record.module_src else None
    # Arguments NVIDIA's blocks accept that only affect speed or training.
    for key in ("fp16_channels_last", "fused_modconv_default"):
        synthesis.pop(key, None)


def generator_from_record(record: PersistentRecord) -> nn.Module:
    """Build exface's StyleGAN2/3 network from a recorded NVIDIA ``Generator`` and load
    its tensors (strictly: every parameter and buffer must match by name and shape)."""
    from exface.models.stylegan2 import StyleGAN2Generator
    from exface.models.stylegan3 import StyleGAN3Generator

    if not isinstance(record, PersistentRecord):
        raise ValueError(f"expected a recorded NVIDIA network, got {type(record).__name__}")
    kwargs = _generator_kwargs(record)
    if _is_stylegan3(record):
        kwargs["synthesis_kwargs"].pop("fused_modconv_default", None)
        net: nn.Module = StyleGAN3Generator(**kwargs)
    else:
        _stylegan2_defaults(record, kwargs["synthesis_kwargs"])
        net = StyleGAN2Generator(**kwargs)
    tensors = record_tensors(record)
    own = net.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if tuple(own[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"the pickle's {record.class_name} does not match the network built from its init_kwargs "
            f"({kwargs}): missing {missing[:8]}, unexpected {unexpected[:8]}, shape mismatch {wrong[:8]}. "
            f"This variant of the architecture is not supported."
        )
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)
    return net.eval().requires_grad_(False)


def load_stylegan(path: str | Path, key: str = "G_ema") -> nn.Module:
    """Load ``key`` (``'G_ema'`` by default; ``'G'`` for the raw generator) of an NVIDIA
    StyleGAN2-ADA or StyleGAN3 pickle as an exface network in eval mode."""
    data = load_network_pickle(path)
    if key not in data:
        have = sorted(k for k, v in data.items() if isinstance(v, PersistentRecord))
        raise KeyError(f"{path} has no network {key!r}; it has {have}")
    return generator_from_record(data[key])
