"""exface face detectors: see base.py for the contract; every other module adds parts."""

from exface._autoimport import import_submodules

__all__ = import_submodules(__name__, globals())
