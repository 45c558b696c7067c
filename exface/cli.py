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
        parser = getattr(ex, "subcommand_parser", None) or self
        sub = re.search(r"Subcommand '([^']+)' does not accept", str(message))
        if sub:  # the keys of that subcommand only, not of every subcommand
            parser = _subcommand_parser(self, sub.group(1)) or parser
        text = condense_error(message, _parser_keys(parser), parser=parser)
        prog = (self.prog or "exface").replace(" [options]", "")
        if not prog.startswith("exface"):  # a nested class's parser is named after sys.argv[0]
            prog = "exface"
        _exit_parse_error(prog, text, raw=str(message), ex=ex)


def _debug() -> bool:
    return os.environ.get("EXFACE_DEBUG", "") not in ("", "0")


def _exit_parse_error(prog: str, text: str, raw: str | None = None, ex: BaseException | None = None):
    """Print a parse error (with the traceback and jsonargparse's own text under EXFACE_DEBUG=1); exit 2."""
    if _debug():
        import traceback

        if ex is not None:
            traceback.print_exception(ex, file=sys.stderr)
        else:
            sys.stderr.write("Traceback (most recent call last):\n")
            traceback.print_stack(file=sys.stderr)
        if raw and raw != text and (ex is None or str(ex) != raw):
            sys.stderr.write(f"jsonargparse said:\n{raw}\n")
    sys.stderr.write(f"{prog}: error: {text}\n")
    hint = "" if _debug() else "; EXFACE_DEBUG=1 shows the traceback"
    sys.stderr.write(f"(run `{prog} --help` for the options; `exface plugins` lists the parts{hint})\n")
    raise SystemExit(2)


def _subcommand_parser(parser: Any, name: str) -> Any:
    for action in getattr(parser, "_actions", []):
        sub = (getattr(action, "_name_parser_map", None) or {}).get(name)
        if sub is not None:
            return sub
    return None


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


def condense_error(message: str, valid_keys: list[str] | None = None, parser: Any = None) -> str:
    """Turn a jsonargparse error into a few lines that name the problem and a fix.

    jsonargparse reports a bad value under a ``Union`` by listing every subtype's error;
    here the bad key, the first real reason, and "did you mean" hints for unknown class
    names and options are kept, and the rest is cut. ``parser`` (the one that failed) lets
    a class of the wrong kind be named as such, with suggestions of the expected kind.
    """
    message = str(message)
    if "<unicode string>" in message:
        return _yaml_syntax_error(message)
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
        out.append(_unknown_option(opt, valid_keys or []))
    if bad_class:
        name = bad_class.group(1).split(".")[-1]
        out.extend(_bad_class(name, key.group(1) if key else None, parser))
    elif key:
        why = _union_reason(message)
        out.append(f"bad value for {key.group(1)!r}: {why}")
    if not out:
        lines = [ln.rstrip() for ln in message.splitlines() if ln.strip()]
        out = [ln[:300] for ln in lines[:_MAX_ERROR_LINES]]
        if len(lines) > _MAX_ERROR_LINES:
            out.append(f"... ({len(lines) - _MAX_ERROR_LINES} more lines cut)")
    return "\n  ".join(out)


