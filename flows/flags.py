"""Command-line flags generated from the pydantic models the flows take, so a flag's help, its
choices and its default live in one place: the model field (description -> help, Literal -> choices,
the field's default -> the default). argparse has no pydantic bridge; this is that bridge.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

# Where a flag's value goes: a top-level field of the verb's params (""), or a nested model field.
Group = str


@dataclass(frozen=True)
class Flags:
    """Flags made from the fields of ``model`` whose values are collected under ``group``.

    ``only``/``skip`` pick fields; ``rename`` maps a field to another flag name (without dashes);
    ``positional`` fields become positional arguments; ``defaults`` overrides a model default for this
    verb only (shown in the help); ``help`` adds to a field's description."""

    model: type[BaseModel]
    group: Group = ""
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    positional: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()


def _literal_values(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        values = [v for a in typing.get_args(tp) if a is not type(None) for v in (_literal_values(a) or ())]
        return tuple(values) or None
    return None


def _base(tp: Any) -> Any:
    """The annotation without ``None`` (``int | None`` -> ``int``)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _is_bool(tp: Any) -> bool:
    return tp is bool or (typing.get_origin(tp) in (typing.Union, types.UnionType) and bool in typing.get_args(tp))


def _split_commas(values: list[str]) -> list[str]:
    """``--splits train,test`` and ``--splits train test`` mean the same."""
    return [v for item in values for v in str(item).split(",") if v != ""]


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(p: argparse.ArgumentParser, spec: Flags) -> None:
    """Add one argparse argument per chosen field of ``spec.model``; absent flags stay unset (None)."""
    for name, info in spec.model.model_fields.items():
        if (spec.only and name not in spec.only) or name in spec.skip:
            continue
        tp = info.annotation
        dest = f"{spec.group}.{name}" if spec.group else name
        default = spec.defaults.get(name, info.default)
        has_default = default is not PydanticUndefined and default is not None
        text = " ".join(t for t in (info.description or "", spec.help.get(name, "")) if t)
        if has_default and not _is_bool(tp):
            shown = " ".join(str(v) for v in default) if isinstance(default, (tuple, list)) else default
            text = f"{text} (default: {shown})" if text else f"default: {shown}"
        kwargs: dict[str, Any] = {"dest": dest, "help": text or None, "default": None}
        if name in spec.positional:
            p.add_argument(dest, metavar=name.upper(), help=text or None)
            continue
        flag = flag_name(spec.rename.get(name, name))
        choices = _literal_values(tp)
        base = _base(tp)
        if _is_bool(tp):
            if default is True:  # a switch that turns a default-on behaviour off
                p.add_argument(flag_name("no_" + spec.rename.get(name, name)), action="store_false", **kwargs)
            else:
                p.add_argument(flag, action="store_true", **kwargs)
            continue
        if typing.get_origin(base) in (tuple, list):
            item = typing.get_args(base)[0] if typing.get_args(base) else str
            item_choices = _literal_values(item)
            kwargs.update(nargs="+", metavar=(item.__name__.upper() if isinstance(item, type) else "VALUE"))
            if item_choices:
                kwargs["help"] = f"{kwargs['help'] or ''} (values: {', '.join(map(str, item_choices))})".strip()
        elif choices:
            kwargs["choices"] = list(choices)
            kwargs["type"] = type(choices[0])
        elif base in (int, float, str):
            kwargs.update(type=base, metavar=name.upper())
        else:
            raise TypeError(f"{spec.model.__name__}.{name}: no flag for annotation {tp!r}; skip it or rename it")
        if name in spec.required or (info.is_required() and name not in spec.defaults):
            kwargs["required"] = True
        p.add_argument(flag, **kwargs)


def collect(a: argparse.Namespace, specs: Iterable[Flags]) -> dict[Group, dict[str, Any]]:
    """The values given on the command line, grouped; a flag not given takes its model default (or the
    verb's own default from ``Flags.defaults``)."""
    out: dict[Group, dict[str, Any]] = {}
    for spec in specs:
        values = out.setdefault(spec.group, {})
        for name in spec.model.model_fields:
            dest = f"{spec.group}.{name}" if spec.group else name
            if not hasattr(a, dest):
                continue
            v = getattr(a, dest)
            if v is None:
                if name in spec.defaults:
                    values[name] = spec.defaults[name]
                continue
            if isinstance(v, list):
                v = _split_commas(v)
            values[name] = v
    return out
