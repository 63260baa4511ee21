"""Kafka client I/O: building, starting and using the aiokafka clients, and the topics.

* :mod:`.clients` -- pass-through Kafka options -> consumer, producer and admin client
  keyword arguments.
* :mod:`.bootstrap` -- ``start_client``: a failed bootstrap as one explained error line.
* :mod:`.redaction` -- secret settings' values kept out of servers' error texts.
* :mod:`.metadata` -- reading the topics' metadata (never naming a topic, so none is
  auto-created), waiting for topics, the replication factor of new ones.
* :mod:`.topics` -- ``prepare_topics``: input topics waited for or created, output topics
  created, before the consumer joins its group.
* :mod:`.output` -- batched output production and the dead-letter writer.

Importing this package imports nothing; the modules import aiokafka.
"""
