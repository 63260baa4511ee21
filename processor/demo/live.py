"""The live phase of ``lstm-stream demo``: the loop that feeds synthetic traffic through the
:class:`~processor.engine.pipeline.Pipeline` and measures it, with its live progress line.

:class:`LiveRun` drives one run: each tick it asks :class:`~processor.demo.feeds.Traffic` which
streams send, gets their messages from :class:`~processor.demo.feeds.Feeds`, and pushes the bytes
through the pipeline (batch decode -> engine thread -> batch encode). There is no broker and
no batcher thread: with ``rate`` 0 a tick is ``max_batch`` messages as fast as the loop goes;
with a rate, messages are scheduled at that rate and a tick takes what is due (flushing on
``max_batch`` messages or a :data:`BATCH_DEADLINE_S` deadline, like the runtime's batcher),
so the latency then includes the wait for the batch. Its :class:`~processor.demo.meter.Meter`
keeps the counters, latencies and errors, and the sample streams' inputs and outputs.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np

from processor.demo.config import DemoConfig, DemoKind
from processor.demo.feeds import Feeds, SensorSource, Source, Traffic, stream_ids
from processor.demo.meter import Meter, mse
from processor.demo.signals import FEED_SALT, FrameClips
from processor.engine.build import build_engine
from processor.engine.engine import Engine
from processor.engine.pipeline import Pipeline, StalePolicy
from processor.model import StepModel
from processor.records import Record

__all__ = ["BATCH_DEADLINE_S", "PROGRESS_INTERVAL_S", "LiveRun", "StopWhen", "progress_line"]

# A rate-limited tick flushes on max_batch messages or when its oldest message has waited
# this long, like the runtime's batcher.
BATCH_DEADLINE_S = 0.010
PROGRESS_INTERVAL_S = 1.0


class Progress:
    """One status line per interval: in place on a terminal, one line each otherwise."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self._out = out
        self._enabled = enabled
        self._tty = enabled and out.isatty()

    def show(self, line: str) -> None:
        """Show ``line`` (nothing when disabled): over the previous one on a terminal."""
        if not self._enabled:
            return
        if self._tty:
            self._out.write("\r" + line + "\x1b[K")
        else:
            self._out.write(line + "\n")
        self._out.flush()

    def close(self) -> None:
        """End the in-place line on a terminal, so that later output starts on its own."""
        if self._tty:
            self._out.write("\n")
            self._out.flush()


def progress_line(m: Meter, now: float, engine: Engine, channels: int) -> str:
    """The status line at run-clock ``now``: rates and latencies since the previous line (whose
    marks in ``m`` it moves to now), cache and error figures since the start."""
    dt = max(now - m.mark_time, 1e-9)
    rate = (m.generated - m.mark_generated) / dt
    mb_rate = (m.input_bytes - m.mark_bytes) / dt / 1e6
    calls = m.compiled_calls - m.mark_calls
    batch = (m.batch_rows - m.mark_rows) / calls if calls else 0.0
    now_lat = m.latency.counts()
    interval = now_lat - m.mark_lat
    st = engine.cache.stats
    state = mse(m.sq_state, m.pairs, channels)
    naive = mse(m.sq_naive, m.pairs, channels)
    err = f" | MSE so far {state:.4f} (baseline {naive:.4f})" if state is not None else ""
    m.mark_time, m.mark_generated, m.mark_bytes = now, m.generated, m.input_bytes
    m.mark_rows, m.mark_calls, m.mark_lat = m.batch_rows, m.compiled_calls, now_lat
    return (
        f"[{now:5.1f}s] {rate:8,.0f} msg/s {mb_rate:6,.1f} MB/s | batch {batch:6,.1f} | "
        f"latency p50 "
        f"{m.latency.percentile(50, interval) * 1e3:6.1f} ms p99 "
        f"{m.latency.percentile(99, interval) * 1e3:6.1f} ms | cache "
        f"{len(engine.cache):,}/{engine.cache.capacity:,} spilled {engine.cache.spilled_count:,}"
        f" | evicted lru {st.evicted_lru:,} idle {st.evicted_idle:,} | dups {m.duplicates:,}"
        f"{err}"
    )


