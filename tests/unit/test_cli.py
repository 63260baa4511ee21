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
def test_every_option_has_help_and_a_default(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser, _ = _command_parser(name)
    undocumented = [
        a.option_strings
        for a in parser._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert undocumented == []
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in parser._actions:
        if action.option_strings and action.default is not argparse.SUPPRESS and action.help:
            # ArgumentDefaultsHelpFormatter appends the default to every option's help.
            assert action.option_strings[-1] in text
    assert "(default:" in text
