"""Rate-limited warnings for events that can happen at message rate (pure logic)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most one line per ``interval_s``; the lines suppressed in between are counted
    and reported with the next one, so a flood costs a few lines, not one per record.
    ``clock``: monotonic seconds (injectable for tests); ``level``: the level of the lines
    (an event that is an error deserves the same flood protection)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self._log = logger
        self._level = level
        self._interval_s = interval_s
        self._clock = clock
        self._next = float("-inf")
        self.suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        """Log ``msg % args`` (at ``level``: WARNING by default) unless one was logged less
        than ``interval_s`` ago (then count it)."""
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return
        if self.suppressed:
            msg += " (and %d more like it since the last such warning)"
            args = (*args, self.suppressed)
        self._log.log(self._level, msg, *args)
        self.suppressed = 0
        self._next = now + self._interval_s
