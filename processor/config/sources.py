"""The layered sources of ``run``'s options: flags over ``LSTM_STREAM_*`` variables over a
TOML table over the declared defaults (:func:`resolve`), and the TOML file itself
(:func:`load_toml`, :data:`CONFIG_ENV`)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from processor.config.declare import ENV_PREFIX, Option, Shape
from processor.config.syntax import split_assignment
from processor.errors import ConfigError

__all__ = ["CONFIG_ENV", "load_toml", "resolve"]

#: The variable naming the TOML settings file when ``--config`` is not given (every command
#: that takes ``--config`` reads it).
CONFIG_ENV: Final = f"{ENV_PREFIX}CONFIG"


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
    from a layered parser, :func:`processor.config.flags.add_arguments`) over ``environ``
    over the TOML ``table`` (options not set anywhere are left out, so the class's defaults
    apply). Map options merge key by key with the same precedence.

    Raises :class:`ConfigError` naming the source of a value that cannot be parsed and for
    an unknown TOML key (a typo must not silently fall back to a default); unknown
    environment variables are ignored (other tools share the prefix).
    """
    opts = tuple(options)
    by_key = {alias: opt for opt in opts for alias in opt.toml_aliases}
    values: dict[str, Any] = {}
    maps: dict[str, dict[str, Any]] = {o.name: {} for o in opts if o.shape == Shape.MAP}

    for key, value in (table or {}).items():
        opt = by_key.get(key)
        if opt is None:
            raise ConfigError(f"{table_name}: unknown key {key!r}")
        if opt.shape == Shape.MAP:
            if not isinstance(value, dict):
                raise ConfigError(f"{table_name}: {key!r} must be a table")
            maps[opt.name].update(_flatten(value))
        else:
            values[opt.name] = opt.coerce(value, f"{table_name} key {key!r}")

    map_opts = [o for o in opts if o.shape == Shape.MAP]
    for opt in opts:
        if opt.shape != Shape.MAP and any(opt.env.startswith(m.env) for m in map_opts):
            # A declaration error, not a user's: the variable would be read twice.
            raise TypeError(f"{opt.env} collides with the prefix of a map option")
        if opt.shape != Shape.MAP and opt.env in environ:
            values[opt.name] = opt.coerce(environ[opt.env], f"environment variable {opt.env}")
    for opt in map_opts:
        for name, value in environ.items():
            if name.startswith(opt.env) and len(name) > len(opt.env):
                maps[opt.name][name[len(opt.env) :].lower().replace("__", ".")] = value

    for opt in opts:
        if opt.name not in given:
            continue
        value = given[opt.name]
        if opt.shape == Shape.MAP:
            for text in value or ():
                key, item = split_assignment(text, opt.flag)
                maps[opt.name][key] = item
        else:
            values[opt.name] = tuple(value) if opt.shape == Shape.LIST else value

    for name, merged in maps.items():
        if merged:
            values[name] = dict(sorted(merged.items()))
    return values
