"""The Kafka transport: ``lstm-stream run`` over aiokafka, and the user tools around it.

Modules:

* :mod:`.command` -- ``add_arguments``/``main`` of ``lstm-stream run``.
* :mod:`.settings` -- :class:`~.settings.Settings` of ``run``, from flags, environment
  variables and a TOML file.
* :mod:`.runtime` -- the composition: :class:`~.runtime.Processor`, ``run_processor``.
* :mod:`.wiring` -- builds the stages and their collaborators for the runtime.

Subpackages:

* :mod:`.io` -- the aiokafka clients (keyword arguments, start-up, secret redaction), topic
  metadata and preparation, output and dead-letter production.
* :mod:`.stages` -- the record path: fetch, batching, dispatch to the engine, emit, ack.
* :mod:`.checkpoint` -- which offsets are safe to commit, the commit loop, transactions.
* :mod:`.durable` -- durable stream states: the state record, the state topics, the
  restore read and the recovery on assignment.
* :mod:`.group` -- group membership: owned partitions, rebalances.
* :mod:`.tools` -- ``lstm-stream produce`` and ``lstm-stream tail``.

Importing this package imports neither aiokafka nor TensorFlow; the modules do.
"""
