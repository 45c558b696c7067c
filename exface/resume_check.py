"""A training run resumes only with the settings its checkpoint was trained with.

``exface fit --ckpt_path last`` with another learning rate, loss weight or architecture would
otherwise mix two runs: Lightning restores the weights and optimizer states trained with the
old settings and goes on with the new ones (a new ``lr`` in the checkpoint's hyperparameters,
the old rate in the optimizer), or dies with a raw ``load_state_dict`` size-mismatch list.

:func:`check_resume` is called by each trained module's ``on_load_checkpoint`` (Lightning calls
it before it restores the weights and the optimizers). It compares the checkpoint's saved
``hyper_parameters`` with the module's ``hparams`` and the checkpoint's tensor shapes with the
module's, and raises :class:`~exface.errors.ExfaceStateError` naming every difference
(checkpoint value vs this run's). What is compared:

- every hyperparameter in both records, parts (``{class_path, init_args}`` dicts, as
  LightningCLI records them) argument by argument; a class is the same class whatever
  module path names it;
- a key the checkpoint lacks (an older exface, before that option existed) against the
  option's default: a run at the default resumes, one that sets it otherwise is refused;
- a key this run lacks (a module built in Python leaves its part objects out) is not compared;
  objects are compared by their recorded form (classes and functions by dotted name, a
  ``functools.partial`` by its function and keywords); network objects are not compared
  (their shapes are);
- ``may_differ`` (dotted keys, ``fnmatch`` patterns) lists what a module lets a resume change:
  output paths, report-only settings, initial weights the checkpoint replaces.

Only a Trainer's restore is checked (``load_from_checkpoint`` and direct calls without a
trainer are not resumes); the hyperparameters only when fitting (``validate``/``test`` with
another ``lr`` are fine; another architecture is still named instead of a state_dict dump).

:class:`RecordsRunSettings` is a mixin for a module that does not call
``save_hyperparameters`` itself: it records the constructor's arguments (under LightningCLI the
recipe's config of the model; in Python the plain-valued arguments) so that its checkpoints
carry what a resume is compared with.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import importlib
import inspect
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from exface.errors import ExfaceStateError

__all__ = ["RecordsRunSettings", "check_resume", "check_data_resume", "settings_differences", "RESUME_FIX"]

RESUME_FIX = ("resume with the checkpoint's settings, or train into another folder (trainer.default_root_dir) / "
              "without --ckpt_path")

#: Bookkeeping keys LightningCLI adds to the hyperparameters: how the module was built, not what it is.
_BOOKKEEPING = ("_instantiator",)
_MAX_LISTED = 12
_REPR = 70


class _Uncomparable:
    """An object with no recorded form (a network, a lambda): never reported as a difference."""

    def __repr__(self) -> str:
        return "<object>"


_UNCOMPARABLE = _Uncomparable()
_ABSENT = object()


class _NotRecorded(str):
    """What a checkpoint that lacks a key reports for it: ``not recorded (default ...)``."""


def _dotted(obj: Any) -> str | None:
    mod, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not mod or not name or "<" in name:  # lambdas and local functions have no importable name
        return None
    return f"{mod}.{name}"


def recorded_form(value: Any) -> Any:
    """``value`` as a checkpoint records it: plain values as they are (tuples as lists), a class or
    function by dotted name, a ``functools.partial`` as ``{class_path, init_args}``, anything else
    (networks, lambdas, other objects) as uncomparable."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [recorded_form(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): recorded_form(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() <= 16:
        return value.tolist()
    if isinstance(value, nn.Module):
        return _UNCOMPARABLE
    if isinstance(value, functools.partial):
        path = _dotted(value.func)
        if path is None or value.args:
            return _UNCOMPARABLE
        return {"class_path": path, "init_args": recorded_form(value.keywords)}
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        return _dotted(value) or _UNCOMPARABLE
    return _UNCOMPARABLE


