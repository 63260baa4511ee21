"""One ``lstm-stream demo`` run: from its settings to its
:class:`~processor.demo.report.DemoSummary`.

:func:`run_demo` composes the pieces: the model (:mod:`processor.demo.prepare`: given,
loaded or trained now, checked against the kind), the live phase
(:class:`~processor.demo.live.LiveRun` over the engine's
:class:`~processor.engine.pipeline.Pipeline`), the evaluation of the sample streams
(:mod:`processor.demo.evaluate`) and the summary of what the run did.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from processor.demo.config import DemoConfig, DemoKind
from processor.demo.evaluate import evaluate_sample, offline_diff
from processor.demo.example import TrainConfig
from processor.demo.frames_example import FramesTrainConfig
from processor.demo.live import LiveRun, StopWhen
from processor.demo.meter import mse
from processor.demo.prepare import Trainers, check_model, prepare_model
from processor.demo.report import DemoSummary, ForecastErrors, describe_model
from processor.model import StepModel

__all__ = ["run_demo"]


def run_demo(
    config: DemoConfig,
    model: StepModel | None = None,
    *,
    train: TrainConfig | FramesTrainConfig | None = None,
    trainers: Trainers | None = None,
    stop: threading.Event | None = None,
    stop_when: StopWhen | None = None,
    out: TextIO | None = None,
) -> DemoSummary:
    """Run the demo and return its summary (see :mod:`processor.demo`).

    ``model``: use this StepModel instead of ``config.engine.model`` / training one.
    ``train``, ``trainers``: the training settings and trainers when a model must be trained
    (:func:`~processor.demo.prepare.prepare_model`). ``stop``: set it (e.g. from a SIGINT
    handler) to end the live phase early; ``stop_when``: asked after every tick with the
    :class:`~processor.demo.live.LiveRun`, True ends it early too; the summary is still
    computed. ``out``: where progress lines and notes go (default: ``sys.stderr`` at the
    time of the call). Raises ConfigError for bad settings.
    """
    config.check()
    kind = DemoKind(config.kind)
    out = out if out is not None else sys.stderr
    training: str | None = None
    if model is None:
        model, training = prepare_model(config, train, out, trainers=trainers)
    channels = check_model(model, kind)
    run = LiveRun(config, model, channels, out, stop_when)
    seconds, stopped_early = run.loop(stop)
    meter, engine, opts = run.meter, run.engine, config.engine
    hist = meter.sample_history()
    sample_errors = evaluate_sample(model, hist, run.ids, opts, channels)
    offline = offline_diff(model, hist) if hist else None
    st = engine.cache.stats
    lat = meter.latency
    return DemoSummary(
        model=describe_model(model, opts.model),
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
            mse(meter.sq_state, meter.pairs, channels),
            None,
            mse(meter.sq_naive, meter.pairs, channels),
        ),
        sample=sample_errors,
        offline_max_abs_diff=offline,
        training=training,
        kind=kind,
    )
