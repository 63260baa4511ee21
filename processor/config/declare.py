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

Two ways to put options on a parser (:func:`add_arguments`): *plain* (the flag's default is
the declared default and the command reads only its flags: ``replay``, ``demo``, ``bench``)
and *layered* (flags default to ``argparse.SUPPRESS``, so :func:`resolve` can tell a flag
that was given from one that was not and fill the rest from the environment, a TOML table
and the defaults, in that order: ``run``).

Single-value checks are part of the declaration (:func:`at_least`...) and run from the
owning class's ``__post_init__`` through :func:`problems`; rules that tie several values
together stay in that class. This module imports nothing heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from processor.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "REDACTED",
    "Option",
    "above",
    "add_arguments",
    "at_least",
    "at_least_or",
    "is_secret_option",
    "load_toml",
    "option",
    "options_of",
    "parse_bool",
    "problems",
    "resolve",
    "split_assignment",
]

ENV_PREFIX: Final = "LSTM_STREAM_"
#: The variable naming the TOML settings file when ``--config`` is not given (every command
#: that takes ``--config`` reads it).
CONFIG_ENV: Final = f"{ENV_PREFIX}CONFIG"
#: What a secret value is shown as wherever settings are printed or logged.
REDACTED: Final = "***"
_SECRET_WORDS: Final = ("password", "secret", "token", "key")
_META: Final = "lstm_stream.option"
_NONE_WORDS: Final = ("", "none", "never")

#: A single-value check: the complaint (``"must be >= 1"``) or None when the value is fine.
Check = Callable[[Any], str | None]
Shape = Literal["scalar", "list", "map"]


def is_secret_option(name: str) -> bool:
    """True when a Kafka option's value must never be logged (SASL passwords, SSL keys,
    OAuth tokens...). Deliberately broad: a false positive only hides a harmless value."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def load_toml(path: str) -> dict[str, Any]:
    """A TOML settings file -> its tables; :class:`ConfigError` (naming the file) when it
    cannot be read or is not valid TOML."""
    try:
        with Path(path).open("rb") as fp:
            return tomllib.load(fp)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` -> False (any case, spaces ignored);
    ValueError otherwise. The one boolean syntax of flags, env, TOML strings and Kafka
    options."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def split_assignment(text: str, flag: str) -> tuple[str, str]:
    """``KEY=VALUE`` of a map flag -> (stripped key, value as given); :class:`ConfigError`
    naming ``flag`` without ``=`` or with an empty key."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} expects KEY=VALUE, got {text!r}")
    return key.strip(), value


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
        if self.shape == "map":
            return f"{ENV_PREFIX}{self.name.upper()}_"
        return ENV_PREFIX + self.flag.lstrip("-").replace("-", "_").upper()

    @property
    def toml_key(self) -> str:
        """The TOML key (a table for a map)."""
        return self.name if self.shape == "map" else self.flag.lstrip("-")

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
        if self.shape == "list":
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
        if self.shape == "list":
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
            if shape == "scalar":
                return inner, shape, True
    elif origin is tuple and typing.get_args(hint) == (str, ...):
        return str, "list", False
    elif origin is dict and typing.get_args(hint)[0] is str:
        return str, "map", False
    elif hint in (int, float, str, bool):
        return hint, "scalar", False
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
            default = {} if shape == "map" else f.default
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


# ---- argparse -------------------------------------------------------------------------------