def is_plain_data(value: Any) -> bool:
    """None, bool, int, float, str, and lists/tuples/str-keyed mappings of them: what a checkpoint
    records as plain settings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain_data(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_plain_data(v) for k, v in value.items())
    return False


def _resolve(class_path: Any) -> Any:
    """The class a dotted ``class_path`` names, or None (not importable here)."""
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    mod, _, name = class_path.rpartition(".")
    try:
        obj = importlib.import_module(mod)
    except Exception:  # noqa: BLE001 - a name from another version: compared by its spelling
        parent, _, outer = mod.rpartition(".")
        try:  # a nested class: module.Outer.Inner
            obj = getattr(importlib.import_module(parent), outer)
        except Exception:  # noqa: BLE001
            return None
    return getattr(obj, name, None)


def _same_class(a: Any, b: Any) -> bool:
    if a == b:
        return True
    ca, cb = _resolve(a), _resolve(b)
    if ca is not None and cb is not None:
        return ca is cb
    return str(a).rpartition(".")[2] == str(b).rpartition(".")[2]  # not importable here: by name


def _defaults(obj: Any) -> dict[str, Any]:
    """The defaults of ``obj``'s constructor (a class) or parameters (a function), by name."""
    if obj is None:
        return {}
    try:
        sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    except (TypeError, ValueError):
        return {}
    return {n: recorded_form(p.default) for n, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty}


def _short(value: Any) -> str:
    if isinstance(value, _NotRecorded):
        return str(value)
    if isinstance(value, Mapping) and "class_path" in value:
        args = value.get("init_args") or {}
        inner = ", ".join(f"{k}={v!r}" for k, v in args.items()) if isinstance(args, Mapping) else repr(args)
        text = f"{str(value['class_path']).rpartition('.')[2]}({inner})"
    else:
        text = repr(value)
    return text if len(text) <= _REPR else text[: _REPR - 3] + "..."


def _allowed(key: str, may_differ: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in may_differ)


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                         defaults: Mapping[str, Any] | None = None,
                         may_differ: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """``(key, checkpoint value, this run's value)`` for every setting that differs.

    ``defaults`` stand in for keys ``saved`` lacks (an older checkpoint); a key without a
    default, or one ``current`` lacks, is not compared. ``may_differ``: dotted keys (patterns)
    that are not compared.
    """
    out: list[tuple[str, Any, Any]] = []
    _diff_mapping("", {k: recorded_form(v) for k, v in saved.items() if k not in _BOOKKEEPING},
                  {k: recorded_form(v) for k, v in current.items() if k not in _BOOKKEEPING},
                  {k: recorded_form(v) for k, v in (defaults or {}).items()}, tuple(may_differ), out)
    return out


def _diff_mapping(prefix: str, saved: Mapping, current: Mapping, defaults: Mapping, may_differ: tuple,
                  out: list) -> None:
    for key in list(saved) + [k for k in current if k not in saved]:
        path = f"{prefix}{key}"
        if _allowed(path, may_differ):
            continue
        now = current.get(key, _ABSENT)
        if now is _ABSENT:
            continue  # this run does not record it (a part given as an object, an option since removed)
        old = saved.get(key, _ABSENT)
        if old is _ABSENT:
            old = defaults.get(key, _ABSENT)  # an older checkpoint, from before this option: its default
            if old is _ABSENT:
                continue
            if not _equal(old, now):
                out.append((path, _NotRecorded(f"not recorded (default {_short(old)})"), now))
            continue
        if key in ("class_path", "_class_path") and isinstance(old, str) and isinstance(now, str):
            if not _same_class(old, now):
                out.append((path, old, now))
            continue
        _diff_value(path, old, now, may_differ, out)


