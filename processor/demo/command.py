"""``lstm-stream demo``: the main job embedded in one process, fed by synthetic live sensors or
cameras (see :mod:`processor.demo` for what a run does and measures).

This module is the command: its flags (:func:`add_arguments`, :func:`config_from_args`) and
:func:`main`, which runs :func:`~processor.demo.run.run_demo` with Ctrl-C ending the live
phase early, prints the summary and writes it as JSON with ``--summary-json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from processor.config.engine_options import EngineOptions, add_engine_arguments
from processor.demo.config import KIND_DEFAULTS, KINDS, DemoConfig, DemoKind, auto_cache_capacity
from processor.demo.prepare import Trainers
from processor.demo.report import DemoSummary, format_summary, write_summary_json
from processor.demo.run import run_demo
from processor.engine.threads import configure_threads
from processor.errors import ConfigError

__all__ = ["RunDemo", "add_arguments", "config_from_args", "main"]


class RunDemo(Protocol):
    """What :func:`main` runs the demo with: :func:`~processor.demo.run.run_demo`'s
    contract (the summary of the run of ``config``; ``stop`` set ends the live phase early;
    raises ConfigError for bad settings)."""

    def __call__(
        self, config: DemoConfig, *, stop: threading.Event, trainers: Trainers | None
    ) -> DemoSummary: ...


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
    kind = DemoKind(given.get("kind", DemoConfig.kind))
    fields = {**KIND_DEFAULTS[kind], **given, "kind": kind}
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


def main(
    args: argparse.Namespace,
    *,
    trainers: Trainers | None = None,
    run: RunDemo = run_demo,
    configure: Callable[[int | None, int | None], None] = configure_threads,
    write_json: Callable[[DemoSummary, str], object] = write_summary_json,
) -> int:
    """Run the demo from parsed flags, print the summary on stdout (and, with
    ``--summary-json``, write :func:`~processor.demo.report.summary_record` there). Exit
    code 0; 2 for bad settings, 1 when the JSON file cannot be written.

    The collaborators default to the real ones: ``trainers``: how to train the example
    model without ``--model`` (default: :class:`~processor.demo.prepare.Trainers`);
    ``run``: runs the demo of the flags' config
    (:func:`~processor.demo.run.run_demo`); ``configure``: sizes TensorFlow's intra- and
    inter-op thread pools, called with ``(--threads, 1)`` before the demo runs when
    ``--threads`` is given (:func:`~processor.engine.threads.configure_threads`);
    ``write_json``: writes the summary to the ``--summary-json`` path, raising OSError
    when it cannot (:func:`~processor.demo.report.write_summary_json`)."""
    try:
        config = config_from_args(args)
        config.check()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Before TensorFlow executes anything (training, loading): later it can no longer change.
    if config.engine.threads:
        configure(config.engine.threads, 1)
    stop = threading.Event()
    mode = f"{config.rate:,.0f} msg/s" if config.rate > 0 else "as fast as possible"
    streams = "cameras" if config.kind == DemoKind.FRAMES else "sensors"
    print(
        f"demo: {config.streams:,} synthetic {streams} for {config.duration:g} s, "
        f"{mode}, cache "
        f"{config.engine.cache_capacity:,} streams, idle timeout {config.engine.idle_timeout} s "
        "(Ctrl-C ends early with the summary)",
        file=sys.stderr,
        flush=True,
    )
    with _sigint_sets(stop):
        try:
            summary = run(config, stop=stop, trainers=trainers)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(format_summary(summary))
    json_path = getattr(args, "summary_json", None)
    if json_path is not None:
        try:
            write_json(summary, json_path)
        except OSError as exc:
            print(f"error: cannot write --summary-json {json_path}: {exc}", file=sys.stderr)
            return 1
    return 0
