"""``lstm-stream run``: the Kafka stream processor's command (``add_arguments``, ``main``).

Exit codes: 0 after a graceful stop (SIGTERM/SIGINT: stop fetching, drain, produce,
commit), 1 when the processor failed, 2 for invalid settings, 3 when the cluster cannot be
reached or refuses the TLS/SASL settings at start (one error line:
:class:`~processor.errors.KafkaAccessError`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from processor.errors import ConfigError, KafkaAccessError, LstmStreamError
from processor.kafka.settings import (
    Settings,
    add_settings_arguments,
    configure_logging,
    settings_from_args,
)
from processor.tfenv import quiet_tensorflow_startup

__all__ = ["EPILOG", "Runnable", "add_arguments", "main", "run_until_signalled"]

log = logging.getLogger(__name__)

EPILOG = """\
What it does:
  Consumes the input topics as a consumer group (the message key must be the stream id; a
  'stream' field in the value is optional and must equal the key if present), decodes and
  validates each record, batches across partitions and streams (--max-batch records or
  --max-delay-ms, whichever comes first), steps the model on a dedicated engine thread, and
  produces one output per valid input to --output-topic with the stream id as key.

Bad records (undecodable, schema violations, wrong shape/dtype, non-finite values, key and
  'stream' disagreeing, oversize, ...) go to --dlq-topic with their original key and value;
  headers lstm-stream.reason / .detail / .source.topic / .source.partition / .source.offset
  say why and where from. The processor keeps running. A record without a message key is
  dead-lettered as 'missing_key' even when its value has a 'stream' field: without a key
  the producer spreads one stream over partitions, its records arrive out of order and
  would be skipped as duplicates. The value of an 'oversize' record is omitted, others are
  cut to --dlq-max-value-bytes (header lstm-stream.value-truncated = original size), and a
  dead letter refused as too large is re-sent without its value.

Stale records: a record whose seq equals its stream's last applied seq (an at-least-once
  re-delivery, or a record sent twice) is a duplicate; one whose seq is below it arrived out
  of order (a producer without idempotence retried a batch after a later one: producers must
  keep per-key order). Both are skipped, get no output and are NOT dead-lettered; they are
  counted in lstm_stream_duplicates_skipped_total and lstm_stream_out_of_order_skipped_total,
  and out-of-order records are logged (rate-limited WARNING naming the stream).

Delivery (--processing-guarantee): at-least-once by default. Offsets are committed only
  after the outputs and dead letters of the records they cover are acknowledged by the
  broker; after a crash, records since the last commit are processed again (duplicate
  outputs downstream are possible). exactly-once runs one transaction per input partition
  and commit interval holding its outputs, dead letters, state records and offsets: readers
  with isolation.level=read_committed see each output once, one interval later.

Durable state (--state-topic): every stream's state is written to a compacted state topic
  at each commit and read back when a partition is assigned, so a restart, a crash or a
  moved partition resumes every stream where its committed offset left it. With
  --state-topic none states live in this process only, and such streams restart from their
  initial state.

Backpressure: at --queue-max-records records in flight every partition is paused; fetching
  resumes at --queue-low-records. SIGTERM/SIGINT: stop fetching, drain, produce, commit,
  exit 0 (a second signal aborts without the final commit).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``run`` option (each help text states its default and env variable)."""
    add_settings_arguments(parser)
    parser.epilog = EPILOG
    if parser.formatter_class is argparse.HelpFormatter:  # keep the epilog's line breaks
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


class Runnable(Protocol):
    """What :func:`run_until_signalled` runs: the processor
    (:class:`processor.kafka.runtime.Processor`) or a stand-in for it."""

    async def run(self, stop_event: asyncio.Event | None = None) -> object: ...


async def run_until_signalled(
    settings: Settings, processor_factory: Callable[[Settings], Runnable] | None = None
) -> int:
    """Run ``processor_factory(settings)`` (default: the Kafka processor) until the first
    SIGTERM/SIGINT, which sets its stop event (drain, produce, commit); a second one cancels
    the run (no final commit). Returns 0 after a clean stop; the processor's errors
    propagate."""
    if processor_factory is None:
        # Heavy imports only when running (``run --help`` stays cheap), with TensorFlow's
        # start-up lines kept off the terminal as for every other command (processor.tfenv).
        with quiet_tensorflow_startup(show=logging.getLogger().isEnabledFor(logging.DEBUG)):
            from processor.kafka.runtime import Processor
        processor_factory = Processor

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("%s received: draining (send again to abort)", signal.Signals(signum).name)
            stop.set()
        elif main_task is not None:
            log.warning("second signal: aborting without the final commit")
            main_task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        processor = processor_factory(settings)
        stats = await processor.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped cleanly: %s", stats)
    return 0


def main(
    args: argparse.Namespace,
    *,
    serve: Callable[[Settings], Coroutine[Any, Any, int]] = run_until_signalled,
) -> int:
    """Run the processor until SIGTERM/SIGINT; returns the exit code (see module doc).
    ``serve`` runs it once the settings are valid (tests stand in for it)."""
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"lstm-stream run: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    log.info("settings: %r", settings)
    try:
        return asyncio.run(serve(settings))
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    except KafkaAccessError as exc:
        # One line, like the settings' errors: the cause and what to check, no traceback.
        print(f"lstm-stream run: {exc}", file=sys.stderr)
        return KafkaAccessError.exit_code
    except LstmStreamError as exc:
        log.error("processor failed: %s", exc)
        return 1
    except asyncio.CancelledError:
        log.error("aborted")
        return 1
    except Exception:
        log.exception("processor failed")
        return 1
