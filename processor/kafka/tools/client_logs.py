"""What the user tools let the Kafka client libraries log.

``produce`` and ``tail`` say what they do in their own words (the topic they create or wait
for, a summary, one error line); aiokafka's INFO records (coordinator and connection
chatter) read like part of that story and are not. While a tool runs, the client loggers
pass WARNING and above only, unless the user asked for DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Final

__all__ = ["CLIENT_LOGGERS", "quiet_client_logs", "quiet_loggers"]

#: The loggers of the Kafka client libraries (aiokafka's, and kafka-python's it grew from).
CLIENT_LOGGERS: Final = ("aiokafka", "kafka")


@contextlib.contextmanager
def quiet_loggers(names: Iterable[str], *, show: bool = False) -> Iterator[None]:
    """Within the block, the loggers ``names`` log WARNING and above only (a logger already
    set to a higher level keeps it); ``show`` leaves them as they are. Their levels are
    restored afterwards."""
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    if not show:
        for logger in loggers:
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)


def quiet_client_logs(show: bool = False) -> contextlib.AbstractContextManager[None]:
    """:func:`quiet_loggers` of :data:`CLIENT_LOGGERS`."""
    return quiet_loggers(CLIENT_LOGGERS, show=show)
