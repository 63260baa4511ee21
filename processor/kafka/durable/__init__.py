"""Durable stream states: each input topic's compacted state topic.

* :mod:`.record` -- the state record: one stream's state, keyed by stream id, in the input
  record's partition (encoding and decoding).
* :mod:`.topic` -- creating the state topics and checking an existing one (partitions,
  ``cleanup.policy=compact``).
* :mod:`.reader` -- the restore read: one state topic partition read to its end, the latest
  state of each stream.
* :mod:`.recovery` -- restoring the states of newly assigned partitions into the engine.

Importing this package imports nothing; the modules import aiokafka.
"""
