"""Configuration dataclasses' fields as data: help text and value constraints, enforced when a config is built and
turned into command-line flags by ``eval/args.py`` (importable without torch).

Each field that a user may set carries its documentation and its value constraints in the field's metadata
(``setting``): ``help``; ``min`` (with ``min_open`` for a strict bound) and ``max`` for numbers; ``choices`` for
strings; ``what`` naming the kind of value in messages; ``aliases``, extra command-line flags. ``check_fields``
enforces the constraints; ``requirement`` says them in words; ``satisfies`` tests one value.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import field, fields


def setting(default=None, help: str = "", *, default_factory=None, **constraints):
    """A dataclass field whose metadata holds its help text and constraints (see the module doc)."""
    metadata = {"help": help, **constraints}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def field_type(cls, name: str) -> tuple[type, bool]:
    """``(base type, optional)`` of a field: ``int | None`` gives ``(int, True)``, ``list[str]`` gives ``(list, False)``."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{cls.__name__}.{name}: unsupported type {hint}")
        hint = rest[0]
    return (typing.get_origin(hint) or hint), optional


def requirement(cls, name: str) -> str | None:
    """What a field's constraints ask for, in words (``"an integer >= 1"``), or None without constraints."""
    meta = next(f.metadata for f in fields(cls) if f.name == name)
    base, optional = field_type(cls, name)
    if meta.get("choices"):
        need = "one of " + ", ".join(map(str, meta["choices"]))
    elif "max" in meta:
        need = f"between {meta.get('min', '-inf')} and {meta['max']}"
    elif "min" in meta:
        need = f"an integer >= {meta['min']}" if base is int else \
            f"a finite number {'>' if meta.get('min_open') else '>='} {meta['min']}"
    else:
        return None
    return need + (" (or unset)" if optional else "")


def satisfies(cls, name: str, value) -> bool:
    """Whether ``value`` meets the type and the constraints of field ``name`` (None passes for ``X | None``)."""
    meta = next(f.metadata for f in fields(cls) if f.name == name)
    base, optional = field_type(cls, name)
    if value is None:
        return optional
    if meta.get("choices"):
        return value in meta["choices"]
    if "min" not in meta and "max" not in meta:
        return True
    if isinstance(value, bool) or not isinstance(value, int if base is int else (int, float)) or not math.isfinite(value):
        return False
    low = meta.get("min", -math.inf)
    return (value > low if meta.get("min_open") else value >= low) and value <= meta.get("max", math.inf)


def check_fields(config) -> None:
    """ValueError naming the first field (as its CLI flag) whose value breaks its metadata constraints."""
    cls = type(config)
    for f in fields(cls):
        value = getattr(config, f.name)
        if not satisfies(cls, f.name, value):
            raise ValueError(f"--{f.name.replace('_', '-')} must be {requirement(cls, f.name)}, got {value!r}")


POSITIVE = {"min": 0, "min_open": True}
AT_LEAST_ONE = {"min": 1}
NON_NEGATIVE = {"min": 0}
FRACTION = {"min": 0, "max": 1}
