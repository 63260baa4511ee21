"""``lstm-stream demo``: the main job embedded in one process, fed by synthetic live sensors or
cameras.

Thousands of :class:`~processor.demo.example.SignalBank` streams send their samples at different
rates, some fall quiet for a while and come back. With ``--kind frames`` thousands of
:class:`~processor.demo.frames_example.FrameClips` cameras send 84x84x1 uint8 frames of a bouncing
object instead, each at its own frame rate, starting at different times, in clips that end
(``end``: the engine forgets the stream) and start again after a pause; the model gives the
object's velocity in every frame. Every message takes the path of ``run`` and
``replay``: ``codec.encode_input`` -> bytes -> :class:`~processor.engine.pipeline.Pipeline` (batch
decode -> :class:`Engine` on its own thread, with its :class:`StateCache`: admission, LRU and
idle eviction to the spill store, restore -> batch encode). A small fraction of messages is
delivered twice (as at-least-once delivery does after a rebalance) and must be skipped by the
engine as duplicates.

The sensor model forecasts each stream's next sample, so the run measures what kept state is
worth: its forecasts with the state kept, with the state reset on every message (a sample of
streams replayed afterwards) and the naive "next = current", all on the same pairs. The frames
model's velocities are scored the same way against the true velocities, the baseline being
the best guess from one frame (the constant mean velocity, zero). For a Keras model the live
outputs are also checked against the offline model over the sample's whole sequences (for
frames: each sample camera's first clip).

There is no broker and no batcher thread here: one loop generates a tick of messages, runs
them and measures. With ``--rate 0`` a tick is ``--max-batch`` messages as fast as the loop
goes; with ``--rate R`` messages are scheduled at R per second and a tick takes what is due
(flushing on ``--max-batch`` messages or a 10 ms deadline, like the runtime's batcher), so the
latency then includes the wait for the batch.

This module is the command: its flags (:func:`add_arguments`, :func:`config_from_args`,
:class:`DemoConfig`), :func:`main` and :func:`run_demo`, which prepares the model and puts the
pieces together. The pieces: :mod:`processor.demo.feeds` (the synthetic traffic and its messages),
:mod:`processor.demo.live` (the live loop over the pipeline, its measurements and progress line)
and :mod:`processor.demo.report` (the evaluation of the sample streams and the summary). The
names callers use (:class:`DemoSummary`, :class:`LatencyHistogram`, :func:`format_summary`...)
are re-exported here, and :func:`run_demo` looks its helpers up in this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from processor.config.engine_options import EngineOptions, add_engine_arguments
from processor.demo.example import TrainConfig, format_metrics
from processor.demo.example import train_example_model as _train
from processor.demo.feeds import Traffic as Traffic
from processor.demo.frames_example import (
    FRAME_SHAPE,
    FramesTrainConfig,
    format_frames_metrics,
    train_frames_model,
)
from processor.demo.live import BATCH_DEADLINE_S as BATCH_DEADLINE_S
from processor.demo.live import MAX_SAMPLE_STEPS as MAX_SAMPLE_STEPS
from processor.demo.live import PROGRESS_INTERVAL_S as PROGRESS_INTERVAL_S
from processor.demo.live import LatencyHistogram as LatencyHistogram
from processor.demo.live import LiveRun as _Run
from processor.demo.live import mse as _mse
from processor.demo.report import (
    DemoSummary,
    ForecastErrors,
    format_summary,
    sample_history,
    write_summary_json,
)
from processor.demo.report import describe_model as _describe_model
from processor.demo.report import evaluate_sample as _evaluate_sample
from processor.demo.report import offline_diff as _offline_diff
from processor.demo.report import summary_record as summary_record
from processor.engine.threads import configure_threads
from processor.errors import ConfigError
from processor.model.protocol import KerasStepModel, StepModel, load_step_model

IDLE_TIMEOUT_S = 1.0


def auto_cache_capacity(streams: int, max_batch: int) -> int:
    """The demo's default cache size: 9/16 of the streams (at least ``max_batch``).

    About half the streams are active at a time and those that just fell quiet stay cached
    for the idle timeout, ~0.58 of the streams together with the traffic defaults; a cache
    a little smaller than that shows both LRU and idle eviction, with spill and restore.
    """
    return max(max_batch, streams * 9 // 16)


KINDS = ("sensor", "frames")
# Settings whose default depends on --kind (a frame is ~7 KB and ~0.4 MFLOP: fewer streams,
# and a smaller sample, whose whole clips are kept in memory for the evaluation).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "sensor": {"streams": 4000, "sample_streams": 200},
    "frames": {"streams": 2000, "sample_streams": 32, "start_spread_s": 5.0},
}

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
    ``kind``: "sensor" or "frames" (:data:`KIND_DEFAULTS` holds the settings the flags
    default differently for frames). ``clip_frames``: for frames, each clip's length is
    uniform in this range. ``start_spread_s``: streams start at a uniform time in
    ``[0, start_spread_s)`` (0 = near the steady state from the start).
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
    kind: str = "sensor"
    clip_frames: tuple[int, int] = (30, 300)
    start_spread_s: float = 0.0

    def check(self) -> None:
        """Raise ConfigError for an unusable setting."""
        if self.kind not in KINDS:
            raise ConfigError(f"--kind must be one of {KINDS}, got {self.kind!r}")
        lo, hi = self.clip_frames
        if not 1 <= lo <= hi:
            raise ConfigError(f"clip lengths must satisfy 1 <= lo <= hi, got {lo}, {hi}")
        if self.start_spread_s < 0:
            raise ConfigError(f"the start spread must be >= 0, got {self.start_spread_s}")
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


def _check_model(model: StepModel, kind: str = "sensor") -> int:
    """The number of output values per step, after checking that ``model`` fits ``kind``."""
    shape = tuple(model.input_shape)
    out = tuple(model.output_shape)
    if kind == "frames":
        if shape != FRAME_SHAPE or np.dtype(model.input_dtype) != np.uint8 or out != (2,):
            raise ConfigError(
                f"the frames demo feeds {FRAME_SHAPE} uint8 frames and scores velocities: it "
                f"needs a model with per-step input {FRAME_SHAPE} uint8 and output (2,); got "
                f"input {shape} {model.input_dtype}, output {out}"
            )
        return 2
    if len(shape) != 1 or out != shape:
        raise ConfigError(
            f"the demo feeds sensor vectors and scores next-sample forecasts: it needs a model "
            f"with per-step input and output shape (C,); got input {shape}, output "
            f"{out}"
        )
    if np.dtype(model.input_dtype).kind != "f":
        raise ConfigError(f"the demo needs a float input model, got {model.input_dtype}")
    return int(shape[0])


def prepare_model(
    config: DemoConfig,
    train: TrainConfig | FramesTrainConfig | None = None,
    log: TextIO | None = None,
) -> tuple[StepModel, str | None]:
    """The model of ``config.engine.model`` (with ``config.engine.init_model``), or, without
    one, the example model of ``config.kind`` trained now (``train`` settings, of the kind's
    type; default: the kind's defaults with seed ``config.seed``). Returns it with the
    training summary, if any. Raises ConfigError for ``--init-model`` without ``--model`` or
    ``train`` settings of the other kind. Notes go to ``log`` (default: ``sys.stderr`` at
    the time of the call)."""
    log = log if log is not None else sys.stderr
    if config.engine.model is not None:
        return load_step_model(config.engine.model, config.engine.init_model), None
    if config.engine.init_model is not None:
        raise ConfigError("--init-model needs the --model it belongs to")
    if config.kind == "frames":
        fcfg = train or FramesTrainConfig(seed=config.seed)
        if not isinstance(fcfg, FramesTrainConfig):
            raise ConfigError("the frames demo trains with FramesTrainConfig settings")
        print(
            f"no --model given: training the frames example model now ({fcfg.epochs} epochs "
            f"on {fcfg.streams} clips; `lstm-stream example-model --kind frames --out FILE` "
            "saves one)...",
            file=log,
            flush=True,
        )
        frames_model, init_model, fmetrics = train_frames_model(fcfg)
        text = format_frames_metrics(fcfg, fmetrics)
        print(text, file=log, flush=True)
        return KerasStepModel.from_model(frames_model, init_model), text
    cfg = train or TrainConfig(seed=config.seed)
    if not isinstance(cfg, TrainConfig):
        raise ConfigError("the sensor demo trains with TrainConfig settings")
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


def run_demo(
    config: DemoConfig,
    model: StepModel | None = None,
    *,
    train: TrainConfig | FramesTrainConfig | None = None,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
) -> DemoSummary:
    """Run the demo and return its summary (see the module docstring).

    ``model``: use this StepModel instead of ``config.engine.model`` / training one.
    ``train``: training settings when a model must be trained. ``stop``: set it (e.g. from a
    SIGINT handler) to end the live phase early; the summary is still computed. ``out``:
    where progress lines and notes go (default: ``sys.stderr`` at the time of the call).
    Raises ConfigError for bad settings.
    """
    config.check()
    out = out if out is not None else sys.stderr
    training: str | None = None
    if model is None:
        model, training = prepare_model(config, train, out)
    channels = _check_model(model, config.kind)
    run = _Run(config, model, channels, out)
    seconds, stopped_early = run.loop(stop)
    meter, engine, opts = run.meter, run.engine, config.engine
    hist = sample_history(meter)
    sample_errors = _evaluate_sample(model, hist, run.ids, opts, channels)
    offline = _offline_diff(model, hist) if hist else None
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
        state_lost=st.state_lost,
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
        kind=config.kind,
    )


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
    g.add_argument(
        "--kind",
        choices=KINDS,
        default=d.kind,
        help="sensor: float vectors, the model forecasts the next one; frames: 84x84x1 uint8 "
        "camera frames in clips of a bouncing object, the model gives its velocity (without "
        "--model the frames example model is trained now, ~1 min)",
    )
    g.add_argument(
        "--streams",
        type=int,
        default=None,
        help="synthetic streams (default: 4000 sensors, 2000 cameras)",
    )
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
        default=None,
        help="streams replayed with the state reset on every message, for the comparison "
        "(default: 200 sensors, 32 cameras)",
    )
    g.add_argument(
        "--redeliver",
        type=float,
        default=d.redeliver,
        help="fraction of messages delivered twice (the engine must drop the copies)",
    )
    g.add_argument(
        "--summary-json",
        metavar="PATH",
        default=None,
        help="also write the summary's figures (throughput, batches, latency percentiles, the "
        "error table, the offline agreement) to PATH as one JSON object, for scripts and CI",
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
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    kind = given.get("kind", DemoConfig.kind)
    fields = {**KIND_DEFAULTS.get(kind, {}), **given}
    engine = EngineOptions.from_args(args)
    if getattr(args, "cache_capacity", None) is None:
        capacity = auto_cache_capacity(fields["streams"], engine.max_batch)
        engine = dataclasses.replace(engine, cache_capacity=capacity)
    return DemoConfig(engine=engine, **fields)


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
    """Run the demo from parsed flags, print the summary on stdout (and, with
    ``--summary-json``, write :func:`summary_record` there). Exit code 0; 2 for bad settings,
    1 when the JSON file cannot be written."""
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
        f"demo: {config.streams:,} synthetic {'cameras' if config.kind == 'frames' else 'sensors'}"
        f" for {config.duration:g} s, "
        f"{mode}, cache "
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
    json_path = getattr(args, "summary_json", None)
    if json_path is not None:
        try:
            write_summary_json(summary, json_path)
        except OSError as exc:
            print(f"error: cannot write --summary-json {json_path}: {exc}", file=sys.stderr)
            return 1
    return 0
