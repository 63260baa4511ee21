"""Declared options as argparse flags.

Two ways to put options on a parser (:func:`add_arguments`): *plain* (the flag's default is
the declared default and the command reads only its flags: ``replay``, ``demo``, ``bench``)
and *layered* (flags default to ``argparse.SUPPRESS``, so
:func:`processor.config.sources.resolve` can tell a flag that was given from one that was
not and fill the rest from the environment, a TOML table and the defaults: ``run``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from processor.config.declare import Option, Shape

__all__ = ["add_arguments"]


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
    ``argparse.SUPPRESS`` (see :func:`processor.config.sources.resolve`), the help names the
    environment variable and the printed default (``required`` options say so instead), and
    a ``bool`` is a ``--name/--no-name`` pair so that a flag can override the environment
    either way. ``groups`` maps an option's ``group`` to the argument group it goes in.
    ``helps`` (plain only) replaces an option's help text for one command, whole: it states
    the default itself (``%(default)s``).
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
            if opt.shape == Shape.MAP:
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
        if opt.shape == Shape.MAP:
            kwargs.update(action="append", metavar=opt.metavar or "KEY=VALUE")
        elif opt.shape == Shape.LIST:
            kwargs.update(action="append", metavar=opt.metavar)
        elif opt.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if layered else "store_true"
        else:
            kwargs.update(type=_argparse_type(opt), choices=opt.choices, metavar=opt.metavar)
        target.add_argument(opt.flag, **kwargs)
