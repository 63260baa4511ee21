"""The embedded main job (``lstm-stream demo``) and the example models it runs
(``lstm-stream example-model``).

A demo run feeds thousands of synthetic streams through the same path as ``run`` and
``replay``: ``codec.encode_input`` -> bytes -> :class:`~processor.engine.pipeline.Pipeline`
(batch decode -> the engine on its own thread, with its state cache: admission, LRU and idle
eviction to the spill store, restore -> batch encode). Sensors
(:class:`~processor.demo.signals.SignalBank`) send samples at different rates, fall quiet
for a while and come back; with ``--kind frames`` cameras
(:class:`~processor.demo.signals.FrameClips`) send 84x84x1 uint8 frames of a bouncing object
in clips that end (``end``: the engine forgets the stream) and start again after a pause. A
small fraction of messages is delivered twice (as at-least-once delivery does after a
rebalance) and must be skipped by the engine as duplicates.

The sensor model forecasts each stream's next sample, so a run measures what kept state is
worth: its forecasts with the state kept, with the state reset on every message (a sample of
streams replayed afterwards) and the naive "next = current", all on the same pairs. The
frames model's velocities are scored the same way against the true velocities, the baseline
being the best guess from one frame (zero). For a Keras model the live outputs are also
checked against the offline model over the sample's whole sequences (for frames: each sample
camera's first clip).

There is no broker and no batcher thread: one loop generates a tick of messages, runs them
and measures. With ``--rate 0`` a tick is ``--max-batch`` messages as fast as the loop goes;
with ``--rate R`` messages are scheduled at R per second and a tick takes what is due
(flushing on ``--max-batch`` messages or a 10 ms deadline, like the runtime's batcher), so
the latency then includes the wait for the batch.

Modules (each imported by its full path; this face re-exports nothing):

* :mod:`~processor.demo.command` -- the ``demo`` command: flags and ``main``;
* :mod:`~processor.demo.config` -- :class:`DemoConfig`, :class:`DemoKind` and the defaults;
* :mod:`~processor.demo.run` -- :func:`run_demo`: one run, from settings to summary;
* :mod:`~processor.demo.prepare` -- the run's model: loaded, or the example model trained now;
* :mod:`~processor.demo.live` -- the live loop over the pipeline and its progress line;
* :mod:`~processor.demo.meter` -- counters, latency histogram, errors, sample recordings;
* :mod:`~processor.demo.evaluate` -- the sample streams' reset replay and offline check;
* :mod:`~processor.demo.report` -- :class:`DemoSummary`, its text and its JSON;
* :mod:`~processor.demo.feeds` -- which streams send when, and their messages;
* :mod:`~processor.demo.signals` -- the seeded sensor and camera generators;
* :mod:`~processor.demo.example`, :mod:`~processor.demo.frames_example` -- the sensor and
  frames example models and their training;
* :mod:`~processor.demo.example_command` -- the ``example-model`` command;
* :mod:`~processor.demo.synthetic` -- :class:`SyntheticInput`, the deterministic input of
  ``produce`` and the benchmarks.
"""
