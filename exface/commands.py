"""exface's own subcommands (beside Lightning's fit/validate/test/predict).

A subcommand is a plain function with type-hinted keyword parameters and a docstring,
registered with :func:`command`. The CLI turns its signature into options with
jsonargparse (so ``--config`` files work for it too) and its docstring's first line into
the help text::

    @command("zoo")
    def zoo(fetch: bool = False, name: str = "*") -> None:
        \"\"\"List the model zoo and whether each entry is cached and verified.\"\"\"
"""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

#: subcommand name -> function
COMMANDS: dict[str, Callable] = {}


def command(name: str | None = None) -> Callable[[F], F]:
    """Register ``fn`` as ``exface <name>`` (default: the function's name, ``_`` -> ``-``)."""

    def deco(fn: F) -> F:
        key = name or fn.__name__.replace("_", "-")
        other = COMMANDS.get(key)
        if other is not None and other.__qualname__ != fn.__qualname__:
            raise ValueError(
                f"exface subcommand {key!r} is defined twice: {other.__module__}.{other.__qualname__} "
                f"and {fn.__module__}.{fn.__qualname__}"
            )
        COMMANDS[key] = fn
        return fn

    return deco