def _diff_value(path: str, old: Any, now: Any, may_differ: tuple, out: list) -> None:
    if old is _UNCOMPARABLE or now is _UNCOMPARABLE:
        return
    if isinstance(old, Mapping) and isinstance(now, Mapping):
        if "class_path" in old and "class_path" in now:
            if not _same_class(old["class_path"], now["class_path"]):
                out.append((path, old, now))
                return
            defaults = _defaults(_resolve(now["class_path"]))
            for part in ("init_args", "dict_kwargs"):
                a, b = old.get(part) or {}, now.get(part) or {}
                if isinstance(a, Mapping) and isinstance(b, Mapping):
                    _diff_mapping(f"{path}.{part}.", a, b, defaults, may_differ, out)
                elif not _equal(a, b):
                    out.append((f"{path}.{part}", a, b))
            return
        _diff_mapping(f"{path}.", old, now, {}, may_differ, out)
        return
    if not _equal(old, now):
        out.append((path, old, now))


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (type(a) is type(b) and a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_equal(a[k], b[k]) for k in a)
    return a == b


def _shape_differences(module: nn.Module, state_dict: Mapping[str, Any]) -> list[str]:
    """The tensors whose shapes differ between ``state_dict`` and ``module`` (and, when loading is
    strict, the tensors only one of them has)."""
    own = module.state_dict()
    lines = []
    for key, value in state_dict.items():
        mine = own.get(key)
        if isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor) and value.shape != mine.shape:
            lines.append(f"{key}: checkpoint {list(value.shape)}, this run {list(mine.shape)}")
    strict = getattr(module, "strict_loading", True) and type(module).load_state_dict is nn.Module.load_state_dict
    if strict or lines:
        extra = [k for k in state_dict if k not in own]
        missing = [k for k in own if k not in state_dict]
        if extra:
            lines.append(f"only in the checkpoint: {len(extra)} tensors ({', '.join(extra[:3])}"
                         f"{', ...' if len(extra) > 3 else ''})")
        if missing and strict:
            lines.append(f"only in this run: {len(missing)} tensors ({', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''})")
    return lines


def _listed(lines: list[str]) -> str:
    if len(lines) > _MAX_LISTED:
        lines = lines[: _MAX_LISTED - 1] + [f"... and {len(lines) - _MAX_LISTED + 1} more"]
    return "\n  ".join(lines)


def check_resume(module: Any, checkpoint: Mapping[str, Any], *, may_differ: Iterable[str] = (),
                 extra: Mapping[str, tuple[Any, Any]] | None = None) -> None:
    """Refuse to restore ``checkpoint`` into ``module`` when they were set up differently.

    Call it from ``on_load_checkpoint`` after any rewriting of ``checkpoint`` the module does
    (filled-in frozen tensors, a sharded head cut to this rank's block). No-op without an
    attached trainer (``load_from_checkpoint``, direct calls). ``extra``: more records to
    compare, ``{key: (checkpoint's, this run's)}`` (e.g. a backbone spec the checkpoint keeps
    outside its hyperparameters); a record either side lacks (None) is not compared.
    """
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return
    from lightning.pytorch.trainer.states import TrainerFn

    fitting = getattr(getattr(trainer, "state", None), "fn", None) == TrainerFn.FITTING
    where = getattr(trainer, "ckpt_path", None) or "the checkpoint"
    may_differ = tuple(may_differ)
    if fitting:
        saved = checkpoint.get("hyper_parameters")
        current = getattr(module, "hparams", None) or {}
        diffs: list[tuple[str, Any, Any]] = []
        if isinstance(saved, Mapping) and saved and current:
            defaults = _defaults(type(module))
            diffs = settings_differences(saved, current, defaults=defaults, may_differ=may_differ)
        seen = {k for k, _, _ in diffs}
        for key, (old, now) in (extra or {}).items():
            if old is None or now is None:
                continue
            if not (isinstance(saved, Mapping) and key in saved and key in current):  # not compared above
                diffs += [d for d in settings_differences({key: old}, {key: now}, may_differ=may_differ)
                          if d[0] not in seen]
        if diffs:
            lines = [f"{k}: checkpoint {_short(old)}, this run {_short(now)}" for k, old, now in diffs]
            raise ExfaceStateError(
                f"the checkpoint was trained with other settings than this run's "
                f"({len(diffs)} differ):\n  " + _listed(lines), where=where, fix=RESUME_FIX)
    state = checkpoint.get("state_dict")
    if isinstance(state, Mapping):
        shapes = _shape_differences(module, state)
        if shapes:
            fix = RESUME_FIX if fitting else "use the model settings the checkpoint was trained with"
            raise ExfaceStateError(f"the checkpoint holds another architecture than this run builds "
                                   f"({type(module).__name__}):\n  " + _listed(shapes), where=where, fix=fix)


