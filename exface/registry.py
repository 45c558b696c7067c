"""Plug-in registries: one per kind of part (generators, embedders, ...).

Registering is subclassing. Each kind's abstract base class (``Generator``,
``IdentityEmbedder``, ...) inherits :class:`Registrable`; every concrete subclass is
added to that kind's :class:`Registry` under its class name when the class statement
runs. Third-party packages register the same way: their module is imported through
the ``exface.plugins`` entry-point group (:func:`load_plugins`) before the CLI builds
its parser, so a recipe can name any part by its short class name.

The API follows timm's: :func:`list_parts` with wildcard filters, :func:`get_part`,
:func:`create_part`.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import inspect
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "exface.plugins"


class RegistryError(ValueError):
    """Raised for duplicate names or unknown parts."""


@dataclass(frozen=True)
class PartInfo:
    """What ``exface plugins`` prints for one registered part."""

    kind: str
    name: str
    cls: type
    summary: str
    package: str


class Registry:
    """Name -> class table for one kind of part."""

    def __init__(self, kind: str, base: type) -> None:
        self.kind = kind
        self.base = base
        self._parts: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Add ``cls`` under its class name; a second class of the same name is an error."""
        name = cls.__name__
        existing = self._parts.get(name)
        if existing is not None and existing is not cls:
            if _qualname(existing) == _qualname(cls):
                # The same module imported twice (e.g. reloaded): keep the newest.
                self._parts[name] = cls
                return cls
            raise RegistryError(
                f"two {self.kind} are named {name!r}: {_qualname(existing)} and "
                f"{_qualname(cls)}; rename one of the classes (recipes address parts by "
                f"class name)"
            )
        self._parts[name] = cls
        return cls

    def __contains__(self, name: str) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._parts))

    def __len__(self) -> int:
        return len(self._parts)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a case-insensitive shell wildcard, like timm's ``list_models``."""
        pat = pattern.lower()
        return sorted(n for n in self._parts if fnmatch.fnmatch(n.lower(), pat))

    def get(self, name: str) -> type:
        try:
            return self._parts[name]
        except KeyError:
            import difflib

            near = difflib.get_close_matches(name, list(self._parts), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise RegistryError(
                f"no {self.kind} named {name!r}{hint} (`exface plugins` lists them all)"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Instantiate the part called ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def info(self, name: str) -> PartInfo:
        cls = self.get(name)
        return PartInfo(self.kind, name, cls, _summary(cls), _package_of(cls))


#: kind -> registry. Filled by :class:`Registrable` subclasses declaring ``registry_kind``.
REGISTRIES: dict[str, Registry] = {}


class Registrable:
    """Mixin for abstract base classes whose concrete subclasses self-register.

    A base class declares ``registry_kind = "generators"`` (say); that creates the
    registry. Concrete subclasses (no abstract methods left, name not starting with
    ``_``) are registered under their class name. Set ``register = False`` in a class
    body to keep a concrete helper class out of the registry.
    """

    registry_kind: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("registry_kind")
        if kind is not None:  # a new kind's base class
            if kind in REGISTRIES and REGISTRIES[kind].base is not cls:
                if _qualname(REGISTRIES[kind].base) != _qualname(cls):
                    raise RegistryError(f"registry kind {kind!r} is declared twice")
            REGISTRIES[kind] = Registry(kind, cls)
            return
        if cls.__dict__.get("register", True) is False or cls.__name__.startswith("_"):
            return
        if inspect.isabstract(cls):
            return
        for base in cls.__mro__[1:]:
            k = base.__dict__.get("registry_kind")
            if k is not None:
                REGISTRIES[k].register(cls)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _package_of(cls: type) -> str:
    top = cls.__module__.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top)
    return dists[0] if dists else top


_BUILTIN_MODULES = (
    "exface.generators",
    "exface.embedders",
    "exface.attributes",
    "exface.detectors",
    "exface.alignment",
    "exface.boundaries",
    "exface.editing",
    "exface.interfacegan",
    "exface.agerl",
    "exface.losses",
    "exface.exfacegan",
    "exface.evaluation",
    "exface.fr",
    "exface.disentangle",
    "exface.zoo",
)

_plugins_loaded = False


def load_plugins(force: bool = False) -> list[str]:
    """Import exface's own parts and every module of the ``exface.plugins`` entry-point group.

    Returns the names of the entry points loaded. A plugin that fails to import, or that
    registers a part under a name another part already has, is reported with its entry point,
    its distribution and the error, is left out, and does not stop the others or exface's own
    parts (a clash is never resolved silently: the earlier part keeps the name, the warning
    says so).
    """
    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        before = {kind: dict(reg._parts) for kind, reg in REGISTRIES.items()}
        try:
            ep.load()
        except RegistryError as err:  # a name clash: the part already registered keeps its name
            _undo_registrations(before)
            log.warning("exface plugin %r (%s, from distribution %s) was not loaded: %s. Rename its part, or "
                        "uninstall %s.", ep.name, ep.value, dist, err, dist)
            continue
        except Exception as err:  # a broken plugin must not take exface down
            _undo_registrations(before)
            log.warning("exface plugin %r (%s, from distribution %s) failed to load: %s", ep.name, ep.value, dist, err)
            continue
        loaded.append(ep.name)
    _plugins_loaded = True
    return loaded


def _undo_registrations(before: dict[str, dict[str, type]]) -> None:
    """Put the registries back as ``before`` (kind -> parts): a plugin that failed to load leaves no
    part, and no kind of its own, behind."""
    for kind in [k for k in REGISTRIES if k not in before]:
        del REGISTRIES[kind]
    for kind, parts in before.items():
        REGISTRIES[kind]._parts = parts


def get_registry(kind: str) -> Registry:
    """The registry of one kind: generators, embedders, attributes, aligners, boundaries, losses, ..."""
    load_plugins()
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise RegistryError(f"unknown kind {kind!r}; kinds are {', '.join(sorted(REGISTRIES))}") from None


def list_parts(pattern: str = "*", kind: str | None = None) -> list[PartInfo]:
    """Every registered part whose name matches ``pattern`` (wildcards), optionally of one kind."""
    load_plugins()
    kinds = [kind] if kind else sorted(REGISTRIES)
    out = []
    for k in kinds:
        reg = get_registry(k)
        out.extend(reg.info(n) for n in reg.list(pattern))
    return out


def get_part(kind: str, name: str) -> type:
    return get_registry(kind).get(name)


def create_part(kind: str, name: str, **kwargs: Any) -> Any:
    return get_registry(kind).create(name, **kwargs)
