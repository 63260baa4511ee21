"""The stages' loops as named tasks, and the first failure of the run.

A loop that raises, or a rebalance callback that did, fails the whole processor: the first
failure is kept (and logged when it is not one of the project's own errors, which reach
the caller of ``run`` and are logged once there), the ``failed`` event wakes the runtime,
and ``on_failure`` wakes whatever waits on work that will now never finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from processor.errors import LstmStreamError

__all__ = ["KafkaRuntimeError", "Loops"]

log = logging.getLogger(__name__)


class KafkaRuntimeError(LstmStreamError):
    """The runtime cannot go on (produce failed after the client's retries, a rebalance
    callback failed, a drain timed out...). Offsets of unacknowledged work are not
    committed, so a restart re-processes it."""


class Loops:
    """See the module docstring. ``on_failure`` is called on every failure (the runtime
    abandons the ack stage's waits there)."""

    def __init__(self, on_failure: Callable[[], None]) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._on_failure = on_failure
        self._failure: BaseException | None = None
        self.failed = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as the loop ``name``; its exception fails the run."""
        task = asyncio.create_task(coro, name=f"lstm-stream-{name}")
        self._tasks[name] = task
        task.add_done_callback(self._done)

    def pop(self, name: str) -> asyncio.Task[None] | None:
        """The loop ``name`` (a drain awaits it itself), no longer cancelled on close."""
        return self._tasks.pop(name, None)

    async def cancel(self) -> None:
        """Cancel every loop left and wait for them to end (their errors are not raised)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def fail(self, exc: BaseException) -> None:
        """The run failed with ``exc`` (only the first failure is kept)."""
        if self._failure is None:
            if isinstance(exc, LstmStreamError):
                log.debug("processor failing: %s", exc)
            else:
                log.error("processor failing: %r", exc)
            self._failure = exc
        self.failed.set()
        self._on_failure()

    def raise_if_failed(self) -> None:
        """Raise the first failure: the project's own errors as they are, anything else as
        :class:`KafkaRuntimeError`."""
        if self._failure is not None:
            if isinstance(self._failure, LstmStreamError):
                raise self._failure
            raise KafkaRuntimeError(f"processor failed: {self._failure!r}") from self._failure

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)
