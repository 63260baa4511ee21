"""``lstm-stream demo``: the main job embedded in one process, fed by synthetic live sensors.

Thousands of :class:`~processor.example.SignalBank` streams send their samples at different
rates, some fall quiet for a while and come back. Every message takes the path of ``run`` and
``replay``: ``codec.encode_input`` -> bytes -> :class:`~processor.pipeline.Pipeline` (batch
decode -> :class:`Engine` on its own thread, with its :class:`StateCache`: admission, LRU and
idle eviction to the spill store, restore -> batch encode). A small fraction of messages is
delivered twice (as at-least-once delivery does after a rebalance) and must be skipped by the
engine as duplicates.

The model forecasts each stream's next sample, so the run measures what kept state is worth:

* stateful — the output for sample t against the sample t+1 that the stream sends next;
* reset — a sample of streams replayed afterwards through a second Engine with ``reset`` on
  every record (what a stateless server computes from the same messages);
* naive — "the next sample equals the current one".

All three are scored on exactly the same (sample t, sample t+1) pairs. For a Keras model the
demo also replays the sample streams offline with ``model.predict`` over their whole sequences
and reports the largest difference from the live outputs: the cached, evicted, spilled and
restored states must give the offline model's answers.

There is no broker and no batcher thread here: one loop generates a tick of messages, runs
them and measures. With ``--rate 0`` a tick is ``--max-batch`` messages as fast as the loop
goes; with ``--rate R`` messages are scheduled at R per second and a tick takes what is due
(flushing on ``--max-batch`` messages or a 10 ms deadline, like the runtime's batcher), so the
latency then includes the wait for the batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from processor import codec
from processor.cache import StateCache, resolve_device
from processor.engine import Engine, configure_threads
from processor.errors import ConfigError
from processor.example import FEED_SALT, SignalBank, TrainConfig, format_metrics
from processor.example import train_example_model as _train
from processor.model import KerasStepModel, StepModel, load_step_model
from processor.options import EngineOptions, add_engine_arguments, build_engine
from processor.pipeline import Pipeline, StalePolicy
from processor.records import Record

import tensorflow as tf  # isort: skip  (after processor: TF environment defaults)

# A rate-limited tick flushes on max_batch messages or when its oldest message has waited
# this long, like the runtime's batcher.
BATCH_DEADLINE_S = 0.010
PROGRESS_INTERVAL_S = 1.0
# Messages recorded per sample stream for the reset/offline comparison (bounds memory on long
# runs; the comparison then covers each stream's first messages).
MAX_SAMPLE_STEPS = 2000

IDLE_TIMEOUT_S = 1.0


def auto_cache_capacity(streams: int, max_batch: int) -> int:
    """The demo's default cache size: 9/16 of the streams (at least ``max_batch``).

    About half the streams are active at a time and those that just fell quiet stay cached
    for the idle timeout, ~0.58 of the streams together with the traffic defaults; a cache
    a little smaller than that shows both LRU and idle eviction, with spill and restore.
    """
    return max(max_batch, streams * 9 // 16)


DEMO_ENGINE = EngineOptions(
    cache_capacity=auto_cache_capacity(4000, 1024), idle_timeout=IDLE_TIMEOUT_S
)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (the ``demo`` flags).

    ``engine``: model path and engine/cache options (the shared engine flags).
    ``streams``: synthetic sensors. ``duration``: seconds of live traffic (warm-up and the
    final evaluation are not counted). ``rate``: messages per second, 0 = as fast as
    possible. ``sample_streams``: streams replayed for the reset/offline comparison.
    ``redeliver``: fraction of messages sent a second time. ``mean_active_s`` and
    ``quiet_s``: a stream stays active for an exponential time of this mean, then is quiet
    for a uniform time in ``quiet_s``. ``seed``: feeds and, without ``--model``, training.
    """

    engine: EngineOptions = field(default_factory=lambda: DEMO_ENGINE)
    streams: int = 4000
    duration: float = 30.0
    rate: float = 0.0
    seed: int = 0
    progress: bool = True
    sample_streams: int = 200
    redeliver: float = 0.002
    mean_active_s: float = 6.0
    quiet_s: tuple[float, float] = (2.0, 10.0)

    def check(self) -> None:
        """Raise ConfigError for an unusable setting."""
        if self.streams < 1:
            raise ConfigError(f"--streams must be >= 1, got {self.streams}")
        if not self.duration > 0:
            raise ConfigError(f"--duration must be > 0, got {self.duration}")
        if self.rate < 0:
            raise ConfigError(f"--rate must be >= 0, got {self.rate}")
        if not 0.0 <= self.redeliver < 1.0:
            raise ConfigError(f"--redeliver must be in [0, 1), got {self.redeliver}")
        if self.sample_streams < 0:
            raise ConfigError(f"--sample-streams must be >= 0, got {self.sample_streams}")