#: Asked after every tick (and progress line) with the live run; True ends the run early,
#: as a set ``stop`` event does.
StopWhen = Callable[["LiveRun"], bool]


class LiveRun:
    """The live phase of one demo run: its pipeline, feeds and meter, and the loop that drives
    them. :func:`~processor.demo.run.run_demo` builds one, calls :meth:`loop` once, then
    reads :attr:`meter`, :attr:`engine` and :attr:`ids`; progress lines go to ``out`` when
    ``config.progress``. ``channels``: values per model output. ``stop_when``: see
    :data:`StopWhen` (None: only the duration and ``stop`` end the run)."""

    def __init__(
        self,
        config: DemoConfig,
        model: StepModel,
        channels: int,
        out: TextIO,
        stop_when: StopWhen | None = None,
    ) -> None:
        self.config = config
        self._stop_when = stop_when
        opts = config.engine
        # Thread pools were sized by main() before TensorFlow ran; asking again only warns.
        self.pipeline = Pipeline(
            lambda: build_engine(dataclasses.replace(opts, threads=0), model),
            stale=StalePolicy.SKIP,
            warmup=True,
        )
        self.rng = np.random.default_rng([config.seed, FEED_SALT, 1])
        source: Source
        if config.kind == DemoKind.FRAMES:
            source = FrameClips(config.streams, config.seed, salt=FEED_SALT)
            ids, clips = stream_ids(config.streams, "camera"), config.clip_frames
        else:
            source = SensorSource(config.streams, channels, config.seed)
            ids, clips = stream_ids(config.streams), None
        self.feeds = Feeds(source, ids, self.rng, config.redeliver, clips)
        self.traffic = Traffic(
            config.streams,
            self.rng,
            config.mean_active_s,
            config.quiet_s,
            config.start_spread_s,
        )
        self.ids = ids
        n_sample = min(config.sample_streams, config.streams)
        sample = np.sort(self.rng.choice(config.streams, n_sample, replace=False))
        self.meter = Meter(config.streams, channels, sample)
        self.progress = Progress(out, config.progress)
        self.channels = channels
        self.t0 = 0.0

    @property
    def engine(self) -> Engine:
        """The engine (once :meth:`loop` started the pipeline)."""
        return self.pipeline.engine

    def loop(self, stop: threading.Event | None) -> tuple[float, bool]:
        """Run the live traffic until the duration is over, ``stop`` is set, ``stop_when``
        answers True (or Ctrl-C arrives without a handler). Returns (seconds, stopped
        early). Call it once: it closes the pipeline."""
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
        """The ticks until the run ends; True when it ended before its duration."""
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
                self.progress.show(progress_line(meter, now, self.engine, self.channels))
                last_report = now
            if self._stop_when is not None and self._stop_when(self):
                return True

    def _tick(self, idx: np.ndarray) -> None:
        """Generate one sample of each stream in ``idx``, push everything through
        encode -> decode -> engine -> encode, and measure."""
        cfg, meter, ids = self.config, self.meter, self.ids
        k = idx.size
        sent: np.ndarray | float
        if cfg.rate > 0:
            # Each message's scheduled send time: latency includes the wait for the batch.
            sent = self.t0 + (meter.generated + np.arange(1, k + 1)) / cfg.rate
        else:
            sent = time.perf_counter()
        tick = self.feeds.messages(idx)
        x, raws = tick.x, tick.raws
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
            targets = None if tick.targets is None else tick.targets[have]
            meter.score(idx[have], x[have], y, targets, tick.ended[have])
        # A clip that ended leaves its stream quiet for a while before the next one.
        self.traffic.pause(idx[tick.ended], time.perf_counter() - self.t0)
