"""The ``exface`` command: Lightning's fit/validate/test/predict plus exface's own subcommands.

:class:`ExfaceCLI` is a :class:`~lightning.pytorch.cli.LightningCLI` whose model and
data are any registered ``LightningModule``/``LightningDataModule`` subclass, named in a
recipe by short class name. Plugins are imported (entry-point group ``exface.plugins``)
before the parser is built so their parts resolve the same way. exface's own
subcommands (``plugins``, ``zoo``, ``synthesize``, ``benchmark``...) are functions
registered with :func:`exface.commands.command`; their typed signatures become options,
so they too accept ``--config``.

Parse errors are condensed to a few lines naming the bad key or class and the nearest
valid names, instead of jsonargparse's page of union-type errors.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Any

# LightningCLI itself calls jsonargparse APIs that jsonargparse deprecates; those warnings
# say nothing to an exface user (set the variable to "all" to see them).
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import logging  # noqa: E402
import warnings  # noqa: E402


def _quiet_lightning_noise() -> None:
    """Drop Lightning messages that say nothing about an exface run: the litlogger tip, the
    LeafSpec deprecation inside Lightning, and the ``log_every_n_steps`` warning for one-batch
    fits (full-batch L-BFGS is one step per epoch by design)."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*log_every_n_steps.*")

    class _DropTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from exface.commands import COMMANDS, command
from exface.registry import REGISTRIES, list_parts, load_plugins

__all__ = ["ExfaceCLI", "main"]

_MAX_ERROR_LINES = 12


class ExfaceArgumentParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors fit on one screen and suggest fixes."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        text = condense_error(message, _parser_keys(self))
        prog = (self.prog or "exface").replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {text}\n")
        sys.stderr.write(f"(run `{prog} --help` for the options; `exface plugins` lists the parts)\n")
        raise SystemExit(2)


def _all_part_names() -> list[str]:
    names = [n for reg in REGISTRIES.values() for n in reg]
    names += [c.__name__ for c in _subclasses(LightningModule) + _subclasses(LightningDataModule)]
    return names


def _subclasses(base: type) -> list[type]:
    out, todo = [], list(base.__subclasses__())
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


def condense_error(message: str, valid_keys: list[str] | None = None) -> str:
    """Turn a jsonargparse error into a few lines that name the problem and a fix.

    jsonargparse reports a bad value under a ``Union`` by listing every subtype's error;
    here the bad key, the first real reason, and "did you mean" hints for unknown class
    names and options are kept, and the rest is cut.
    """
    message = str(message)
    out: list[str] = []
    key = re.search(r'Parser key "([^"]+)"', message)
    bad_option = re.search(
        r"does not accept option '([^']+)'|Key \"([^\"]+)\" is not expected|unrecognized arguments: (\S+)"
        r"|No action for (?:destination )?key \"([^\"]+)\"|Option '([^']+)' is not accepted",
        message,
    )
    bad_class = re.search(
        r"(?:given class_path|Import path|class path|import path string:)\s*'?\"?([\w.]+)", message)
    if bad_option:
        opt = next(g for g in bad_option.groups() if g).lstrip("-").split("=")[0]
        near = difflib.get_close_matches(opt, valid_keys or [], n=3, cutoff=0.6)
        out.append(f"unknown option {opt!r}" + (f"; did you mean {', '.join(near)}?" if near else ""))
    if bad_class:
        name = bad_class.group(1).split(".")[-1]
        near = _near_names(name, _all_part_names())
        where = f" for {key.group(1)!r}" if key else ""
        out.append(f"unknown class {name!r}{where}" + (f"; did you mean {', '.join(near)}?" if near else ""))
    elif key:
        reasons = [
            ln.strip().lstrip("- ").strip()
            for ln in message.splitlines()
            if ln.strip().startswith("- ") and "NoneType" not in ln
        ]
        given = re.search(r"Given value: (.*)", message)
        why = reasons[0] if reasons else message.splitlines()[-1].strip()
        out.append(f"bad value for {key.group(1)!r}: {why}" + (f" (got {given.group(1)[:80]})" if given else ""))
    if not out:
        lines = [ln.rstrip() for ln in message.splitlines() if ln.strip()]
        out = [ln[:300] for ln in lines[:_MAX_ERROR_LINES]]
        if len(lines) > _MAX_ERROR_LINES:
            out.append(f"... ({len(lines) - _MAX_ERROR_LINES} more lines cut)")
    return "\n  ".join(out)


def _near_names(name: str, names: list[str]) -> list[str]:
    """Up to 3 names close to ``name`` (case-insensitive, so ``FaceApiResnet34`` finds ``FaceApiResNet34``)."""
    by_lower: dict[str, str] = {}
    for n in names:
        by_lower.setdefault(n.lower(), n)
    near = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
    return [by_lower[n] for n in near]


def _parser_keys(parser: Any) -> list[str]:
    """Every option destination of a parser and of its subcommand parsers."""
    keys: list[str] = []
    for action in getattr(parser, "_actions", []):
        dest = getattr(action, "dest", None)
        if dest and dest not in ("help", "config", "print_config"):
            keys.append(dest)
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            keys.extend(_parser_keys(sub))
    return list(dict.fromkeys(keys))


