"""Synthetic live traffic for ``lstm-stream demo``: which streams send when, and their messages.

:class:`Traffic` decides which streams send in a tick: each stream has its own rate, streams
fall quiet for a while and come back. :class:`Feeds` turns a tick's streams into input records
(``codec.encode_input`` bytes keyed by stream id) with per-stream increasing ``seq``, the values
of a :class:`~processor.example.SignalBank`, and a fraction of earlier messages delivered again
(as at-least-once delivery does after a rebalance). Both draw from a random generator the caller
owns, so a seeded run is reproducible. Nothing here runs the model or measures anything.
"""

from __future__ import annotations

import math
import time

import numpy as np

from processor import codec
from processor.example import FEED_SALT, SignalBank


def stream_ids(n: int) -> list[str]:
    """The ids of ``n`` synthetic streams (``sensor-00000``...), zero-padded to one width."""
    width = max(5, len(str(n - 1)))
    return [f"sensor-{i:0{width}d}" for i in range(n)]


class Traffic:
    """Chooses the streams that send in a tick: distinct, weighted by per-stream rates
    (log-uniform over a factor of 10), skipping streams that are currently quiet.

    A stream stays active for an exponential time of mean ``mean_active_s``, then is quiet for
    a uniform time in ``quiet_s``. Every random draw comes from ``rng``.
    """

    def __init__(
        self,
        n: int,
        rng: np.random.Generator,
        mean_active_s: float,
        quiet_s: tuple[float, float],
    ) -> None:
        self._rng = rng
        self._log_w = rng.uniform(np.log(0.1), 0.0, n)  # log of the relative rates
        self._mean_active = mean_active_s
        self._quiet = quiet_s
        # Start near the steady state (not with every stream active at once): each stream
        # is quiet with the long-run probability, for part of a quiet period.
        lo, hi = quiet_s
        mean_quiet = (lo + hi) / 2
        p_quiet = mean_quiet / (mean_quiet + mean_active_s) if hi > 0 else 0.0
        quiet = rng.random(n) < p_quiet
        self._quiet_until = np.where(quiet, rng.uniform(lo, hi, n) * rng.random(n), 0.0)

    def update(self, now: float, dt: float) -> None:
        """Advance the active/quiet switching by ``dt`` seconds to run-clock ``now``."""
        active = self._quiet_until <= now
        p_quiet = 1.0 - math.exp(-dt / self._mean_active) if self._mean_active > 0 else 0.0
        go = active & (self._rng.random(active.size) < p_quiet)
        k = int(go.sum())
        if k:
            self._quiet_until[go] = now + self._rng.uniform(*self._quiet, k)

    def choose(self, k: int, now: float) -> np.ndarray:
        """Up to ``k`` distinct active streams, higher rates more likely (Gumbel top-k: one
        pass over the streams, exact count)."""
        active = self._quiet_until <= now
        n_active = int(active.sum())
        k = min(k, n_active)
        if k <= 0:
            return np.empty(0, np.int64)
        keys = np.where(active, self._log_w + self._rng.gumbel(size=active.size), -np.inf)
        if k == keys.size:
            return np.arange(k, dtype=np.int64)
        return np.argpartition(keys, -k)[-k:].astype(np.int64)


class Feeds:
    """The messages of ``streams`` synthetic sensors with ``channels`` values each.

    Values come from a :class:`SignalBank` seeded with ``seed`` (salted with ``FEED_SALT``, so
    they differ from the training data); ``redeliver`` is the fraction of messages sent a
    second time, chosen with ``rng``. ``ids`` are the streams' ids (the records' keys).
    """

    def __init__(
        self,
        streams: int,
        channels: int,
        seed: int,
        rng: np.random.Generator,
        redeliver: float,
    ) -> None:
        self.bank = SignalBank(streams, channels, seed, salt=FEED_SALT)
        self.ids = stream_ids(streams)
        self._rng = rng
        self._redeliver = redeliver
        self._next_seq = np.zeros(streams, np.int64)

    def messages(self, idx: np.ndarray) -> tuple[np.ndarray, list[tuple[str, bytes]]]:
        """One new sample of each stream in ``idx``: its values ``x`` (``[len(idx), channels]``)
        and the (key, record bytes) to deliver. The first ``len(idx)`` entries are the new
        messages in ``idx`` order (``seq`` one above the stream's previous message); redelivered
        copies of some of them, if any, follow them."""
        k = idx.size
        ids, next_seq = self.ids, self._next_seq
        x = self.bank.next(idx)
        ts_ms = int(time.time() * 1000)
        raws: list[tuple[str, bytes]] = []
        for j in range(k):
            s = int(idx[j])
            raws.append((ids[s], codec.encode_input(ids[s], int(next_seq[s]), x[j], ts=ts_ms)))
            next_seq[s] += 1
        if self._redeliver > 0:
            # At-least-once delivery: some messages arrive a second time, after the new ones
            # (a producer retrying a send whose acknowledgement was lost). Each copy repeats
            # its stream's newest seq, so the engine skips it as a duplicate.
            for r in np.flatnonzero(self._rng.random(k) < self._redeliver):
                raws.append(raws[int(r)])
        return x, raws