def _union_reason(message: str) -> str:
    """The first real reason in a jsonargparse error: not the ``NoneType`` alternative, no "Given value"."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    reasons = [ln.lstrip("- ").strip() for ln in lines if ln.startswith("- ") and "NoneType" not in ln]
    if reasons:
        return reasons[0][:300]
    noise = ("Given value", "Subtypes:", "Errors:", "- Expected a <class 'NoneType'>", 'Parser key "')
    keep = [ln for ln in lines if not ln.startswith(noise)]
    return (keep[-1] if keep else lines[-1] if lines else "")[:300]


def _unknown_option(opt: str, valid_keys: list[str]) -> str:
    """``unknown option 'X'; did you mean Y?`` for the first unknown segment of a dotted option.

    ``trainerr.logger.init_args.save_dir`` reports ``trainerr`` (and suggests ``trainer``);
    the ``*.help`` options are never suggested.
    """
    keys = [k for k in valid_keys if k != "help" and not k.endswith(".help")]
    parts = opt.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in keys:  # a known option: what is unknown lies inside its value, keep the whole name
            break
        if not any(k.startswith(prefix + ".") for k in keys):
            parent = ".".join(parts[: i - 1])
            level = sorted({".".join(k.split(".")[:i]) for k in keys
                            if len(k.split(".")) >= i and ".".join(k.split(".")[: i - 1]) == parent})
            near = difflib.get_close_matches(prefix, level, n=3, cutoff=0.6)
            return f"unknown option {prefix!r}" + (f"; did you mean {', '.join(near)}?" if near else "")
    near = difflib.get_close_matches(opt, keys, n=3, cutoff=0.6)
    return f"unknown option {opt!r}" + (f"; did you mean {', '.join(near)}?" if near else "")


_KIND_WORDS = {
    "generators": "a generator", "embedders": "an embedder", "attributes": "an attribute predictor",
    "aligners": "an aligner", "detectors": "a face detector", "landmark_sources": "a landmark source",
    "boundaries": "a boundary learner", "editors": "a latent editor", "samplers": "a latent sampler",
    "losses": "a face-recognition loss", "attribute_encoders": "an attribute encoder",
}


def _kind_word(kind: str) -> str:
    return _KIND_WORDS.get(kind, f"a part of kind {kind!r}")


def _kind_of_name(name: str) -> str | None:
    """What ``name`` is: ``'a generator'``, ``'a LightningModule'``... or None for an unknown name."""
    for kind, reg in REGISTRIES.items():
        if name in reg:
            return _kind_word(kind)
    for base in (LightningModule, LightningDataModule):
        if any(c.__name__ == name for c in _subclasses(base)):
            return f"a {base.__name__}"
    return None


def _expected_kind(parser: Any, key: str | None) -> tuple[str, list[str], str | None] | None:
    """(what ``key`` takes, the class names it accepts, the ``exface plugins --kind`` to list them)."""
    action = _find_action(parser, key) if parser is not None and key else None
    bases = _class_bases(getattr(action, "_typehint", None)) if action is not None else []
    for base in bases:
        for kind, reg in REGISTRIES.items():
            if base is reg.base:
                return _kind_word(kind), sorted(reg), kind
        names = sorted({c.__name__ for c in _subclasses(base)
                        if not c.__name__.startswith("_") and not getattr(c, "__abstractmethods__", None)})
        if names:
            kind = next((k for k, reg in REGISTRIES.items() if issubclass(base, reg.base)), None)
            word = _kind_word(kind) if kind else f"a {base.__name__}"
            return word, names, kind
    return None


def _find_action(parser: Any, key: str) -> Any:
    for action in getattr(parser, "_actions", []):
        if getattr(action, "dest", None) == key:
            return action
    for action in getattr(parser, "_actions", []):
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            found = _find_action(sub, key)
            if found is not None:
                return found
    return None


def _class_bases(typehint: Any) -> list[type]:
    """The classes inside a typehint (``Aligner | None`` -> [Aligner]), builtins left out."""
    import inspect
    import typing

    if typehint is None:
        return []
    if inspect.isclass(typehint) and typing.get_origin(typehint) is None:
        return [] if typehint.__module__ == "builtins" else [typehint]
    return [b for arg in typing.get_args(typehint) for b in _class_bases(arg)]


def _bad_class(name: str, key: str | None, parser: Any) -> list[str]:
    """Lines for a class_path jsonargparse could not use for ``key``: unknown, or of another kind."""
    expected = _expected_kind(parser, key)
    where = f" for {key!r}" if key else ""
    is_a = _kind_of_name(name)
    if expected is not None:
        word, names, kind = expected
        listing = f" (`exface plugins --kind {kind}` lists them)" if kind else ""
        near = _near_names(name, names)
        if is_a is not None and name not in names:  # a real class, of another kind: its spelling says nothing
            shown = names[:5] + (["..."] if len(names) > 5 else [])
            return [f"{name!r} is {is_a}; {key!r} takes {word}",
                    f"fix: use {word}, e.g. {', '.join(shown)}{listing}"]
        line = f"unknown class {name!r}{where}" + (f"; did you mean {', '.join(near)}?" if near else "")
        return [line] if near else [line, f"fix: use {word}{listing}"]
    near = _near_names(name, _all_part_names())
    return [f"unknown class {name!r}{where}" + (f"; did you mean {', '.join(near)}?" if near else "")]


def _yaml_syntax_error(message: str) -> str:
    """A YAML syntax error with the config file's path instead of ``"<unicode string>"``."""
    marks = re.findall(r'in "<unicode string>", line (\d+), column (\d+)', message)
    what = [ln.strip() for ln in message.replace("Problems parsing config:", "").splitlines()
            if ln.strip() and "<unicode string>" not in ln]
    path = _bad_yaml_config()
    problem = what[-1] if what else "syntax error"
    context = f" ({what[0]} from line {marks[0][0]}, column {marks[0][1]})" if len(what) > 1 and len(marks) > 1 else ""
    line = f", line {marks[-1][0]}, column {marks[-1][1]}" if marks else ""
    src = str(path) if path is not None else "a value given on the command line"
    return "\n  ".join([f"not valid YAML: {problem}{context}", f"in: {src}{line}",
                        "fix: correct the YAML syntax there (a missing ',', ']', '}' or quote, or bad indentation)"])


