"""Where a processor is in its life, shared by the runtime (which starts and stops it) and
the consumer-group handler (which marks rebalances)."""

from __future__ import annotations

import enum

__all__ = ["Lifecycle", "Phase"]


class Phase(enum.Enum):
    """A processor's phase; only RUNNING is ready (``/readyz``).

    CREATED --start--> STARTING (building the engine, preparing topics, joining the group)
    --first assignment--> RUNNING; RUNNING --revocation--> REBALANCING --assignment-->
    RUNNING; any phase --drain--> STOPPING, which no rebalance leaves; any phase
    --close--> CLOSED, the end: the stages are detached from the processor, and a rebalance
    callback that aiokafka still runs while the consumer stops does nothing (no checkpoint, no
    producer started, no recovery, no rejoin).
    """

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    REBALANCING = "rebalancing"
    STOPPING = "stopping"
    CLOSED = "closed"


class Lifecycle:
    """The current :class:`Phase`, moved only along its transitions."""

    def __init__(self) -> None:
        self.phase = Phase.CREATED

    @property
    def stopping(self) -> bool:
        """Draining or closed: a rebalance no longer changes the phase."""
        return self.phase in (Phase.STOPPING, Phase.CLOSED)

    @property
    def closed(self) -> bool:
        """The close began: rebalance callbacks must do nothing."""
        return self.phase is Phase.CLOSED

    def starting(self) -> None:
        """The start began."""
        self.phase = Phase.STARTING

    def stop(self) -> None:
        """The drain began (ignored once closed)."""
        if not self.closed:
            self.phase = Phase.STOPPING

    def close(self) -> None:
        """The close began."""
        self.phase = Phase.CLOSED

    def rebalancing(self) -> None:
        """Partitions are being revoked (ignored while stopping)."""
        if not self.stopping:
            self.phase = Phase.REBALANCING

    def assigned(self) -> None:
        """An assignment was settled (ignored while stopping)."""
        if not self.stopping:
            self.phase = Phase.RUNNING
