"""exface fr: training face recognition on synthetic identity folders (Lightning)."""

from exface._autoimport import import_submodules

__all__ = import_submodules(__name__, globals())