@dataclass(frozen=True)
class ForecastErrors:
    """Mean squared forecast errors on the same (sample t, sample t+1) pairs; ``None`` when
    there were no pairs (or, for ``reset``, when it was not measured)."""

    streams: int
    pairs: int
    stateful: float | None
    reset: float | None
    naive: float | None


@dataclass(frozen=True)
class DemoSummary:
    """What a demo run did. Counter identities that hold for every run:
    ``inputs == generated + redelivered``, ``inputs == decoded + bad_records``,
    ``outputs + duplicates == decoded`` and, with no spilled state dropped,
    ``duplicates == redelivered``."""

    model: str
    streams: int
    seconds: float
    stopped_early: bool
    rate_target: float
    generated: int
    redelivered: int
    inputs: int
    decoded: int
    bad_records: int
    outputs: int
    duplicates: int
    input_bytes: int
    output_bytes: int
    ticks: int
    compiled_calls: int
    mean_batch: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    streams_seen: int
    cache_capacity: int
    cached: int
    spilled_now: int
    admitted: int
    evicted_lru: int
    evicted_idle: int
    restored_from_spill: int
    spill_dropped: int
    all_streams: ForecastErrors
    sample: ForecastErrors
    offline_max_abs_diff: float | None
    training: str | None = None

    @property
    def throughput(self) -> float:
        """Generated messages per second of live traffic."""
        return self.generated / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Traffic: which streams send in a tick
# --------------------------------------------------------------------------------------------


class Traffic:
    """Chooses the streams that send in a tick: distinct, weighted by per-stream rates
    (log-uniform over a factor of 10), skipping streams that are currently quiet."""

    def __init__(self, n: int, rng: np.random.Generator, cfg: DemoConfig) -> None:
        self._rng = rng
        self._log_w = rng.uniform(np.log(0.1), 0.0, n)  # log of the relative rates
        self._mean_active = cfg.mean_active_s
        self._quiet = cfg.quiet_s
        # Start near the steady state (not with every stream active at once): each stream
        # is quiet with the long-run probability, for part of a quiet period.
        lo, hi = cfg.quiet_s
        mean_quiet = (lo + hi) / 2
        p_quiet = mean_quiet / (mean_quiet + cfg.mean_active_s) if hi > 0 else 0.0
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


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


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


