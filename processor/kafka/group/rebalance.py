"""The consumer-group rebalance listener: a thin adapter from aiokafka to the group handler
(:class:`~processor.kafka.group.handler.GroupHandler`).

aiokafka awaits the listener's coroutines inside its group coordinator and *swallows*
(logs) any exception they raise, after which the group goes on as if all was well. This
adapter therefore catches everything and reports it to the runtime (which then fails loudly
instead of running with a half-handled rebalance). The handler must not take a lock that is
held across ``consumer.getmany()`` (the coordinator may wait for that call -- deadlock).

aiokafka does not call the listener on ``consumer.stop()``: the runtime commits before it
stops the consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiokafka.abc import ConsumerRebalanceListener

from processor.errors import LstmStreamError

__all__ = ["RebalanceHandler", "RebalanceListener"]

log = logging.getLogger(__name__)


class RebalanceHandler(Protocol):
    """What the group handler implements."""

    async def on_revoked(self, partitions: set[Any]) -> None:
        """Partitions are being taken away: finish their in-flight work and commit."""
        ...

    async def on_assigned(self, partitions: set[Any]) -> None:
        """The new assignment (eager protocol: the full set, often the same as before)."""
        ...


class RebalanceListener(ConsumerRebalanceListener):
    """Forwards aiokafka's callbacks to a :class:`RebalanceHandler`, never raising: an
    exception of the handler goes to ``on_error`` (the runtime must not continue
    silently)."""

    def __init__(
        self, handler: RebalanceHandler, on_error: Callable[[BaseException], None]
    ) -> None:
        self._handler = handler
        self._on_error = on_error

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self._forward("revocation", self._handler.on_revoked, revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        await self._forward("assignment", self._handler.on_assigned, assigned)

    async def _forward(
        self,
        what: str,
        call: Callable[[set[Any]], Awaitable[None]],
        partitions: set[Any],
    ) -> None:
        """Await ``call(partitions)``; a failure goes to ``on_error``, never to aiokafka."""
        try:
            await call(set(partitions))
        except LstmStreamError as exc:  # says what went wrong; the runtime reports it once
            log.debug("handling the %s of %s failed: %s", what, sorted(map(str, partitions)), exc)
            self._on_error(exc)
        except Exception as exc:
            log.exception("handling the %s of %s failed", what, sorted(map(str, partitions)))
            self._on_error(exc)
