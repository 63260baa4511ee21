"""The command line: every subcommand's options are documented with their defaults."""

from __future__ import annotations

import argparse

import pytest

from processor.cli import COMMANDS, _command_parser, main


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_stating_its_default(name: str) -> None:
    parser, _ = _command_parser(name)
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        # What --help prints for this option (ArgumentDefaultsHelpFormatter appends the
        # default; options whose default is computed state it in their own text).
        text = formatter._expand_help(action) if action.help else ""
        if "default" not in text:
            missing.append(action.option_strings[-1])
    assert missing == []