class ExfaceCLI(LightningCLI):
    """LightningCLI with exface's parts, plugins and subcommands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        load_plugins()
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_class", ExfaceArgumentParser)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"prog": "exface"})
        super().__init__(*args, **kwargs)

    # -- exface's own subcommands ------------------------------------------------------
    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        action = parser._subcommands_action
        for name, fn in sorted(COMMANDS.items()):
            doc = (fn.__doc__ or "").strip().splitlines()
            description = doc[0] if doc else name
            sub = self.init_parser(description=description)
            added = sub.add_function_arguments(fn, fail_untyped=True, as_group=False)
            self._subcommand_method_arguments[name] = list(added or [])
            self._subcommand_parsers[name] = sub
            action.add_subcommand(name, sub, help=description)

    def _is_exface_command(self) -> bool:
        return self.subcommand in COMMANDS

    def _set_seed(self) -> None:
        if not self._is_exface_command():
            super()._set_seed()

    def instantiate_classes(self) -> None:
        if not self._is_exface_command():
            super().instantiate_classes()
            return
        instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes
        self.config_init = instantiate(self.config)
        self.model = self.datamodule = self.trainer = None

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand not in COMMANDS:
            super()._run_subcommand(subcommand)
            return
        cfg = self.config_init[subcommand]
        kwargs = {k: cfg[k] for k in self._subcommand_method_arguments[subcommand] if k in cfg}
        COMMANDS[subcommand](**kwargs)


@command("plugins")
def plugins_command(pattern: str = "*", kind: str | None = None) -> None:
    """List every registered part by kind, with its summary and the package it came from.

    Args:
        pattern: wildcard on the class name, like timm's list_models('*arc*').
        kind: only this kind (generators, embedders, attributes, aligners, boundaries, losses).
    """
    parts = list_parts(pattern, kind)
    if not parts:
        print(f"no part matches {pattern!r}" + (f" in {kind}" if kind else ""))
        return
    current = None
    for p in parts:
        if p.kind != current:
            current = p.kind
            print(f"\n{current}:")
        print(f"  {p.name:28s} {p.summary}  [{p.package}]")
    lightning = [c for c in _subclasses(LightningModule) + _subclasses(LightningDataModule)
                 if c.__module__.startswith("exface") or c.__module__.split(".")[0] in _plugin_tops()]
    lightning = [c for c in lightning if _match(c.__name__, pattern) and not c.__name__.startswith("_")]
    if lightning and kind in (None, "lightning"):
        print("\nlightning modules and datamodules (recipes' model: / data:):")
        for c in sorted(lightning, key=lambda c: c.__name__):
            doc = (c.__doc__ or "").strip().splitlines()
            print(f"  {c.__name__:28s} {doc[0] if doc else ''}")


def _match(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name.lower(), pattern.lower())


def _plugin_tops() -> set[str]:
    import importlib.metadata

    from exface.registry import ENTRY_POINT_GROUP

    return {ep.value.split(":")[0].split(".")[0] for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``exface`` console script.

    Every failure after parsing (a part's constructor, a run, a file check) is printed on
    one screen: the problem, the part or file, the fix when known, and exit status 1.
    ``EXFACE_DEBUG=1`` re-raises it with the full traceback.
    """
    _quiet_lightning_noise()
    try:
        ExfaceCLI(args=args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - the one place that turns errors into a short report
        if os.environ.get("EXFACE_DEBUG", "") not in ("", "0"):
            raise
        sys.stderr.write(error_report(err) + "\n")
        raise SystemExit(1) from None


def error_report(err: BaseException) -> str:
    """The short report :func:`main` prints for ``err`` (no traceback)."""
    from exface.errors import ExfaceError, format_error

    lines = [f"exface: error: {format_error(err, max_lines=_MAX_ERROR_LINES)}"]
    part = _failing_part(err)
    if part:
        lines.append(f"  while building the part {part}")
    if not isinstance(err, ExfaceError):
        where = _innermost_exface_frame(err)
        if where:
            lines.append(f"  raised at {where}")
    lines.append("  (set EXFACE_DEBUG=1 to see the traceback)")
    return "\n".join(lines)


def _frames(err: BaseException):
    tb = err.__traceback__
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next


def _failing_part(err: BaseException) -> str | None:
    """The class jsonargparse was instantiating when ``err`` was raised (a part's constructor)."""
    name = None
    for frame, _ in _frames(err):
        if frame.f_code.co_name == "default_class_instantiator":
            cls = frame.f_locals.get("class_type")
            name = getattr(cls, "__name__", None) or name
    return name


def _innermost_exface_frame(err: BaseException) -> str | None:
    where = None
    for frame, line in _frames(err):
        mod = frame.f_globals.get("__name__", "")
        if mod.startswith("exface") and mod not in ("exface.cli", "__main__"):
            where = f"{mod}:{line}"
    return where


if __name__ == "__main__":
    main()
