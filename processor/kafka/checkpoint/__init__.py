"""Offsets and checkpoints of the Kafka runtime: what may be committed, and how states and
offsets are committed together under each processing guarantee.

* :mod:`.ledger` -- :class:`~.ledger.OffsetLedger`: tickets per dispatched batch; which
  offsets are acknowledged and safe to commit (pure logic).
* :mod:`.barrier` -- plain data: a checkpoint's barrier and the requests waiting for it.
* :mod:`.states` -- state records as a checkpoint produces them
  (:class:`~.states.StateWriter`, :func:`~.states.state_batch`).
* :mod:`.cycle` -- the checkpoint cycles: :class:`~.cycle.Checkpoint` (at-least-once: states,
  then offsets) and :class:`~.cycle.TransactionalCheckpoint` (exactly-once).
* :mod:`.transactions` -- :class:`~.transactions.PartitionProducers`: one transactional
  producer per owned input partition, and :class:`~.transactions.TxnResult`.
* :mod:`.commit` -- :class:`~.commit.OffsetCommitter` (the consumer's offset commit) and
  :class:`~.commit.CommitLoop` (a checkpoint every commit interval).
"""
