"""The engine: steps a model over many streams' records in compiled, padded batches.

* :mod:`processor.engine.plan` -- pure planning of a batch: per-stream order, duplicates and
  out-of-order records, ``reset``/``end``, waves vs catch-up scan (no TensorFlow);
* :mod:`processor.engine.engine` -- :class:`~processor.engine.engine.Engine`, which executes
  the plan as compiled gather -> step -> scatter calls over the state cache, padded to
  buckets, and its warm-up;
* :mod:`processor.engine.pipeline` -- the one path from raw values to encoded outputs, with
  the engine on its own thread and the stale-record policy;
* :mod:`processor.engine.sources` -- which source each stream comes from, and the streams
  changed since the last checkpoint;
* :mod:`processor.engine.buckets` -- the padded sizes of the compiled calls;
* :mod:`processor.engine.build` -- the engine built from the engine options;
* :mod:`processor.engine.device` and :mod:`processor.engine.threads` -- the TensorFlow
  device it runs on and TensorFlow's thread pools.

Nothing is re-exported here: importing the planner must not import TensorFlow.
"""
