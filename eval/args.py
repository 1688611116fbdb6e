"""Command-line flags generated from configuration dataclasses (no torch: ``densekit --help`` stays fast).

``add_config_args(parser, Config)`` adds one flag per field: ``--field-name`` or its ``flag`` metadata
(``--no-field-name`` for a bool that defaults to True), the field's ``help`` metadata as help text, the dataclass
default as default (a field without one is a required flag), and an argparse ``type`` built from the field's
constraints (``densekit.core.settings.setting``), so a bad value exits 2 at parse time naming the flag.
``config_from_args(Config, args)`` builds the config back from the parsed namespace. Types: ``int``, ``float``
(``float | str`` with ``words``: a number or one of the words), ``str`` (``choices`` metadata), ``bool``,
``X | None`` and ``list[str]`` / ``list[int]`` (one or more values).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields

from densekit.core.settings import choices, field_type, flag, number_problem, type_hints, value_words


def number_type(meta, base: type, name: str = "number"):
    """argparse type: the text as ``base`` (int or float; or one of the ``words`` metadata), refused when it breaks
    the constraints ``meta`` (``min``, ``min_open``, ``max``), with the words of ``settings.number_problem``."""
    def parse(text: str):
        if text in meta.get("words", ()):
            return text
        try:
            value = base(text)
        except ValueError:
            value = text  # refused below, as the Python check refuses a string
        found = number_problem(meta, base, value)
        if found:
            raise argparse.ArgumentTypeError(found)
        return value

    parse.__name__ = name.replace(" ", "_")
    return parse


def int_at_least(minimum: int, what: str):
    """argparse type: an integer >= ``minimum``; ``what`` names it in the error."""
    return number_type({"min": minimum, "what": what}, int, what)


def float_in(low: float, high: float, low_open: bool, what: str):
    """argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    return number_type({"min": low, "max": high, "min_open": low_open, "what": what}, float, what)


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "a non-negative integer")
positive_float = float_in(0.0, math.inf, True, "a positive number (> 0)")
non_negative_float = float_in(0.0, math.inf, False, "a non-negative number (>= 0)")
unit_float = float_in(0.0, 1.0, False, "a number in [0, 1]")


def value_type(cls, name: str):
    """The argparse ``type`` of field ``name``: its base type, checked against its constraints."""
    meta = next(f.metadata for f in fields(cls) if f.name == name)
    base, _ = field_type(cls, name)
    if base in (int, float):
        return number_type(meta, base, value_words(meta, base))
    if base is str:
        return str
    if base is list:  # list[str] or list[int]: the element type
        import typing

        hint = type_hints(cls)[name]
        element = next(a for a in typing.get_args(hint) if a is not type(None))
        inner = typing.get_args(element)[0]
        return number_type({}, int, "an integer") if inner is int else str
    raise TypeError(f"{cls.__name__}.{name}: a {base.__name__} field cannot be a command-line flag; leave it out")


def field_default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def add_config_args(parser, cls, *, skip=(), overrides: dict[str, dict] | None = None, title: str | None = None) -> list[str]:
    """One flag per field of dataclass ``cls`` except ``skip`` (module doc), into an argument group ``title``
    when given; ``overrides`` maps a field to argparse keywords that replace the generated ones (a
    subcommand's own ``default`` or ``help``, narrower ``choices``). Returns the fields added, in order."""
    target = parser.add_argument_group(title) if title else parser
    overrides = overrides or {}
    added = []
    for f in fields(cls):
        if f.name in skip or not f.init:
            continue
        meta, default = f.metadata, field_default(f)
        base, _ = field_type(cls, f.name)
        text = (meta.get("help") or "").replace("%", "%%") or None
        flags = [flag(cls, f.name)]
        if base is bool:
            if default:
                flags = ["--no-" + f.name.replace("_", "-")]
                text = (text + " " if text else "") + "(on by default; this flag turns it off)"
            kwargs = {"action": "store_false" if default else "store_true", "default": bool(default), "help": text}
        else:
            kwargs = {"type": value_type(cls, f.name), "default": default, "help": text}
            if meta.get("choices"):
                kwargs["choices"] = choices(meta)
            if base is list:
                kwargs["nargs"] = "+"
            if "metavar" in meta:
                kwargs["metavar"] = meta["metavar"]
            if f.default is MISSING and f.default_factory is MISSING:
                kwargs["required"] = True
        kwargs.update(overrides.get(f.name, {}))
        target.add_argument(*flags, *meta.get("aliases", ()), dest=f.name, **kwargs)
        added.append(f.name)
    return added


def config_from_args(cls, args: argparse.Namespace, **fixed):
    """``cls`` from the parsed flags named like its fields, with ``fixed`` values on top. A flag whose value
    is None (not given, and its default deferred to the config) leaves the field at its dataclass default."""
    values = {}
    for f in fields(cls):
        if not f.init or f.name in fixed or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if value is None and field_default(f) is not None:
            continue
        values[f.name] = value
    return cls(**values, **fixed)
