"""Observability: the Prometheus metrics, the HTTP endpoints that expose them, and logs that
cannot flood.

* :mod:`.metrics` -- :class:`~.metrics.Metrics`, the bundle of every counter, gauge and
  histogram (``lstm_stream_*``), its buckets and :data:`~.metrics.TRANSACTION_RESULTS`; it
  reads an engine step through the :class:`~.metrics.StepFigures` protocol.
* :mod:`.histogram` -- :class:`~.histogram.BulkHistogram`, a histogram fed whole arrays.
* :mod:`.stats` -- :class:`~.stats.RunStats`, the summary of a run read from the collectors.
* :mod:`.server` -- :class:`~.server.MetricsServer`: ``/metrics``, ``/healthz``, ``/readyz``.
* :mod:`.ratelimit` -- :class:`~.ratelimit.RateLimitedLog`, warnings at most once per interval.

Anyone may import this package; it imports nothing else of the processor. Import the modules
themselves (this face re-exports nothing).
"""
