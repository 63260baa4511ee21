"""The command line: every subcommand's options are documented with their defaults."""

from __future__ import annotations

import pytest

from processor.cli import COMMANDS, command_parser, main


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2


def _option_entries(help_text: str) -> dict[str, str]:
    """``--help`` output -> the text of each option entry, by its first flag: an entry
    starts on a line indented by two spaces and a dash and runs over the deeper indented
    lines below it."""
    entries: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current is not None and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_stating_its_default(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # argparse's width: no wrapped words
    parser, _ = command_parser(name)
    text = parser.format_help()
    for part in (parser.description, parser.epilog):  # free text, not option entries
        text = text.replace(part or "\0", "")
    entries = _option_entries(text)
    assert "-h" in entries
    missing = [flag for flag, entry in entries.items() if flag != "-h" and "default" not in entry]
    assert missing == []
