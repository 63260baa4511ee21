"""Per-stream model states in three tiers: a device table, a host table and a disk store.

:class:`~processor.state.cache.StateCache` is what the engine uses: it gives each batch's
streams device slots (admitting new streams, evicting the least recently used or idle ones to
the tiers below, bringing returning ones back), and snapshots and loads states for the
durability layer. A stream's state is in exactly one tier; none is dropped for lack of room.

Modules:

* :mod:`~processor.state.cache` -- ``StateCache``, its admission and eviction policy, and
  the types it exchanges: ``StreamState`` (a stream's float32 state and last seq) and
  ``Acquired`` (a batch's slots).
* :mod:`~processor.state.device` -- ``DeviceTable``: the pre-allocated TensorFlow tables
  the compiled step gathers from and scatters to.
* :mod:`~processor.state.spill` -- ``Spill``: the tiers below the device, a host table
  overflowing to disk.
* :mod:`~processor.state.host` -- ``HostTable``: pre-allocated NumPy rows in LRU order.
* :mod:`~processor.state.disk_tier` -- ``DiskTier``: the disk store as the cache uses it
  (opened on first use, chunked, lost states counted and logged).
* :mod:`~processor.state.disk` -- ``DiskStore`` (embedded RocksDB in a private directory)
  and ``RecordLayout`` (a state's bytes in it).
* :mod:`~processor.state.convert` -- storage dtypes and their host representation
  (bfloat16 as raw bits).
* :mod:`~processor.state.rows` -- ``Rows``, a batch of states moving between tiers, and the
  shape checks of states given to the cache.
* :mod:`~processor.state.stats` -- ``Tier`` (where a stream's state is) and ``CacheStats``
  (the cache's counters).

Nothing here does asynchronous or Kafka I/O; a cache belongs to one thread (the engine's).
"""
