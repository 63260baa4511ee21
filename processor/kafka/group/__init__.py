"""Consumer-group handling of the Kafka runtime: which partitions this member owns and what
it does when they are revoked, assigned or lost.

* :mod:`.ownership` -- :class:`~.ownership.Ownership`: owned, held-back and cleanly revoked
  partitions (pure logic).
* :mod:`.drop` -- :class:`~.drop.PartitionDrop`: the one place a partition is dropped
  (detached, then forgotten), and what a partition whose transaction did not commit does.
* :mod:`.handler` -- :class:`~.handler.GroupHandler`: revocation (drain and commit) and
  assignment (hold back, keep or recover, release).
* :mod:`.rebalance` -- :class:`~.rebalance.RebalanceListener`: aiokafka's listener, calling
  the handler and reporting its failures.
"""