#: the command-line arguments being parsed (set by :meth:`ExfaceCLI.parse_arguments`)
_ARGS: list[str] = []


def _config_paths(args: list[str]) -> list[str]:
    """The values of every ``--config`` (``--config x``, ``--config=x``) in ``args``."""
    out = []
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out


def _bad_yaml_config() -> str | None:
    """The first ``--config`` file that does not load as YAML."""
    import yaml

    for path in _config_paths(_ARGS):
        try:
            yaml.safe_load(open(path, encoding="utf-8").read())
        except yaml.YAMLError:
            return path
        except (OSError, ValueError):
            continue
    return None


def _check_config_files(args: list[str]) -> None:
    """Refuse a ``--config`` that is not a text file (a binary, a checkpoint...) before jsonargparse reads it."""
    for path in _config_paths(args):
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 20)
        except OSError:
            continue  # missing or unreadable: jsonargparse names it
        try:
            head.decode("utf-8")
            ok = b"\x00" not in head
        except UnicodeDecodeError as err:
            ok = err.start > len(head) - 4  # a multi-byte character cut by the 1 MiB read
        if not ok:
            sub = next((a for a in args if a in COMMANDS or a in ("fit", "validate", "test", "predict")), None)
            prog = "exface" + (f" {sub}" if sub else "")
            _exit_parse_error(prog, "\n  ".join([
                "the config file is not a YAML/JSON text file (it holds binary data)", f"in: {path}",
                "fix: pass a recipe .yaml (see recipes/), or a file written by `--print_config`"]))


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
        if dest and dest not in ("help", "config", "print_config") and not dest.endswith(".help"):
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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        global _ARGS
        if not isinstance(args, dict) and not hasattr(args, "as_dict"):
            _ARGS = [str(a) for a in (sys.argv[1:] if args is None else args)]
            _check_config_files(_ARGS)
        super().parse_arguments(parser, args)

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

    def _parse_ckpt_path(self) -> None:
        """Build the module from the recipe, not from the checkpoint's saved settings.

        LightningCLI would replace the model's settings with those saved in a ``--ckpt_path``
        file, silently dropping what the recipe and the command line say. exface builds the
        module as asked, and the module's ``on_load_checkpoint`` (:mod:`exface.resume_check`)
        refuses a resume whose settings differ from the checkpoint's, naming each key.
        """

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
        kind: only this kind (generators, embedders, attributes, aligners, boundaries, losses, ...), or
            lightning: the LightningModules and datamodules that recipes name as model: / data:.
    """
    parts = [] if kind == "lightning" else list_parts(pattern, kind)
    lightning = [c for c in _subclasses(LightningModule) + _subclasses(LightningDataModule)
                 if c.__module__.startswith("exface") or c.__module__.split(".")[0] in _plugin_tops()]
    lightning = [c for c in lightning if _match(c.__name__, pattern) and not c.__name__.startswith("_")
                 and kind in (None, "lightning")]
    if not parts and not lightning:
        print(f"no part matches {pattern!r}" + (f" in {kind}" if kind else ""))
        return
    current = None
    for p in parts:
        if p.kind != current:
            current = p.kind
            print(f"\n{current}:")
        print(f"  {p.name:28s} {p.summary}  [{p.package}]")
    if lightning:
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
    A command line or recipe that does not parse exits 2, also on one screen.
    ``EXFACE_DEBUG=1`` shows the full traceback of either.
    """
    _quiet_lightning_noise()
    try:
        ExfaceCLI(args=args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - the one place that turns errors into a short report
        if _debug():
            raise
        sys.stderr.write(error_report(err) + "\n")
        raise SystemExit(1) from None


def error_report(err: BaseException) -> str:
    """The short report :func:`main` prints for ``err`` (no traceback).

    A part's constructor that fails while jsonargparse builds it comes wrapped in
    jsonargparse's union-type errors; the report shows the constructor's own error (with
    its ``in:``/``fix:`` when it is an :class:`~exface.errors.ExfaceError`) and names the part
    by its recipe key and class_path.
    """
    from exface.errors import ExfaceError, format_error

    chain = _chain(err)
    real = next((e for e in chain if not _raised_by_jsonargparse(e)), None)
    key, cls = _failing_part_key(chain), _failing_part(err)
    part = None
    if key or cls:
        part = " ".join(x for x in (key, f"(class_path: {cls})" if cls else None) if x)
    if real is None:  # only jsonargparse's own errors: keep its first real reason
        lines = [f"exface: error: {_union_reason(str(err))}"]
        if part:
            lines.append(f"  in: {part}")
    elif isinstance(real, ExfaceError):
        lines = [f"exface: error: {format_error(real, max_lines=_MAX_ERROR_LINES)}"]
        if part:
            lines.append(f"  while building {part}")
    else:
        lines = [f"exface: error: {format_error(real, max_lines=_MAX_ERROR_LINES)}"]
        if part:
            lines.append(f"  in: {part}")
            if key:
                lines.append(f"  fix: correct the init_args of {key} (in the recipe or on the command line)")
        else:
            where = _innermost_exface_frame(real)
            if where:
                lines.append(f"  raised at {where}")
    lines.append("  (set EXFACE_DEBUG=1 to see the traceback)")
    return "\n".join(lines)


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the errors it was raised from or while handling (``__cause__``/``__context__``), outermost first."""
    out: list[BaseException] = []
    while err is not None and all(err is not e for e in out) and len(out) < 16:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _raised_by_jsonargparse(err: BaseException) -> bool:
    """True for jsonargparse's own wrappers ("Does not validate against any of the Union subtypes"...)."""
    last = None
    for frame, _ in _frames(err):
        last = frame
    mod = last.f_globals.get("__name__", "") if last is not None else ""
    return mod.split(".")[0] == "jsonargparse"


def _frames(err: BaseException):
    tb = err.__traceback__
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next


def _failing_part(err: BaseException) -> str | None:
    """The class jsonargparse was instantiating when ``err`` was raised (a part's constructor)."""
    name = None
    for e in _chain(err):
        for frame, _ in _frames(e):
            if frame.f_code.co_name in ("default_class_instantiator", "__call__"):
                cls = frame.f_locals.get("class_type")
                if isinstance(cls, type):
                    name = cls.__name__
    return name


def _failing_part_key(chain: list[BaseException]) -> str | None:
    """The recipe key of the part being built (``data.init_args.aligner``), from jsonargparse's frames."""
    keys: list[str] = []
    for e in chain:
        for frame, _ in _frames(e):
            if frame.f_code.co_name == "instantiate" and frame.f_globals.get("__name__", "").startswith("jsonargparse"):
                key = frame.f_locals.get("key")
                if isinstance(key, str) and (not keys or keys[-1] != key):
                    keys.append(key)
    return ".init_args.".join(keys) or None


def _innermost_exface_frame(err: BaseException) -> str | None:
    where = None
    for frame, line in _frames(err):
        mod = frame.f_globals.get("__name__", "")
        if mod.startswith("exface") and mod not in ("exface.cli", "__main__"):
            where = f"{mod}:{line}"
    return where


if __name__ == "__main__":
    main()