def _argparse_type(opt: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return opt.parse(text)

    # argparse names the type in its error message: "invalid int value: 'x'".
    convert.__name__ = opt.type.__name__
    return convert


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    options: Iterable[Option],
    *,
    layered: bool,
    defaults: Mapping[str, Any] | None = None,
    required: Collection[str] = (),
    groups: Mapping[str, argparse._ArgumentGroup] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """Add a flag for each option.

    Plain (``layered=False``): the flag's default is the declared one (or ``defaults[name]``)
    and the help ends with ``(default: %(default)s)``; names in ``required`` are required
    flags; a ``bool`` is a ``store_true`` switch. Layered: every flag defaults to
    ``argparse.SUPPRESS`` (see :func:`resolve`), the help names the environment variable and
    the printed default (``required`` options say so instead), and a ``bool`` is a
    ``--name/--no-name`` pair so that a flag can override the environment either way.
    ``groups`` maps an option's ``group`` to the argument group it goes in. ``helps``
    (plain only) replaces an option's help text for one command, whole: it states the
    default itself (``%(default)s``).
    """
    defaults = defaults or {}
    helps = helps or {}
    for opt in options:
        target = (groups or {}).get(opt.group, parser)
        text = opt.help.replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": opt.name}
        if layered:
            kwargs["default"] = argparse.SUPPRESS
            shown = opt.shown_default() + ("; required" if opt.name in required else "")
            if opt.shape == "map":
                sources = (
                    f"env {opt.env}<KEY>, '__' for '.'; TOML [{opt.toml_key}] table with "
                    "optional sub-tables"
                )
            else:
                sources = f"env {opt.env}; TOML {opt.toml_key}"
            kwargs["help"] = f"{text} [{sources}] (default: {shown.replace('%', '%%')})"
        else:
            kwargs["default"] = defaults.get(opt.name, opt.default)
            kwargs["help"] = helps.get(opt.name, f"{text} (default: %(default)s)")
            kwargs["required"] = opt.name in required
        if opt.shape == "map":
            kwargs.update(action="append", metavar=opt.metavar or "KEY=VALUE")
        elif opt.shape == "list":
            kwargs.update(action="append", metavar=opt.metavar)
        elif opt.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if layered else "store_true"
        else:
            kwargs.update(type=_argparse_type(opt), choices=opt.choices, metavar=opt.metavar)
        target.add_argument(opt.flag, **kwargs)


# ---- layered sources --------------------------------------------------------------------------


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML table with sub-tables -> dotted keys (``[kafka.consumer] x = 1`` ->
    ``consumer.x``); whether a prefix means anything is for the option's user to say."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolve(
    options: Iterable[Option],
    given: Mapping[str, Any],
    environ: Mapping[str, str],
    table: Mapping[str, Any] | None = None,
    table_name: str = "config file",
) -> dict[str, Any]:
    """The value of every option that some source sets, by option name: flags (``given``,
    from a layered parser) over ``environ`` over the TOML ``table`` (options not set
    anywhere are left out, so the class's defaults apply). Map options merge key by key with
    the same precedence.

    Raises :class:`ConfigError` naming the source of a value that cannot be parsed and for
    an unknown TOML key (a typo must not silently fall back to a default); unknown
    environment variables are ignored (other tools share the prefix).
    """
    opts = tuple(options)
    by_key = {alias: opt for opt in opts for alias in opt.toml_aliases}
    values: dict[str, Any] = {}
    maps: dict[str, dict[str, Any]] = {o.name: {} for o in opts if o.shape == "map"}

    for key, value in (table or {}).items():
        opt = by_key.get(key)
        if opt is None:
            raise ConfigError(f"{table_name}: unknown key {key!r}")
        if opt.shape == "map":
            if not isinstance(value, dict):
                raise ConfigError(f"{table_name}: {key!r} must be a table")
            maps[opt.name].update(_flatten(value))
        else:
            values[opt.name] = opt.coerce(value, f"{table_name} key {key!r}")

    map_opts = [o for o in opts if o.shape == "map"]
    for opt in opts:
        if opt.shape != "map" and any(opt.env.startswith(m.env) for m in map_opts):
            # A declaration error, not a user's: the variable would be read twice.
            raise TypeError(f"{opt.env} collides with the prefix of a map option")
        if opt.shape != "map" and opt.env in environ:
            values[opt.name] = opt.coerce(environ[opt.env], f"environment variable {opt.env}")
    for opt in map_opts:
        for name, value in environ.items():
            if name.startswith(opt.env) and len(name) > len(opt.env):
                maps[opt.name][name[len(opt.env) :].lower().replace("__", ".")] = value

    for opt in opts:
        if opt.name not in given:
            continue
        value = given[opt.name]
        if opt.shape == "map":
            for text in value or ():
                key, item = split_assignment(text, opt.flag)
                maps[opt.name][key] = item
        else:
            values[opt.name] = tuple(value) if opt.shape == "list" else value

    for name, merged in maps.items():
        if merged:
            values[name] = dict(sorted(merged.items()))
    return values
