"""The user tools keep the Kafka client libraries' logs at WARNING and above.

:func:`quiet_client_logs` raises the client loggers to WARNING for a block and restores them;
``produce`` and ``tail`` run inside it (their library function is replaced by a recorder of
what the client loggers would pass), unless the user asked for DEBUG.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from processor import cli
from processor.kafka.tools import produce as produce_tool
from processor.kafka.tools import tail as tail_tool
from processor.kafka.tools.client_logs import CLIENT_LOGGERS, quiet_client_logs
from processor.kafka.tools.produce import ProduceStats

TOOLS = {"produce": (produce_tool, ProduceStats(0, 1.0)), "tail": (tail_tool, 0)}


@pytest.fixture
def client_levels() -> Iterator[None]:
    """The client loggers' levels are put back as they were after each test."""
    loggers = [logging.getLogger(name) for name in CLIENT_LOGGERS]
    before = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, before, strict=True):
        logger.setLevel(level)


def _passes_info() -> dict[str, bool]:
    return {name: logging.getLogger(name).isEnabledFor(logging.INFO) for name in CLIENT_LOGGERS}


@pytest.mark.usefixtures("client_levels")
def test_client_loggers_pass_warnings_only_within_the_block() -> None:
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    with quiet_client_logs():
        assert _passes_info() == dict.fromkeys(CLIENT_LOGGERS, False)
        assert logging.getLogger("aiokafka.cluster").isEnabledFor(logging.WARNING)
    assert [logging.getLogger(n).level for n in CLIENT_LOGGERS] == [logging.DEBUG] * 2


@pytest.mark.usefixtures("client_levels")
def test_a_higher_level_is_kept_and_show_leaves_the_levels_alone() -> None:
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.DEBUG)
    with quiet_client_logs():
        assert logging.getLogger("aiokafka").level == logging.ERROR
        assert logging.getLogger("kafka").level == logging.WARNING
    with quiet_client_logs(show=True):
        assert logging.getLogger("kafka").level == logging.DEBUG


@pytest.mark.usefixtures("client_levels")
@pytest.mark.parametrize("command", sorted(TOOLS))
@pytest.mark.parametrize(
    ("log_level", "shown"), [("INFO", False), ("DEBUG", True)], ids=["info", "debug"]
)
def test_the_tools_run_with_the_client_logs_quiet(
    command: str,
    log_level: str,
    shown: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    module, result = TOOLS[command]
    seen: list[dict[str, bool]] = []

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        seen.append(_passes_info())
        return result

    for name in [n for n in os.environ if n.startswith("LSTM_STREAM_")]:
        monkeypatch.delenv(name)
    caplog.set_level(log_level)  # the root level cli.main's --log-level sets
    parser, _ = cli.command_parser(command)
    assert module.main(parser.parse_args(["--topic", "t"]), run=recorded) == 0
    assert seen == [dict.fromkeys(CLIENT_LOGGERS, shown)]
    assert _passes_info() == dict.fromkeys(CLIENT_LOGGERS, True)  # restored afterwards