class _Meter:
    """Counters, latencies and forecast errors, over the run and since the last report."""

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
        self.history: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {
            int(s): ([], []) for s in sample
        }
        # Since the last progress line.
        self.mark_time = 0.0
        self.mark_generated = 0
        self.mark_rows = 0
        self.mark_calls = 0
        self.mark_lat = self.latency.counts()

    def score(self, idx: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Streams ``idx`` sent ``x`` and got forecasts ``y``: score their previous forecasts
        (and the naive one) against ``x``, then keep ``y`` for their next sample."""
        prev = self.has_pred[idx]
        if prev.any():
            i = idx[prev]
            self.sq_state += float(((self.pred[i] - x[prev]) ** 2).sum())
            self.sq_naive += float(((self.last_x[i] - x[prev]) ** 2).sum())
            self.pairs += int(prev.sum())
        self.pred[idx] = y
        self.last_x[idx] = x
        self.has_pred[idx] = True
        self.seen[idx] = True
        for j in np.flatnonzero(self.in_sample[idx]):
            xs, ys = self.history[int(idx[j])]
            if len(xs) < MAX_SAMPLE_STEPS:
                xs.append(x[j].copy())
                ys.append(y[j].copy())


def _mse(sq: float, pairs: int, channels: int) -> float | None:
    return sq / (pairs * channels) if pairs else None


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _check_model(model: StepModel) -> int:
    shape = tuple(model.input_shape)
    if len(shape) != 1 or tuple(model.output_shape) != shape:
        raise ConfigError(
            f"the demo feeds sensor vectors and scores next-sample forecasts: it needs a model "
            f"with per-step input and output shape (C,); got input {shape}, output "
            f"{tuple(model.output_shape)}"
        )
    if np.dtype(model.input_dtype).kind != "f":
        raise ConfigError(f"the demo needs a float input model, got {model.input_dtype}")
    return int(shape[0])


def prepare_model(
    config: DemoConfig, train: TrainConfig | None = None, log: TextIO = sys.stderr
) -> tuple[StepModel, str | None]:
    """The model of ``config.engine.model``, or, without one, the example model trained now
    (``train`` settings, seed ``config.seed``). Returns it with the training summary, if any."""
    if config.engine.model is not None:
        return load_step_model(config.engine.model, config.engine.init_model), None
    cfg = train or TrainConfig(seed=config.seed)
    print(
        f"no --model given: training the example model now ({cfg.epochs} epochs on "
        f"{cfg.streams} streams; `lstm-stream example-model --out FILE` saves one)...",
        file=log,
        flush=True,
    )
    keras_model, metrics = _train(cfg)
    text = format_metrics(cfg, metrics)
    print(text, file=log, flush=True)
    return KerasStepModel.from_model(keras_model), text


class _Progress:
    """One status line per interval: in place on a terminal, one line each otherwise."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self._out = out
        self._enabled = enabled
        self._tty = enabled and out.isatty()

    def show(self, line: str) -> None:
        if not self._enabled:
            return
        if self._tty:
            self._out.write("\r" + line + "\x1b[K")
        else:
            self._out.write(line + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._tty:
            self._out.write("\n")
            self._out.flush()


def _progress_line(m: _Meter, now: float, engine: Engine, channels: int) -> str:
    dt = max(now - m.mark_time, 1e-9)
    rate = (m.generated - m.mark_generated) / dt
    calls = m.compiled_calls - m.mark_calls
    batch = (m.batch_rows - m.mark_rows) / calls if calls else 0.0
    now_lat = m.latency.counts()
    interval = now_lat - m.mark_lat
    st = engine.cache.stats
    mse = _mse(m.sq_state, m.pairs, channels)
    naive = _mse(m.sq_naive, m.pairs, channels)
    err = f" | MSE so far {mse:.4f} (naive {naive:.4f})" if mse is not None else ""
    m.mark_time, m.mark_generated = now, m.generated
    m.mark_rows, m.mark_calls, m.mark_lat = m.batch_rows, m.compiled_calls, now_lat
    return (
        f"[{now:5.1f}s] {rate:8,.0f} msg/s | batch {batch:6,.1f} | latency p50 "
        f"{m.latency.percentile(50, interval) * 1e3:6.1f} ms p99 "
        f"{m.latency.percentile(99, interval) * 1e3:6.1f} ms | cache "
        f"{len(engine.cache):,}/{engine.cache.capacity:,} spilled {engine.cache.spilled_count:,}"
        f" | evicted lru {st.evicted_lru:,} idle {st.evicted_idle:,} | dups {m.duplicates:,}"
        f"{err}"
    )


def _stream_ids(n: int) -> list[str]:
    width = max(5, len(str(n - 1)))
    return [f"sensor-{i:0{width}d}" for i in range(n)]


class _Run:
    """The live phase: the pieces of one run and the loop that drives them."""

    def __init__(self, config: DemoConfig, model: StepModel, channels: int, out: TextIO) -> None:
        self.config = config
        opts = config.engine
        # Thread pools were sized by main() before TensorFlow ran; asking again only warns.
        self.pipeline = Pipeline(
            lambda: build_engine(dataclasses.replace(opts, threads=0), model),
            stale=StalePolicy.SKIP,
            warmup=True,
        )
        self.rng = np.random.default_rng([config.seed, FEED_SALT, 1])
        self.bank = SignalBank(config.streams, channels, config.seed, salt=FEED_SALT)
        self.traffic = Traffic(config.streams, self.rng, config)
        self.ids = _stream_ids(config.streams)
        n_sample = min(config.sample_streams, config.streams)
        sample = np.sort(self.rng.choice(config.streams, n_sample, replace=False))
        self.meter = _Meter(config.streams, channels, sample)
        self.next_seq = np.zeros(config.streams, np.int64)
        self.last_raw: list[bytes | None] = [None] * config.streams
        self.progress = _Progress(out, config.progress)
        self.channels = channels
        self.t0 = 0.0

    @property
    def engine(self) -> Engine:
        """The engine (once :meth:`loop` started the pipeline)."""
        return self.pipeline.engine

    def loop(self, stop: threading.Event | None) -> tuple[float, bool]:
        """Run the live traffic until the duration is over or ``stop`` is set (or Ctrl-C
        arrives without a handler). Returns (seconds, stopped early)."""
        self.pipeline.start().result()
        # Everything alive now (TensorFlow, Keras, the model) lives as long as the run:
        # out of the collector's reach (else each full collection stalls the loop for
        # ~300 ms; measured: it dominated the p99 latency). Undone by close().
        self.pipeline.freeze_gc()
        self.t0 = time.perf_counter()
        stopped = False
        try:
            stopped = self._loop(stop)
        except KeyboardInterrupt:
            stopped = True
        finally:
            self.pipeline.close()
            self.progress.close()
        return time.perf_counter() - self.t0, stopped

    def _loop(self, stop: threading.Event | None) -> bool:
        cfg, meter, max_batch = self.config, self.meter, self.config.engine.max_batch
        last_tick = last_report = 0.0
        meter.mark_time = 0.0
        while True:
            now = time.perf_counter() - self.t0
            if now >= cfg.duration:
                return False
            if stop is not None and stop.is_set():
                return True
            if cfg.rate > 0:
                # Flush when a full batch is due or the oldest due message has waited for
                # the deadline; until then sleep (messages are scheduled, not generated).
                oldest = (meter.generated + 1) / cfg.rate
                full = (meter.generated + max_batch) / cfg.rate
                flush_at = min(oldest + BATCH_DEADLINE_S, full)
                if now < flush_at:
                    # At most 0.1 s at a time, so that a stop request is seen promptly.
                    time.sleep(min(flush_at, cfg.duration, now + 0.1) - now)
                    continue
                k = min(int(cfg.rate * now) - meter.generated, max_batch)
            else:
                k = max_batch
            self.traffic.update(now, now - last_tick)
            last_tick = now
            idx = self.traffic.choose(k, now)
            if idx.size == 0:  # every stream quiet right now
                time.sleep(0.001)
                continue
            self._tick(idx)
            if now - last_report >= PROGRESS_INTERVAL_S:
                now = time.perf_counter() - self.t0
                self.progress.show(_progress_line(meter, now, self.engine, self.channels))
                last_report = now

    def _tick(self, idx: np.ndarray) -> None:
        """Generate one sample of each stream in ``idx``, push everything through
        encode -> decode -> engine -> encode, and measure."""
        cfg, meter, ids, next_seq, last_raw = (
            self.config,
            self.meter,
            self.ids,
            self.next_seq,
            self.last_raw,
        )
        k = idx.size
        sent: np.ndarray | float
        if cfg.rate > 0:
            # Each message's scheduled send time: latency includes the wait for the batch.
            sent = self.t0 + (meter.generated + np.arange(1, k + 1)) / cfg.rate
        else:
            sent = time.perf_counter()
        x = self.bank.next(idx)
        ts_ms = int(time.time() * 1000)
        raws: list[tuple[str, bytes]] = []
        for j in range(k):
            s = int(idx[j])
            raws.append((ids[s], codec.encode_input(ids[s], int(next_seq[s]), x[j], ts=ts_ms)))
            next_seq[s] += 1
        if cfg.redeliver > 0:
            # At-least-once delivery: some messages arrive again, after the new ones.
            for r in np.flatnonzero(self.rng.random(k) < cfg.redeliver):
                old = last_raw[int(idx[r])]
                if old is not None:
                    raws.append((ids[int(idx[r])], old))
        for j in range(k):
            last_raw[int(idx[j])] = raws[j][1]
        pipeline = self.pipeline
        in_bytes = sum(len(raw) for _, raw in raws)
        decoded = pipeline.decode([raw for _, raw in raws], [key for key, _ in raws])
        # A bad record would be dead-lettered by `run`; the demo's feeds never make one.
        records = [r for r in decoded if isinstance(r, Record)]
        bad = len(decoded) - len(records)
        result = pipeline.step(records).result()
        out_bytes = sum(map(len, pipeline.encode(result.outputs)))
        y_by_stream = {o.stream: o.y for o in result.outputs}
        done = time.perf_counter()
        # Counters change only once the tick is complete, so that they stay consistent
        # with each other when the run is interrupted.
        meter.generated += k
        meter.redelivered += len(raws) - k
        meter.input_bytes += in_bytes
        meter.bad += bad
        meter.decoded += len(records)
        meter.outputs += len(result.outputs)
        meter.duplicates += result.duplicates + result.out_of_order
        meter.output_bytes += out_bytes
        meter.ticks += 1
        meter.compiled_calls += len(self.engine.stats.batch_sizes)
        meter.batch_rows += sum(self.engine.stats.batch_sizes)
        meter.latency.add(done - sent, count=k)
        # A new message whose output is missing would be an engine bug; it is then left out
        # of the scoring (and shows as outputs < generated in the summary).
        have = np.array([ids[int(s)] in y_by_stream for s in idx])
        if have.any():
            y = np.stack([y_by_stream[ids[int(s)]] for s in idx[have]])
            meter.score(idx[have], x[have], y)


def run_demo(
    config: DemoConfig,
    model: StepModel | None = None,
    *,
    train: TrainConfig | None = None,
    stop: threading.Event | None = None,
    out: TextIO = sys.stderr,
) -> DemoSummary:
    """Run the demo and return its summary (see the module docstring).

    ``model``: use this StepModel instead of ``config.engine.model`` / training one.
    ``train``: training settings when a model must be trained. ``stop``: set it (e.g. from a
    SIGINT handler) to end the live phase early; the summary is still computed. ``out``:
    where progress lines and notes go. Raises ConfigError for bad settings.
    """
    config.check()
    training: str | None = None
    if model is None:
        model, training = prepare_model(config, train, out)
    channels = _check_model(model)
    run = _Run(config, model, channels, out)
    seconds, stopped_early = run.loop(stop)
    meter, engine, opts = run.meter, run.engine, config.engine
    sample_errors, offline = _evaluate_sample(model, meter, run.ids, opts)
    st = engine.cache.stats
    lat = meter.latency
    return DemoSummary(
        model=_describe_model(model, opts.model),
        streams=config.streams,
        seconds=seconds,
        stopped_early=stopped_early,
        rate_target=config.rate,
        generated=meter.generated,
        redelivered=meter.redelivered,
        inputs=meter.generated + meter.redelivered,
        decoded=meter.decoded,
        bad_records=meter.bad,
        outputs=meter.outputs,
        duplicates=meter.duplicates,
        input_bytes=meter.input_bytes,
        output_bytes=meter.output_bytes,
        ticks=meter.ticks,
        compiled_calls=meter.compiled_calls,
        mean_batch=meter.batch_rows / meter.compiled_calls if meter.compiled_calls else 0.0,
        latency_p50_ms=lat.percentile(50) * 1e3,
        latency_p99_ms=lat.percentile(99) * 1e3,
        latency_max_ms=lat.max * 1e3 if meter.generated else float("nan"),
        streams_seen=int(meter.seen.sum()),
        cache_capacity=engine.cache.capacity,
        cached=len(engine.cache),
        spilled_now=engine.cache.spilled_count,
        admitted=st.admitted,
        evicted_lru=st.evicted_lru,
        evicted_idle=st.evicted_idle,
        restored_from_spill=st.restored_from_spill,
        spill_dropped=st.spill_dropped,
        all_streams=ForecastErrors(
            int(meter.has_pred.sum()),
            meter.pairs,
            _mse(meter.sq_state, meter.pairs, channels),
            None,
            _mse(meter.sq_naive, meter.pairs, channels),
        ),
        sample=sample_errors,
        offline_max_abs_diff=offline,
        training=training,
    )


def _evaluate_sample(
    model: StepModel, meter: _Meter, ids: list[str], opts: EngineOptions
) -> tuple[ForecastErrors, float | None]:
    """Score the sample streams stateful / reset / naive on identical pairs, and compare the
    live outputs with the offline model (Keras models only)."""
    hist = {s: (np.array(xs), np.array(ys)) for s, (xs, ys) in meter.history.items() if xs}
    channels = meter.pred.shape[1]
    if not hist:
        return ForecastErrors(0, 0, None, None, None), None
    streams = list(hist)
    n = len(streams)
    cache = StateCache(model.state_spec, n, device=resolve_device(opts.device))
    # Rounds of ROUNDS messages per stream go in one process() call, which the engine runs
    # as one multi-step scan: the reset flags apply at every step inside it (~10x faster
    # than one call per round, measured).
    rounds = 64
    reset_engine = Engine(model, cache, max_batch=n, scan_min_steps=4, max_scan_steps=rounds)
    decoder = codec.RecordDecoder(model.input_shape, model.input_dtype)
    reset_y = {s: np.zeros_like(hist[s][1]) for s in streams}
    depth = max(len(hist[s][0]) for s in streams)
    for t0 in range(0, depth, rounds):
        # Messages t0.. of every sample stream, each starting from the initial state
        # (reset=True), through the same codec and engine as the live run.
        records = [
            decoder.decode(codec.encode_input(ids[s], t, hist[s][0][t], reset=True), ids[s])
            for s in streams
            for t in range(t0, min(t0 + rounds, len(hist[s][0])))
        ]
        index = {ids[s]: s for s in streams}
        for o in reset_engine.process(records).outputs:
            reset_y[index[o.stream]][o.seq] = o.y
    sq_state = sq_reset = sq_naive = 0.0
    pairs = 0
    for s in streams:
        xs, ys = hist[s]
        if len(xs) < 2:
            continue
        target = xs[1:]
        sq_state += float(((ys[:-1] - target) ** 2).sum())
        sq_reset += float(((reset_y[s][:-1] - target) ** 2).sum())
        sq_naive += float(((xs[:-1] - target) ** 2).sum())
        pairs += len(target)
    errors = ForecastErrors(
        n,
        pairs,
        _mse(sq_state, pairs, channels),
        _mse(sq_reset, pairs, channels),
        _mse(sq_naive, pairs, channels),
    )
    return errors, _offline_diff(model, hist)


def _offline_diff(model: StepModel, hist: dict[int, tuple[np.ndarray, np.ndarray]]) -> float | None:
    """Largest |live output - the Keras model on the whole sequence| over the sample
    streams, or None when the model is not a Keras model."""
    keras_model = getattr(model, "keras_model", None)
    if keras_model is None:
        return None
    streams = list(hist)
    depth = max(len(hist[s][0]) for s in streams)
    channels = hist[streams[0]][0].shape[1]
    # Zero padding at the end cannot change earlier outputs of a causal recurrent model.
    x = np.zeros((len(streams), depth, channels), np.float32)
    for i, s in enumerate(streams):
        x[i, : len(hist[s][0])] = hist[s][0]
    # One compiled call of the model itself: not predict(), whose Keras 3.15 version can
    # return a single time step for some models once it has traced a longer sequence (see
    # tests/unit/conftest.py); not eager, whose per-step dispatch took seconds here.
    pred = np.asarray(tf.function(lambda v: keras_model(v, training=False))(x))
    return max(
        float(np.abs(pred[i, : len(hist[s][1])] - hist[s][1]).max()) for i, s in enumerate(streams)
    )


def _describe_model(model: StepModel, path: str | None) -> str:
    state = ", ".join(f"{s.name}{list(s.shape)}" for s in model.state_spec)
    src = path if path is not None else "example model trained in this run"
    return (
        f"{src}: input {list(model.input_shape)}, output {list(model.output_shape)}, "
        f"state {state}, {model.flops_per_step:,} FLOP/step"
    )


# --------------------------------------------------------------------------------------------
# Summary text and CLI
# --------------------------------------------------------------------------------------------


def _f(v: float | None, spec: str = ".5f") -> str:
    return "n/a" if v is None else format(v, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.1f}x" if a and b is not None else "n/a"


def format_summary(s: DemoSummary) -> str:
    """The end-of-run report (several lines, no trailing newline)."""
    mode = f"target {s.rate_target:,.0f} msg/s" if s.rate_target > 0 else "as fast as possible"
    early = " (stopped early)" if s.stopped_early else ""
    a, sm = s.all_streams, s.sample
    lines = [
        "=== lstm-stream demo summary ===",
        f"model: {s.model}",
        f"live traffic: {s.seconds:.1f} s{early}, {s.streams:,} streams ({s.streams_seen:,} "
        f"sent), {mode}",
        f"messages: {s.generated:,} generated + {s.redelivered:,} redelivered = {s.inputs:,} "
        f"in ({s.input_bytes / 1e6:.1f} MB); {s.decoded:,} decoded, {s.bad_records:,} bad",
        f"outputs: {s.outputs:,} ({s.output_bytes / 1e6:.1f} MB), duplicates dropped "
        f"{s.duplicates:,}; every generated message answered once: "
        f"{'yes' if s.outputs == s.generated else 'NO'}",
        f"throughput: {s.throughput:,.0f} msg/s for the whole path on one thread (generate, "
        "encode, decode, engine, encode output)",
        f"engine: {s.compiled_calls:,} compiled steps, mean batch {s.mean_batch:,.1f}",
        f"latency (generated -> output encoded): p50 {s.latency_p50_ms:.1f} ms, p99 "
        f"{s.latency_p99_ms:.1f} ms, max {s.latency_max_ms:.1f} ms",
        f"state cache: {s.cached:,}/{s.cache_capacity:,} streams cached, {s.spilled_now:,} "
        f"spilled now; admitted {s.admitted:,}, evicted lru {s.evicted_lru:,} idle "
        f"{s.evicted_idle:,}, restored from spill {s.restored_from_spill:,}, spilled state "
        f"dropped {s.spill_dropped:,}",
        "forecast of the next sample, mean squared error (lower is better):",
        f"  {'':28s}{'state kept':>12s}{'state reset':>13s}{'naive x[t]':>12s}{'pairs':>10s}",
        f"  {f'all {a.streams:,} streams':28s}{_f(a.stateful):>12s}{'-':>13s}{_f(a.naive):>12s}"
        f"{a.pairs:>10,}",
        f"  {f'sample of {sm.streams} streams':28s}{_f(sm.stateful):>12s}"
        f"{_f(sm.reset):>13s}{_f(sm.naive):>12s}{sm.pairs:>10,}",
        f"  kept state is {_ratio(sm.stateful, sm.reset)} better than resetting it every "
        f"message and {_ratio(sm.stateful, sm.naive)} better than the naive forecast",
    ]
    if s.offline_max_abs_diff is not None:
        lines.append(
            f"  live outputs vs the offline Keras model on the sample's whole sequences: max "
            f"abs difference {s.offline_max_abs_diff:.2e}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``lstm-stream demo``: the shared engine flags (with demo defaults that make
    evictions visible) plus the synthetic traffic."""
    d = DemoConfig()
    helps = {
        "model": "trained model ('.keras' or SavedModel) with per-step input and output shape "
        "(C,) (default %(default)s = train the example model now, ~20 s)",
        "cache_capacity": "streams whose state stays on the device (default %(default)s = 9/16 "
        "of --streams, at least --max-batch: fewer than the streams, so that the cache evicts)",
        "idle_timeout": "seconds after which an idle stream is evicted to the spill store",
    }
    add_engine_arguments(
        parser,
        model_required=False,
        defaults={"cache_capacity": None, "idle_timeout": d.engine.idle_timeout},
        helps=helps,
    )
    g = parser.add_argument_group("synthetic traffic")
    g.add_argument("--streams", type=int, default=d.streams, help="synthetic sensor streams")
    g.add_argument("--duration", type=float, default=d.duration, help="seconds of live traffic")
    g.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        help="messages per second over all streams; 0 = as fast as possible",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the feeds (and training)")
    g.add_argument(
        "--sample-streams",
        type=int,
        default=d.sample_streams,
        help="streams replayed with the state reset on every message, for the comparison",
    )
    g.add_argument(
        "--redeliver",
        type=float,
        default=d.redeliver,
        help="fraction of messages delivered twice (the engine must drop the copies)",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=True,
        help="no live progress lines on stderr (default: progress shown)",
    )


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The DemoConfig of parsed ``demo`` flags."""
    names = {f.name for f in dataclasses.fields(DemoConfig)} - {"engine"}
    engine = EngineOptions.from_args(args)
    if getattr(args, "cache_capacity", None) is None:
        capacity = auto_cache_capacity(args.streams, engine.max_batch)
        engine = dataclasses.replace(engine, cache_capacity=capacity)
    return DemoConfig(engine=engine, **{k: getattr(args, k) for k in names if hasattr(args, k)})


@contextmanager
def _sigint_sets(event: threading.Event) -> Iterator[None]:
    """While active, the first Ctrl-C sets ``event`` (the run ends and summarises); a
    second one interrupts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(args: argparse.Namespace) -> int:
    """Run the demo from parsed flags, print the summary on stdout. Exit code 0 (2 for bad
    settings)."""
    try:
        config = config_from_args(args)
        config.check()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Before TensorFlow executes anything (training, loading): later it can no longer change.
    if config.engine.threads:
        configure_threads(config.engine.threads, 1)
    stop = threading.Event()
    mode = f"{config.rate:,.0f} msg/s" if config.rate > 0 else "as fast as possible"
    print(
        f"demo: {config.streams:,} synthetic streams for {config.duration:g} s, {mode}, cache "
        f"{config.engine.cache_capacity:,} streams, idle timeout {config.engine.idle_timeout} s "
        "(Ctrl-C ends early with the summary)",
        file=sys.stderr,
        flush=True,
    )
    with _sigint_sets(stop):
        try:
            summary = run_demo(config, stop=stop)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(format_summary(summary))
    return 0
