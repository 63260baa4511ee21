"""Synthetic live traffic for ``lstm-stream demo``: which streams send when, and their messages.

:class:`Traffic` decides which streams send in a tick: each stream has its own rate, streams
fall quiet for a while and come back (and, with a start spread, begin at different times).
:class:`Feeds` turns a tick's streams into input records (``codec.encode_input`` bytes keyed by
stream id) with per-stream increasing ``seq``, the values of a :class:`Source` (the sensors'
:class:`~processor.demo.signals.SignalBank`, or the cameras' clips of
:class:`~processor.demo.signals.FrameClips` with their targets), clips that end (the last
frame carries ``end``, the engine then forgets the stream), and a fraction of earlier messages
delivered again (as at-least-once delivery does after a rebalance). Both draw from a random
generator the caller owns, so a seeded run is reproducible. Nothing here runs the model or
measures anything.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from processor import codec
from processor.demo.signals import FEED_SALT, SignalBank


def stream_ids(n: int, prefix: str = "sensor") -> list[str]:
    """The ids of ``n`` synthetic streams (``sensor-00000``...), zero-padded to one width."""
    width = max(5, len(str(n - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(n)]


class Source(Protocol):
    """Per-stream synthetic values: ``next(idx)`` gives the next input of each stream in
    ``idx`` (distinct indices), ``[len(idx), *input_shape]``, and its target
    ``[len(idx), *output_shape]`` or None (a forecast, scored against the next input)."""

    def next(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


class SensorSource:
    """The sensors' :class:`SignalBank` values (``streams`` x ``channels``, seeded with
    ``seed`` salted with ``FEED_SALT``, so they differ from the training data); no targets:
    the model forecasts the next sample."""

    def __init__(self, streams: int, channels: int, seed: int) -> None:
        self.bank = SignalBank(streams, channels, seed, salt=FEED_SALT)

    def next(self, idx: np.ndarray) -> tuple[np.ndarray, None]:
        return self.bank.next(idx), None


@dataclass(frozen=True)
class Tick:
    """The messages of one tick (:meth:`Feeds.messages`): the new values ``x`` and their
    ``targets`` (None for forecasts) in the order of the tick's streams, which of them
    ``ended`` their clip (``end`` sent; all False without clips), and the (key, record
    bytes) to deliver."""

    x: np.ndarray
    targets: np.ndarray | None
    ended: np.ndarray
    raws: list[tuple[str, bytes]]


class Traffic:
    """Chooses the streams that send in a tick: distinct, weighted by per-stream rates
    (log-uniform over a factor of 10), skipping streams that are currently quiet.

    A stream stays active for an exponential time of mean ``mean_active_s``, then is quiet for
    a uniform time in ``quiet_s``. With ``start_spread_s`` > 0 every stream starts quiet, until
    a uniform time in ``[0, start_spread_s)``; otherwise the streams start near the steady
    state. Every random draw comes from ``rng``.
    """

    def __init__(
        self,
        n: int,
        rng: np.random.Generator,
        mean_active_s: float,
        quiet_s: tuple[float, float],
        start_spread_s: float = 0.0,
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
        if start_spread_s > 0:
            self._quiet_until = rng.uniform(0.0, start_spread_s, n)

    def pause(self, idx: np.ndarray, now: float) -> None:
        """Streams ``idx`` fall quiet at run-clock ``now`` (e.g. a clip ended), for a uniform
        time in ``quiet_s``."""
        if idx.size:
            self._quiet_until[idx] = now + self._rng.uniform(*self._quiet, idx.size)

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
    """The messages of the streams ``ids`` with values from ``source``.

    ``redeliver`` is the fraction of messages sent a second time, chosen with ``rng``. With
    ``clip_frames`` (lo, hi) the streams send clips: each clip lasts a uniform number of
    messages in ``[lo, hi]``, its last message carries ``end`` and the next message of the
    stream starts a new clip (``reset``); None = one endless sequence per stream.
    """

    def __init__(
        self,
        source: Source,
        ids: list[str],
        rng: np.random.Generator,
        redeliver: float,
        clip_frames: tuple[int, int] | None = None,
    ) -> None:
        self.source = source
        self.ids = ids
        self._rng = rng
        self._redeliver = redeliver
        self._next_seq = np.zeros(len(ids), np.int64)
        self._clip_frames = clip_frames
        # Messages left in each stream's current clip (0: the next message starts one).
        self._left = np.zeros(len(ids), np.int64)

    def messages(self, idx: np.ndarray) -> Tick:
        """One new message of each stream in ``idx``. The first ``len(idx)`` records are the
        new messages in ``idx`` order (``seq`` one above the stream's previous message);
        redelivered copies of some of them, if any, follow them."""
        k = idx.size
        ids, next_seq = self.ids, self._next_seq
        x, targets = self.source.next(idx)
        ts_ms = int(time.time() * 1000)
        ended = np.zeros(k, bool)
        starts = np.zeros(k, bool)
        if self._clip_frames is not None:
            left = self._left[idx]
            starts = left == 0
            # A new clip's length; its first message resets the state (a stream that never
            # sent before starts fresh anyway).
            lo, hi = self._clip_frames
            left = np.where(starts, self._rng.integers(lo, hi + 1, k), left) - 1
            ended = left == 0
            self._left[idx] = left
        raws: list[tuple[str, bytes]] = []
        for j in range(k):
            s = int(idx[j])
            record = codec.encode_input(
                ids[s],
                int(next_seq[s]),
                x[j],
                ts=ts_ms,
                reset=bool(starts[j]) and next_seq[s] > 0,
                end=bool(ended[j]),
            )
            raws.append((ids[s], record))
            next_seq[s] += 1
        if self._redeliver > 0:
            # At-least-once delivery: some messages arrive a second time, after the new ones
            # (a producer retrying a send whose acknowledgement was lost). Each copy repeats
            # its stream's newest seq, so the engine skips it as a duplicate. Not a clip's
            # `end` message: the engine forgot that stream, so a copy would start a new life.
            for r in np.flatnonzero((self._rng.random(k) < self._redeliver) & ~ended):
                raws.append(raws[int(r)])
        return Tick(x, targets, ended, raws)
