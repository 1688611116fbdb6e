"""Command-line flags generated from configuration dataclasses (no torch: ``densekit --help`` stays fast).

``add_config_args(parser, Config)`` adds one flag per field: ``--field-name`` (``--no-field-name`` for a
bool that defaults to True), the field's ``help`` metadata as help text, the dataclass default as
default, and an argparse ``type`` built from the field's constraints (``densekit.retriever.config.setting``), so
a bad value exits 2 at parse time naming the flag. ``config_from_args(Config, args)`` builds the config
back from the parsed namespace. Types: ``int``, ``float``, ``str`` (``choices`` metadata), ``bool``,
``X | None`` and ``list[str]`` / ``list[int]`` (one or more values).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields

from densekit.core.settings import field_type


def int_at_least(minimum: int, what: str):
    """argparse type: an integer >= ``minimum``; ``what`` names it in the error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not {what} (must be >= {minimum})")
        return value

    parse.__name__ = what.replace(" ", "_")
    return parse


def float_in(low: float, high: float, low_open: bool, what: str):
    """argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or (low_open and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    parse.__name__ = what.replace(" ", "_")
    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "a non-negative integer")
positive_float = float_in(0.0, math.inf, True, "a positive number (> 0)")
non_negative_float = float_in(0.0, math.inf, False, "a non-negative number (>= 0)")
unit_float = float_in(0.0, 1.0, False, "a number in [0, 1]")

_INT_WORDS = {1: "a positive integer", 0: "a non-negative integer"}


def _float_words(low: float, high: float, low_open: bool) -> str:
    if (low, high) == (0, math.inf):
        return "a positive number (> 0)" if low_open else "a non-negative number (>= 0)"
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"


def value_type(cls, name: str):
    """The argparse ``type`` of field ``name``: its base type, checked against its constraints."""
    meta = next(f.metadata for f in fields(cls) if f.name == name)
    base, _ = field_type(cls, name)
    if base is int:
        if "min" not in meta:
            return int_at_least(-math.inf, "an integer")
        return int_at_least(meta["min"], meta.get("what") or _INT_WORDS.get(meta["min"], f"an integer >= {meta['min']}"))
    if base is float:
        low, high, low_open = meta.get("min", -math.inf), meta.get("max", math.inf), meta.get("min_open", False)
        return float_in(low, high, low_open, meta.get("what") or _float_words(low, high, low_open))
    if base is str:
        return str
    if base is list:  # list[str] or list[int]: the element type
        import typing

        hint = typing.get_type_hints(cls)[name]
        element = next(a for a in typing.get_args(hint) if a is not type(None))
        inner = typing.get_args(element)[0]
        return int_at_least(-math.inf, "an integer") if inner is int else str
    raise TypeError(f"{cls.__name__}.{name}: a {base.__name__} field cannot be a command-line flag; leave it out")


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


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
        flags = [flag_of(f.name)]
        if base is bool:
            if default:
                flags = ["--no-" + f.name.replace("_", "-")]
                text = (text + " " if text else "") + "(on by default; this flag turns it off)"
            kwargs = {"action": "store_false" if default else "store_true", "default": bool(default), "help": text}
        else:
            kwargs = {"type": value_type(cls, f.name), "default": default, "help": text}
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if base is list:
                kwargs["nargs"] = "+"
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
