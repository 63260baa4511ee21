"""What the demo measures while it runs: counters, latencies and errors (:class:`Meter`,
:class:`LatencyHistogram`), and the sample streams' recorded inputs and outputs
(:meth:`Meter.sample_history`) for the evaluation afterwards
(:mod:`processor.demo.evaluate`). NumPy only.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_SAMPLE_STEPS", "History", "LatencyHistogram", "Meter", "mse"]

# Messages recorded per sample stream for the reset/offline comparison (bounds memory on long
# runs; the comparison then covers each stream's first messages).
MAX_SAMPLE_STEPS = 2000

#: Per sample stream index: its recorded inputs and live outputs (``[steps, ...]`` each) and
#: targets (None for forecasts).
History = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]]


class LatencyHistogram:
    """Latencies in fixed log-spaced buckets (1 us .. 1000 s, 2% wide): bounded memory for
    any run length, percentiles within 2%. Counts are cumulative; :meth:`counts` and
    :meth:`percentile` over a difference of two snapshots give an interval's percentiles."""

    _RATIO = 1.02

    def __init__(self) -> None:
        n = math.ceil(math.log(1e9) / math.log(self._RATIO))
        self.edges = 1e-6 * self._RATIO ** np.arange(n + 1)  # seconds, upper edges
        self._counts = np.zeros(n + 2, np.int64)  # + underflow and overflow buckets
        self.max = 0.0

    def add(self, seconds: np.ndarray | float, count: int = 1) -> None:
        """Add latencies (an array, or one value ``count`` times)."""
        values = np.atleast_1d(np.asarray(seconds, np.float64))
        if values.size == 0:
            return
        buckets = np.searchsorted(self.edges, values)
        if values.size == 1:
            self._counts[buckets[0]] += count
        else:
            self._counts += np.bincount(buckets, minlength=self._counts.size)
        self.max = max(self.max, float(values.max()))

    def counts(self) -> np.ndarray:
        """A snapshot of the cumulative bucket counts."""
        return self._counts.copy()

    def percentile(self, q: float, counts: np.ndarray | None = None) -> float:
        """The ``q``-th percentile in seconds (a bucket's upper edge; NaN when empty) of all
        latencies, or of ``counts`` (e.g. ``counts() - earlier_counts()``)."""
        c = self._counts if counts is None else counts
        total = int(c.sum())
        if total == 0:
            return float("nan")
        i = int(np.searchsorted(np.cumsum(c), math.ceil(q / 100 * total)))
        if i >= self.edges.size:
            return self.max
        return float(min(self.edges[i], self.max))


class Meter:
    """Counters, latencies and errors, over the run and since the last progress line; the
    inputs, outputs and targets of the ``sample`` streams (their first
    :data:`MAX_SAMPLE_STEPS` messages, and with clips only their first clip).

    Errors: without targets each output is a forecast of the stream's next input, scored
    against it, with the baseline "next = current"; with targets each output is scored
    against its own target, with the baseline the constant zero (the mean of the symmetric
    synthetic targets: the best guess without state). ``channels``: values per output."""

    def __init__(self, n: int, channels: int, sample: np.ndarray) -> None:
        self.generated = self.redelivered = self.decoded = self.bad = 0
        self.outputs = self.duplicates = 0
        self.input_bytes = self.output_bytes = 0
        self.ticks = self.compiled_calls = self.batch_rows = 0
        self.latency = LatencyHistogram()
        self.pred = np.zeros((n, channels), np.float32)
        self.last_x = np.zeros((n, channels), np.float32)
        self.has_pred = np.zeros(n, bool)
        self.seen = np.zeros(n, bool)
        self.sq_state = 0.0
        self.sq_naive = 0.0
        self.pairs = 0
        self.in_sample = np.zeros(n, bool)
        self.in_sample[sample] = True
        self.recording = self.in_sample.copy()
        # Per sample stream: inputs, outputs, targets (the last stays empty for forecasts).
        self.history: dict[int, tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]] = {
            int(s): ([], [], []) for s in sample
        }
        # Since the last progress line.
        self.mark_time = 0.0
        self.mark_generated = 0
        self.mark_bytes = 0
        self.mark_rows = 0
        self.mark_calls = 0
        self.mark_lat = self.latency.counts()

    def score(
        self,
        idx: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        targets: np.ndarray | None = None,
        ended: np.ndarray | None = None,
    ) -> None:
        """Streams ``idx`` sent ``x`` and got outputs ``y``. Without ``targets``: score their
        previous forecasts (and the naive one) against ``x``, then keep ``y`` for their next
        sample. With ``targets``: score ``y`` (and the zero baseline) against them. ``ended``:
        which of them ended a clip (their sample recording stops there)."""
        if targets is None:
            prev = self.has_pred[idx]
            if prev.any():
                i = idx[prev]
                self.sq_state += float(((self.pred[i] - x[prev]) ** 2).sum())
                self.sq_naive += float(((self.last_x[i] - x[prev]) ** 2).sum())
                self.pairs += int(prev.sum())
            self.pred[idx] = y
            self.last_x[idx] = x
        else:
            self.sq_state += float(((y - targets) ** 2).sum())
            self.sq_naive += float((targets.astype(np.float64) ** 2).sum())
            self.pairs += idx.size
        self.has_pred[idx] = True
        self.seen[idx] = True
        for j in np.flatnonzero(self.recording[idx]):
            s = int(idx[j])
            xs, ys, ts = self.history[s]
            if len(xs) < MAX_SAMPLE_STEPS:
                xs.append(x[j].copy())
                ys.append(y[j].copy())
                if targets is not None:
                    ts.append(targets[j].copy())
            if ended is not None and ended[j]:
                self.recording[s] = False

    def sample_history(self) -> History:
        """The recorded inputs, live outputs and targets of the sample streams that sent at
        least one message, by stream index."""
        return {
            s: (np.array(xs), np.array(ys), np.array(ts) if ts else None)
            for s, (xs, ys, ts) in self.history.items()
            if xs
        }


def mse(sq: float, pairs: int, channels: int) -> float | None:
    """Mean squared error of ``pairs`` forecasts of ``channels`` values with squared-error sum
    ``sq``; None without pairs."""
    return sq / (pairs * channels) if pairs else None
