"""Options declared once, on the frozen dataclass they configure.

A settings class declares each option as a dataclass field whose default is
:func:`option` (default, help, checks, flag spelling); the field's name and type annotation
complete the declaration. Everything else is derived from that one field:

* the attribute: the field name (``max_batch``);
* the command-line flag: ``--`` plus the name with dashes (``--max-batch``), unless the
  declaration spells it otherwise (``input_topics`` -> ``--input-topic``);
* the environment variable: :data:`ENV_PREFIX` plus the flag in upper case with
  underscores (``LSTM_STREAM_MAX_BATCH``);
* the TOML key: the flag without its dashes (``max-batch``; ``max_batch`` and the attribute
  name are accepted too);
* the value syntax, from the annotation: ``int``, ``float``, ``str``, ``bool`` (a switch),
  ``X | None`` (``none`` or an empty string means ``None``), ``tuple[str, ...]`` (a
  repeatable flag; a comma-separated string or a TOML list) and ``dict[str, Any]`` (a map:
  repeatable ``--flag KEY=VALUE``, variables ``<PREFIX><NAME>_<KEY>`` with ``__`` for a dot,
  a TOML table whose sub-tables give dotted keys).

The flags are built by :mod:`processor.config.flags`, the environment and TOML sources merged
by :mod:`processor.config.sources`.

Single-value checks are part of the declaration (:func:`at_least`...) and run from the
owning class's ``__post_init__`` through :func:`problems`; rules that tie several values
together stay in that class. This module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from processor.config.syntax import parse_bool
from processor.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "Check",
    "Option",
    "Shape",
    "above",
    "at_least",
    "at_least_or",
    "option",
    "options_of",
    "problems",
]

#: The prefix of every option's environment variable.
ENV_PREFIX: Final = "LSTM_STREAM_"
_META: Final = "lstm_stream.option"
_NONE_WORDS: Final = ("", "none", "never")

#: A single-value check: the complaint (``"must be >= 1"``) or None when the value is fine.
Check = Callable[[Any], str | None]


class Shape(enum.Enum):
    """How an option's value is written, from its annotation."""

    SCALAR = "scalar"  #: one int, float, str or bool (or None when optional)
    LIST = "list"  #: ``tuple[str, ...]``: a repeatable flag, a comma-separated string, a list
    MAP = "map"  #: ``dict[str, Any]``: ``--flag KEY=VALUE``, prefixed variables, a table


def at_least(low: float) -> Check:
    """Check: the value is >= ``low`` (None, for an optional option, passes)."""
    return lambda v: None if v is None or v >= low else f"must be >= {low:g}"


def above(low: float) -> Check:
    """Check: the value is > ``low`` (None, for an optional option, passes)."""
    return lambda v: None if v is None or v > low else f"must be > {low:g}"


def at_least_or(low: float, special: Any, meaning: str) -> Check:
    """Check: the value is >= ``low`` or exactly ``special`` (which means ``meaning``)."""
    return lambda v: (
        None if v == special or v >= low else f"must be {special} ({meaning}) or >= {low:g}"
    )


