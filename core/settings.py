"""Configuration dataclasses' fields as data: help text and value constraints, enforced when a config is built and
turned into command-line flags by ``eval/args.py`` (importable without torch).

Each field that a user may set carries its documentation and its value constraints in the field's metadata
(``setting``): ``help``; ``min`` (with ``min_open`` for a strict bound) and ``max`` for numbers; ``choices`` for
strings (a tuple, or a function returning one, read at each check: a registry that plugins extend); ``words``,
strings a number field also takes (``float | str`` typed, e.g. ``"auto"``); ``what`` naming the kind of value in
messages; ``flag``, the command-line flag when it is not ``--field-name``; ``aliases``, extra command-line flags;
``metavar``, the value's name in ``--help``. A field without a default (``setting(MISSING, ...)``) is a required
flag. ``check_fields`` enforces the constraints (``problem`` says what is wrong with one value, in the words the
generated command-line flags use too).
"""
from __future__ import annotations

import functools
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


def _meta(cls, name: str):
    return next(f.metadata for f in fields(cls) if f.name == name)


def flag(cls, name: str) -> str:
    """The command-line flag of field ``name``: its ``flag`` metadata, else ``--field-name``."""
    return _meta(cls, name).get("flag") or "--" + name.replace("_", "-")


def choices(meta) -> tuple | None:
    """A field's ``choices`` metadata, called when it is a function (module doc)."""
    found = meta.get("choices")
    return tuple(found()) if callable(found) else found


@functools.lru_cache(maxsize=None)
def type_hints(cls) -> dict:
    """``cls``'s resolved annotations, once per class (resolving the string annotations of every field is what makes
    building the parser slow if repeated per field)."""
    return typing.get_type_hints(cls)


def field_type(cls, name: str) -> tuple[type, bool]:
    """``(base type, optional)`` of a field: ``int | None`` gives ``(int, True)``, ``list[str]`` gives ``(list, False)``,
    ``float | str`` with ``words`` metadata gives ``(float, False)``."""
    hint = type_hints(cls)[name]
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 2 and str in rest and _meta(cls, name).get("words"):
            rest.remove(str)  # a number, or one of the words
        if len(rest) != 1:
            raise TypeError(f"{cls.__name__}.{name}: unsupported type {hint}")
        hint = rest[0]
    return (typing.get_origin(hint) or hint), optional


_INT_WORDS = {1: "a positive integer", 0: "a non-negative integer"}


def value_words(meta, base: type) -> str:
    """The kind of value a number field takes, in words: its ``what`` metadata, else from its bounds (``"a positive
    integer"``, ``"a number in [0, 1]"``), with its ``words`` (``"... or 'auto'"``)."""
    low, high, low_open = meta.get("min", -math.inf), meta.get("max", math.inf), meta.get("min_open", False)
    if meta.get("what"):
        text = meta["what"]
    elif base is int:
        text = _INT_WORDS.get(low) or ("an integer" if low == -math.inf else f"an integer >= {low}")
    elif (low, high) == (0, math.inf):
        text = "a positive number (> 0)" if low_open else "a non-negative number (>= 0)"
    elif high == math.inf:
        text = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        text = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    return text + "".join(f" or {w!r}" for w in meta.get("words", ()))


def number_problem(meta, base: type, value) -> str | None:
    """What is wrong with ``value`` for a number field of type ``base`` with constraints ``meta`` (``"0 is not a
    positive integer (must be >= 1)"``), or None. The words of ``check_fields`` and of the generated flags' types
    (``eval/args.py``) alike, so the Python API and the command line refuse a value with the same message."""
    if isinstance(value, str) and value in meta.get("words", ()):
        return None
    if isinstance(value, bool) or not isinstance(value, int if base is int else (int, float)) or \
            not math.isfinite(value):
        return f"{value!r} is not {value_words(meta, base)}"
    low, high, low_open = meta.get("min", -math.inf), meta.get("max", math.inf), meta.get("min_open", False)
    if low < value <= high or (value == low and not low_open):
        return None
    if base is int:
        return f"{value} is not {value_words(meta, base)}" + (f" (must be >= {low})" if high == math.inf else "")
    return f"{value:g} is not {value_words(meta, base)}"


def problem(cls, name: str, value) -> str | None:
    """What is wrong with ``value`` for field ``name`` of ``cls`` (its type and constraints), or None; None passes
    for ``X | None``."""
    meta = _meta(cls, name)
    base, optional = field_type(cls, name)
    if value is None:
        return None if optional else "None is not allowed: give a value"
    if meta.get("choices"):
        allowed = choices(meta)
        return None if value in allowed else f"invalid choice: {value!r} (choose from {', '.join(map(str, allowed))})"
    if "min" in meta or "max" in meta or meta.get("words"):
        return number_problem(meta, base, value)
    return None


def check_fields(config) -> None:
    """ValueError naming the first field (as its CLI flag) whose value breaks its type or constraints:
    ``"--top-k: 0 is not a positive integer (must be >= 1)"``, what the command line says of that value."""
    cls = type(config)
    for f in fields(cls):
        found = problem(cls, f.name, getattr(config, f.name))
        if found:
            raise ValueError(f"{flag(cls, f.name)}: {found}")


POSITIVE = {"min": 0, "min_open": True}
AT_LEAST_ONE = {"min": 1}
NON_NEGATIVE = {"min": 0}
FRACTION = {"min": 0, "max": 1}
