"""What the state cache tells about itself: which tier holds a stream's state (:class:`Tier`)
and its counters (:class:`CacheStats`, one per cache, updated as it works).

No TensorFlow and no I/O, so that whoever reports the numbers (the pipeline's per-step
snapshot, metrics, demos, benchmarks) can name the types without loading the cache.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

__all__ = ["CacheStats", "Tier"]


class Tier(enum.Enum):
    """Where a stream's state is (it is in exactly one tier, or in none)."""

    DEVICE = "device"
    HOST = "host"
    DISK = "disk"


@dataclass(slots=True)
class CacheStats:
    """Monotonic counters of one :class:`processor.state.cache.StateCache`.

    Admission and eviction on the device:

    * ``admitted``: streams given a device slot they did not have.
    * ``evicted_lru``: streams moved off the device to make room for others.
    * ``evicted_idle``: streams moved off the device for being idle.
    * ``ended``: stream lives ended by an applied ``end`` record.

    States moving between the tiers (device -> host -> disk, and back to the device):

    * ``spilled``: device -> host table (LRU or idle eviction).
    * ``spilled_to_disk``: to the disk store (from the host table when it is full, or
      straight from a load larger than the host table).
    * ``restored_from_spill``: host table or disk -> device (a returning stream);
      ``disk_reads`` counts those that came from the disk.
    * ``loaded``: states put into the host table (and beyond) by a load.
    * ``state_lost``: states lost although the cache had kept them (a failing disk write or
      read, an unreadable stored value); each is also logged as an ERROR. Nothing is ever
      dropped for lack of room.

    The cache owns and updates the object in place; :meth:`copy` gives a reader its own
    copy (another thread, or numbers to compare later).
    """

    admitted: int = 0
    evicted_lru: int = 0
    evicted_idle: int = 0
    ended: int = 0
    spilled: int = 0
    spilled_to_disk: int = 0
    restored_from_spill: int = 0
    disk_reads: int = 0
    loaded: int = 0
    state_lost: int = 0

    def copy(self) -> CacheStats:
        """The counters as they are now, in an object the cache no longer updates."""
        return replace(self)