@dataclass(frozen=True)
class _Declaration:
    """What :func:`option` records; :func:`options_of` adds the field's name and type."""

    help: str
    flag: str | None
    group: str
    choices: tuple[Any, ...] | None
    metavar: str | None
    default_text: str | None
    checks: tuple[Check, ...]


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    group: str = "",
    choices: Iterable[Any] | None = None,
    metavar: str | None = None,
    default_text: str | None = None,
    check: Check | Iterable[Check] = (),
) -> Any:
    """Declare an option as a dataclass field (use as the field's default).

    ``help`` says what the option does (the sources and the default are appended where the
    flags are built); ``flag`` overrides the derived ``--name``; ``group`` is the ``--help``
    section (layered parsers); ``default_text`` replaces the printed default when the real
    one is resolved later (``-1 = half of ...``); ``check`` holds single-value checks. A map
    option's default must be ``{}``.
    """
    checks = (check,) if callable(check) else tuple(check)
    meta = {
        _META: _Declaration(
            help=help,
            flag=flag,
            group=group,
            choices=tuple(choices) if choices is not None else None,
            metavar=metavar,
            default_text=default_text,
            checks=checks,
        )
    }
    if isinstance(default, dict):
        if default:
            raise TypeError("a map option's default must be empty")
        return dataclasses.field(default_factory=dict, hash=False, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One declared option with everything derived from its declaration."""

    name: str
    type: type  # int, float, str or bool (the element type of a list, the value of a map)
    shape: Shape
    optional: bool  # None is a value ("none" in text)
    default: Any
    help: str
    flag: str
    group: str
    choices: tuple[Any, ...] | None
    metavar: str | None
    default_text: str | None
    checks: tuple[Check, ...]

    @property
    def env(self) -> str:
        """The environment variable; for a map, the prefix of its variables."""
        if self.shape == Shape.MAP:
            return f"{ENV_PREFIX}{self.name.upper()}_"
        return ENV_PREFIX + self.flag.lstrip("-").replace("-", "_").upper()

    @property
    def toml_key(self) -> str:
        """The TOML key (a table for a map)."""
        return self.name if self.shape == Shape.MAP else self.flag.lstrip("-")

    @property
    def toml_aliases(self) -> tuple[str, ...]:
        """Every TOML spelling accepted for this option (dashes or underscores)."""
        key = self.toml_key
        return tuple(dict.fromkeys((key, key.replace("-", "_"), self.name)))

    def shown_default(self) -> str:
        """The default as ``--help`` prints it."""
        if self.default_text is not None:
            return self.default_text
        value = self.default
        if value is None or value == "" or value == () or value == {}:
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        return str(value)

    def parse(self, text: str) -> Any:
        """A flag's or environment variable's text -> the value (ValueError if invalid);
        also what argparse converts the flag's text with."""
        if self.shape == Shape.LIST:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if self.optional and text.strip().lower() in _NONE_WORDS:
            return None
        if self.type is bool:
            return parse_bool(text)
        return self.type(text)

    def coerce(self, value: Any, source: str) -> Any:
        """A value from the environment (a string) or TOML (typed) -> the option's value;
        :class:`ConfigError` naming ``source`` if it cannot be one. Choices are checked
        here too, so the message names where the bad value came from."""
        try:
            parsed = self._coerce(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if self.choices is not None and parsed not in self.choices:
            raise ConfigError(f"{source}: {parsed!r} is not one of {list(self.choices)}")
        return parsed

    def _coerce(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.parse(value)
        if self.shape == Shape.LIST:
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError(f"expected a list of strings, got {value!r}")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            raise ValueError(f"expected a boolean, got {value!r}")
        if isinstance(value, bool):  # bool is an int in Python: refuse it for numbers
            raise ValueError(f"expected {self.type.__name__}, got a boolean")
        if self.type is int and isinstance(value, int):
            return value
        if self.type is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if self.type is float and isinstance(value, int | float):
            return float(value)
        raise ValueError(f"expected {self.type.__name__}, got {value!r}")


def _shape_of(hint: Any, where: str) -> tuple[type, Shape, bool]:
    """(element type, shape, optional) of a field's resolved annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            inner, shape, _ = _shape_of(args[0], where)
            if shape == Shape.SCALAR:
                return inner, shape, True
    elif origin is tuple and typing.get_args(hint) == (str, ...):
        return str, Shape.LIST, False
    elif origin is dict and typing.get_args(hint)[0] is str:
        return str, Shape.MAP, False
    elif hint in (int, float, str, bool):
        return hint, Shape.SCALAR, False
    raise TypeError(f"{where}: option type {hint!r} is not supported")


_CACHE: dict[type, tuple[Option, ...]] = {}


def options_of(cls: type) -> tuple[Option, ...]:
    """The options declared on dataclass ``cls``, in declaration order (fields without
    :func:`option` are not options)."""
    if cls not in _CACHE:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            decl = f.metadata.get(_META)
            if decl is None:
                continue
            kind, shape, optional = _shape_of(hints[f.name], f"{cls.__name__}.{f.name}")
            default = {} if shape == Shape.MAP else f.default
            out.append(
                Option(
                    name=f.name,
                    type=kind,
                    shape=shape,
                    optional=optional,
                    default=default,
                    help=decl.help,
                    flag=decl.flag or "--" + f.name.replace("_", "-"),
                    group=decl.group,
                    choices=decl.choices,
                    metavar=decl.metavar,
                    default_text=decl.default_text,
                    checks=decl.checks,
                )
            )
        _CACHE[cls] = tuple(out)
    return _CACHE[cls]


def problems(obj: Any) -> list[str]:
    """Complaints about ``obj``'s option values: choices and the declared checks, each
    naming the flag and the value (``--max-batch must be >= 1, got 0``)."""
    out = []
    for opt in options_of(type(obj)):
        value = getattr(obj, opt.name)
        if opt.choices is not None and value not in opt.choices:
            out.append(f"{opt.flag} must be one of {list(opt.choices)}, got {value!r}")
            continue
        for check in opt.checks:
            complaint = check(value)
            if complaint:
                out.append(f"{opt.flag} {complaint}, got {value!r}")
    return out
