"""Import every module of a subpackage so that its parts register themselves."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def import_submodules(package_name: str, namespace: dict[str, Any]) -> list[str]:
    """Import all modules under ``package_name`` and re-export their public classes.

    Each subpackage's ``__init__`` calls this, so adding a part is adding one module:
    no import list to keep in sync. Returns the exported names.
    """
    package = importlib.import_module(package_name)
    exported = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package_name}.{info.name}")
        for name in getattr(module, "__all__", ()):
            namespace[name] = getattr(module, name)
            exported.append(name)
    return exported
