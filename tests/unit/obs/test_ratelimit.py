"""RateLimitedLog: one warning per interval, the suppressed ones counted in the next."""

from __future__ import annotations

import logging

import pytest

from processor.obs.ratelimit import RateLimitedLog


def test_one_warning_per_interval_and_the_suppressed_ones_are_reported_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    limited = RateLimitedLog(logging.getLogger("t"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        limited.warning("dropped %s", "a")
        now[0] += 5.0
        limited.warning("dropped %s", "b")
        limited.warning("dropped %s", "c")
        now[0] += 5.0  # exactly one interval after the first line
        limited.warning("dropped %s", "d")
        now[0] += 1.0
        limited.warning("dropped %s", "e")
    assert [r.getMessage() for r in caplog.records] == [
        "dropped a",
        "dropped d (and 2 more like it since the last such warning)",
    ]
    assert limited.suppressed == 1


def test_the_first_warning_is_logged_whatever_the_clock_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limited = RateLimitedLog(logging.getLogger("t0"), 10.0, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="t0"):
        limited.warning("first")
    assert [r.getMessage() for r in caplog.records] == ["first"]


def test_the_lines_are_logged_at_the_level_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("t1"), 10.0, clock=lambda: 0.0, level=logging.ERROR)
    with caplog.at_level(logging.WARNING, logger="t1"):
        limited.warning("lost %d", 3)
        limited.warning("lost %d", 4)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("ERROR", "lost 3")]
