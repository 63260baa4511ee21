"""The user tools around the Kafka processor, one command per module.

* :mod:`.produce` -- ``lstm-stream produce``: synthetic sensor or frame streams written to
  an input topic (created when it does not exist yet).
* :mod:`.tail` -- ``lstm-stream tail``: the records of an output or dead-letter topic,
  decoded, one JSON object per line (a missing topic is waited for).
* :mod:`.flags` -- the Kafka client flags both take, from ``run``'s sources with ``run``'s
  precedence.
* :mod:`.client_logs` -- while a tool runs, the Kafka client libraries log WARNING and
  above only.

Each command module offers ``add_arguments(parser)`` and ``main(args) -> int`` to
:mod:`processor.cli`. Importing this package imports neither aiokafka nor TensorFlow.
"""
