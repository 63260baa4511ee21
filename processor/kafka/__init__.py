"""The Kafka runtime of ``lstm-stream run`` (aiokafka), in replaceable parts.

* :mod:`.batcher` -- Batcher (size/deadline batches across partitions) and FlowControl
  (high/low-water backpressure); pure logic.
* :mod:`.ledger` -- OffsetLedger: which offsets are safe to commit; pure logic.
* :mod:`.ownership` -- owned partitions and which cached states survive a rebalance.
* :mod:`.rebalance` -- the ConsumerRebalanceListener adapter.
* :mod:`.commit` -- the at-least-once commit loop.
* :mod:`.output` -- batched output production and the dead-letter writer.
* :mod:`.worker` -- the engine's dedicated thread.
* :mod:`.clients` -- pass-through Kafka client options -> aiokafka keyword arguments.
* :mod:`.runtime` -- the composition: :class:`~.runtime.Processor`, ``run_processor``.
* :mod:`.command` -- ``add_arguments``/``main`` of ``lstm-stream run``.
* :mod:`.bench` -- end-to-end msg/s through a broker next to engine-only msg/s.

Importing this package imports neither aiokafka nor TensorFlow; the modules do.
"""
