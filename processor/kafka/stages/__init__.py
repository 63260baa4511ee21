"""The Kafka runtime's event-loop stages a record passes through, in order (built by
:mod:`processor.kafka.wiring`).

* :mod:`.items` -- plain data of a record and a batch on their way (Item, Batch, Emitted).
* :mod:`.fetch` -- :class:`~.fetch.Fetcher`: owned partitions' records, decoded, into the
  batcher; flow control applied to the consumer.
* :mod:`.batcher` -- :class:`~.batcher.Batcher` (size/deadline batches shared across
  partitions) and :class:`~.batcher.FlowControl` (high/low-water backpressure); pure logic.
* :mod:`.dispatch` -- :class:`~.dispatch.Dispatcher`: batches through the engine thread, in
  order, with exactly-once checkpoint barriers between two emissions.
* :mod:`.emit` -- :class:`~.emit.Emitter`: outputs and dead letters to the producer.
* :mod:`.ack` -- :class:`~.ack.Acker`: acknowledged batches complete their ledger tickets.
* :mod:`.lag` -- :class:`~.lag.LagGauge`: the consumer-lag gauge per owned partition.
"""