def check_data_resume(datamodule: Any, saved: Mapping[str, Any], current: Mapping[str, Any], *,
                      notes: Iterable[str] | Callable[[], Iterable[str]] = ()) -> None:
    """Refuse to resume a training on other data than its checkpoint's.

    A datamodule calls it from ``load_state_dict`` with its checkpointed record (``saved``) and
    this run's (``current``): the settings that decide what is trained on, by recipe key (named
    ``data.init_args.<key>``), and, in ``notes``, differences it words itself (another dataset's
    fingerprint; a callable is called only when the check runs); keys that are not the
    datamodule's options are named as they are. Only a Trainer's fit is checked (another
    validation set is fine).
    """
    trainer = getattr(datamodule, "trainer", None)  # a LightningDataModule's trainer is a plain attribute
    if trainer is None:
        return
    from lightning.pytorch.trainer.states import TrainerFn

    if getattr(getattr(trainer, "state", None), "fn", None) != TrainerFn.FITTING:
        return
    options = set(_defaults(type(datamodule)))  # recipe keys are named as such; other records by their name
    lines = list(notes() if callable(notes) else notes) + [f"{'data.init_args.' if k in options else ''}{k}: checkpoint {_short(old)}, "
                           f"this run {_short(now)}" for k, old, now in settings_differences(saved, current)]
    if lines:
        raise ExfaceStateError(f"the checkpoint was trained on other data than this run's ({len(lines)} differ):\n  "
                               + _listed(lines), where=getattr(trainer, "ckpt_path", None) or "the checkpoint",
                               fix=RESUME_FIX)


class RecordsRunSettings:
    """Mixin (before ``LightningModule`` in the bases) recording the constructor's arguments as
    ``hparams``, so that checkpoints carry what :func:`check_resume` compares a resume with.

    Under LightningCLI they are the recipe's config of the model (parts as ``{class_path,
    init_args}``), also any the subclass leaves out of its own ``save_hyperparameters``; built in
    Python, the arguments with plain values (networks, loss factories and other objects are left
    out: the checkpoint's tensors stand for them). This record is not sent to the logger.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from lightning.pytorch.core.mixins import HyperparametersMixin
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
        from lightning.pytorch.utilities.parsing import collect_init_args

        frame = inspect.currentframe().f_back  # the subclass's __init__
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters(logger=False, frame=frame)
            return
        given: dict[str, Any] = {}
        for local in collect_init_args(frame, [], classes=(HyperparametersMixin,)):
            given.update(local)
        ignore = [k for k, v in given.items() if not is_plain_data(v)]
        if len(ignore) < len(given):
            self.save_hyperparameters(ignore=ignore, logger=False, frame=frame)

    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        """Lightning's, except that under LightningCLI the keys in ``ignore`` stay recorded: they are
        the recipe's config of a part (``{class_path, init_args}``, plain values, no network), and a
        resume with another part config must be refused like one with another ``lr``."""
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

        super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back,
                                     logger=logger)
        given = _given_hyperparameters.get()
        if given is None or args:
            return
        for key, value in given.items():
            if key not in self.hparams and is_plain_data(value):
                self.hparams[key] = value
        self._hparams_initial = copy.deepcopy(self._hparams)
