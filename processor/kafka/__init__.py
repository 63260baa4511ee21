"""The Kafka transport: ``lstm-stream run`` over aiokafka, and the user tools around it.

Modules:

* :mod:`.command` -- ``add_arguments``/``main`` of ``lstm-stream run``.
* :mod:`.settings` -- :class:`~.settings.Settings` of ``run``, from flags, environment
  variables and a TOML file.
* :mod:`.runtime` -- the lifecycle: :class:`~.runtime.Processor` (start, run, fail loudly,
  drain, close), ``run_processor``.
* :mod:`.loops` -- the processor's loop tasks and the first failure among them.
* :mod:`.phase` -- where a processor is in its life (``Phase``, only RUNNING is ready).
* :mod:`.wiring` -- builds the stages and their collaborators for the runtime.
* :mod:`.network` -- :class:`~.network.Network`: how the runtime makes its Kafka clients,
  prepares its topics and makes its metrics server.

Subpackages:

* :mod:`.io` -- the aiokafka clients (keyword arguments, start-up, secret redaction), topic
  metadata and preparation, output and dead-letter production.
* :mod:`.stages` -- the record path: fetch, batching, dispatch to the engine, emit, ack.
* :mod:`.checkpoint` -- which offsets are safe to commit, the barrier, the checkpoint
  cycle, state records, the commit loop, exactly-once transactions.
* :mod:`.durable` -- durable stream states: the state record, the state topics, the
  restore read and the recovery on assignment.
* :mod:`.group` -- the consumer group: owned and held-back partitions, the one
  revoke/assign handler, the one place a partition is dropped, the rebalance listener.
* :mod:`.tools` -- ``lstm-stream produce`` and ``lstm-stream tail``.

Importing this package imports neither aiokafka nor TensorFlow; the modules do.
"""
