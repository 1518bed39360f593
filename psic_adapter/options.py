"""Config fields that carry their command-line help, and the flags made from them.

A config dataclass (``TrainConfig``, ``EvalConfig``, ``BAvAFTTrainConfig``, ``DemoConfig``) declares each
field with :func:`opt`: its default and its help live together, once. A command adds one flag per such
field with :func:`add_config_flags`; every flag's parser default is None ("not given"), so the config's
own default (or a recipe's) decides, and :func:`given` collects what the user did give. Imports no torch.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import typing
from dataclasses import field
from typing import Any, Dict, Mapping, Optional, Sequence


def opt(default, help: str, flag: Optional[str] = None, choices: Optional[Sequence[Any]] = None, cli: bool = True,
        metavar: Optional[str] = None):
    """A config field with its command-line help (``flag`` overrides ``--field-name``; ``cli=False``: no flag).
    A boolean field whose default is True gets a ``--no-...`` flag (give it as ``flag``) that turns it off."""
    meta = {"help": help, "flag": flag, "choices": choices, "cli": cli, "metavar": metavar}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda d=tuple(default): d, metadata=meta)
    return field(default=default, metadata=meta)


def arg_type(tp):
    """(argparse type, nargs) of a field's annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return arg_type(inner[0])
    if origin in (tuple, list, collections.abc.Sequence):
        return (args[0] if args else str), "+"
    return tp, None


def default_of(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def flag_fields(cls) -> list:
    """The fields of ``cls`` that are command-line flags."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help") and f.metadata.get("cli", True)]


def add_config_flags(group, cls, recipes: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     skip: Sequence[str] = ()) -> None:
    """One flag per field of ``cls`` with help (see the module docstring); ``recipes`` (name -> field values) are
    shown in the help where they differ from the default; ``skip``: fields the command sets itself."""
    hints = typing.get_type_hints(cls)
    for f in flag_fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        tp, nargs = arg_type(hints[f.name])
        default = default_of(f)
        if tp is bool:
            action = "store_false" if default else "store_true"
            group.add_argument(flag, dest=f.name, action=action, default=None, help=meta["help"])
            continue
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        shown = [f"default: {shown}"] if shown not in (None, "") else []
        shown += [f"{name} recipe: {r[f.name]}" for name, r in (recipes or {}).items()
                  if f.name in r and r[f.name] != default]
        text = f"{meta['help']} ({'; '.join(shown)})" if shown else meta["help"]
        kw: Dict[str, Any] = dict(dest=f.name, type=tp, default=None, help=text)
        if nargs:
            kw["nargs"] = nargs
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        group.add_argument(flag, **kw)


def given(args: argparse.Namespace, cls) -> Dict[str, Any]:
    """The fields of ``cls`` whose flags the user gave (a flag not given is None)."""
    return {f.name: getattr(args, f.name) for f in flag_fields(cls) if getattr(args, f.name, None) is not None}
