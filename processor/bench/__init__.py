"""``lstm-stream bench``: the engine against the ways people run stateful models, measured
side by side in one process, on the same models and the same inputs.

Methods (:mod:`~processor.bench.baselines`): B0 a Keras ``stateful=True`` model called per
message, B1 a compiled step per message with host-side state, B2 a batched compiled step with
a host state table, the engine (device-resident state cache), replay (decode -> engine ->
encode) and, given ``--bootstrap-servers``, Kafka end to end through a real broker.

Modules:

* :mod:`~processor.bench.command`: the command (flags, ``main``);
  :mod:`~processor.bench.config`: how big a run is; :mod:`~processor.bench.suite`: one whole
  run, section by section;
* measuring: :mod:`~processor.bench.harness` (budgets, alternating time slices, machine
  facts), :mod:`~processor.bench.models` (the benchmark's models and inputs),
  :mod:`~processor.bench.runner` (a warmed-up engine and its counters);
* sections: :mod:`~processor.bench.agreement`, :mod:`~processor.bench.sweeps` (batch sizes,
  cached streams, state dtype, catch-up), :mod:`~processor.bench.replay_bench`,
  :mod:`~processor.bench.gc_impact`, :mod:`~processor.bench.breakdown`,
  :mod:`~processor.bench.tiers`, :mod:`~processor.bench.frames` (the seed frame model),
  :mod:`~processor.bench.host` (the host path on the free model against its floors: engine
  and replay), :mod:`~processor.bench.host_kafka` (its Kafka twin, against Kafka's
  ProducerPerformance and aiokafka's own floors) and :mod:`~processor.bench.kafka_sections`
  (the ones through a broker);
* through a broker, each also runnable alone (``python -m processor.bench.<name>``):
  :mod:`~processor.bench.kafka` (end to end against engine-only, on
  :mod:`~processor.bench.kafka_setup`), :mod:`~processor.bench.eos` (exactly-once against
  at-least-once, on :mod:`~processor.bench.guarantees`), :mod:`~processor.bench.durable`
  (restore, state volume), :mod:`~processor.bench.frames_kafka` (camera frames);
* reporting: :mod:`~processor.bench.goals` (the performance goals),
  :mod:`~processor.bench.verdicts`, :mod:`~processor.bench.kafka_verdicts` and
  :mod:`~processor.bench.host_verdicts` (judging them), :mod:`~processor.bench.results`
  (reading the results dict), :mod:`~processor.bench.markdown` (with
  :mod:`~processor.bench.markdown_engine`, :mod:`~processor.bench.markdown_kafka`,
  :mod:`~processor.bench.markdown_host`),
  :mod:`~processor.bench.plots` and :mod:`~processor.bench.report` (verdicts in order, the
  writers).
"""
