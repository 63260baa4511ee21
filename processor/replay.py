"""Replay: a file of concatenated msgpack input records through the engine into a file of
output records (``lstm-stream replay``), the embedded twin of the Kafka runtime.

Contract: exactly one output record per valid input record, per-stream order kept; every
invalid record (undecodable, schema violation, shape/dtype mismatch, non-finite values,
oversize, a ``seq`` not greater than the stream's last applied one) goes to the dead-letter
file with its reason, index and byte offset, or to stderr as a text line when no
dead-letter file is given. Memory is bounded: input is read in chunks and applied in groups.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from processor.codec import encode_dead_letter, iter_framed
from processor.codec.reasons import UNDECODABLE
from processor.config.engine_options import EngineOptions, add_engine_arguments
from processor.engine.build import build_engine
from processor.engine.engine import Engine
from processor.engine.pipeline import Pipeline, StalePolicy, Stepped
from processor.errors import BadRecord, LstmStreamError
from processor.records import Record

import tensorflow as tf  # isort: skip

log = logging.getLogger(__name__)

# How many decoded records are applied at once: large enough that a catch-up backlog of a
# stream becomes one scan, small enough to bound memory.
GROUP_RECORDS = 4096
# Records decoded at once (the codec's batch fast path checks a whole chunk in one go).
DECODE_CHUNK = 1024


@dataclass
class ReplayStats:
    """Counts of one replay run; ``framing_error`` is set when the input could not be read
    to its end (records after that point were not read)."""

    records_in: int = 0
    outputs: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    seconds: float = 0.0
    framing_error: str | None = None


class _DeadLetters:
    def __init__(self, fp: BinaryIO | None, text: TextIO, source: str | None) -> None:
        self._fp = fp
        self._text = text
        self._source = source
        self.count = 0

    def put(self, raw: bytes, reason: str, detail: str, offset: int, index: int) -> None:
        self.count += 1
        if self._fp is not None:
            self._fp.write(
                encode_dead_letter(
                    raw, reason, detail, source=self._source, offset=offset, index=index
                )
            )
        else:
            self._text.write(f"dead-letter index={index} offset={offset} {reason}: {detail}\n")


def replay(
    engine: Engine,
    input: BinaryIO,
    output: BinaryIO,
    dlq: BinaryIO | None = None,
    *,
    dlq_text: TextIO | None = None,
    source: str | None = None,
    max_record_bytes: int = 4 * 1024 * 1024,
    group_records: int = GROUP_RECORDS,
    freeze_gc: bool = False,
) -> ReplayStats:
    """Run every record of ``input`` through ``engine``; see the module docstring.

    The records take the :class:`~processor.engine.pipeline.Pipeline` (stale records dead-lettered
    as ``non_increasing_seq``): the engine runs on the pipeline's thread while this thread
    frames and decodes the next group and encodes the previous group's outputs (TensorFlow
    releases the GIL during the step). ``freeze_gc``: apply the pipeline's collector policy
    for the call (the command does; a library caller measuring its own policy may not).
    """
    pipeline = Pipeline(
        lambda: engine,
        stale=StalePolicy.DEAD_LETTER,
        max_record_bytes=max_record_bytes,
        warmup=False,
        owns_engine=False,  # the caller's engine: the caller closes its cache
    )
    pipeline.start().result()
    if freeze_gc:
        pipeline.freeze_gc()
    try:
        return _replay(pipeline, input, output, dlq, dlq_text, source, group_records)
    finally:
        pipeline.close()


def _replay(
    pipeline: Pipeline,
    input: BinaryIO,
    output: BinaryIO,
    dlq: BinaryIO | None,
    dlq_text: TextIO | None,
    source: str | None,
    group_records: int,
) -> ReplayStats:
    dead = _DeadLetters(dlq, dlq_text or sys.stderr, source)
    stats = ReplayStats()
    started = time.perf_counter()
    # A group: its records and, in parallel, where each came from (raw bytes, byte offset,
    # index), for dead-lettering stale records verbatim. Looked up by identity only when a
    # group has some, so the common path costs no per-record dictionary work.
    Origins = list[tuple[bytes, int, int]]
    inflight: tuple[Future[Stepped], list[Record], Origins] | None = None

    def finish(job: tuple[Future[Stepped], list[Record], Origins]) -> None:
        future, records, origin = job
        result = future.result()
        output.write(b"".join(pipeline.encode(result.outputs)))
        stats.outputs += len(result.outputs)
        if result.dead_letters:
            where = {id(r): i for i, r in enumerate(records)}
            for r, bad in result.dead_letters:
                raw, offset, index = origin[where[id(r)]]
                dead.put(raw, bad.reason, bad.detail, offset, index)
        stats.duplicates += result.duplicates
        stats.out_of_order += result.out_of_order

    def submit(records: list[Record], origin: Origins) -> None:
        nonlocal inflight
        job = (pipeline.step(records), records, origin)
        if inflight is not None:
            finish(inflight)  # its outputs are encoded while the new group computes
        inflight = job

    pending: list[Record] = []
    origin: Origins = []
    frames: Origins = []  # awaiting decoding

    def decode_frames() -> None:
        nonlocal pending, origin
        results = pipeline.decode([f[0] for f in frames], [None] * len(frames))
        for frame, res in zip(frames, results, strict=True):
            if isinstance(res, BadRecord):
                dead.put(frame[0], res.reason, res.detail, frame[1], frame[2])
            else:
                pending.append(res)
                origin.append(frame)
        frames.clear()
        if len(pending) >= group_records:
            submit(pending, origin)
            pending, origin = [], []

    for index, frame in enumerate(iter_framed(input, pipeline.max_record_bytes)):
        stats.records_in += 1
        if frame.error is not None:
            reason = frame.reason or UNDECODABLE
            dead.put(frame.raw or b"", reason, frame.error, frame.offset, index)
            if frame.fatal:  # the input after it could not be read
                stats.framing_error = f"{frame.error} at byte {frame.offset}"
            continue
        frames.append((frame.raw or b"", frame.offset, index))
        if len(frames) >= DECODE_CHUNK:
            decode_frames()
    if frames:
        decode_frames()
    if pending:
        submit(pending, origin)
    if inflight is not None:
        finish(inflight)
    stats.dead_letters = dead.count
    stats.seconds = time.perf_counter() - started
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``lstm-stream replay``."""
    parser.add_argument(
        "--input", required=True, help="file of concatenated msgpack input records, or - (stdin)"
    )
    parser.add_argument(
        "--output", required=True, help="file for the output records, or - (stdout)"
    )
    parser.add_argument(
        "--dlq",
        default=None,
        help="file for dead-letter records (msgpack maps: reason, detail, record, offset, "
        "index); default: one text line per bad record on stderr",
    )
    parser.add_argument(
        "--max-record-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="larger input records are dead-lettered as oversize",
    )
    add_engine_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run ``lstm-stream replay``; 0 on success, 1 when the run fails (model, device, I/O),
    2 when the input's framing is corrupt so that records after it could not be read."""
    try:
        engine = build_engine(EngineOptions.from_args(args))
    except LstmStreamError as exc:
        print(f"lstm-stream replay: {exc}", file=sys.stderr)
        return 1
    try:
        with contextlib.ExitStack() as files:
            in_fp = (
                sys.stdin.buffer
                if args.input == "-"
                else files.enter_context(open(args.input, "rb"))
            )
            out_fp = (
                sys.stdout.buffer
                if args.output == "-"
                else files.enter_context(open(args.output, "wb"))
            )
            dlq_fp = files.enter_context(open(args.dlq, "wb")) if args.dlq else None
            stats = replay(
                engine,
                in_fp,
                out_fp,
                dlq_fp,
                source=None if args.input == "-" else args.input,
                max_record_bytes=args.max_record_bytes,
                freeze_gc=True,  # TF/Keras objects live for the whole run
            )
            out_fp.flush()
    except (OSError, LstmStreamError, tf.errors.OpError) as exc:
        # I/O and device failures end the run with one clear line, not a traceback.
        print(f"lstm-stream replay: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.cache.close()  # the disk tier's files
    rate = stats.outputs / stats.seconds if stats.seconds > 0 else 0.0
    print(
        f"replay: {stats.records_in} records in, {stats.outputs} outputs, "
        f"{stats.dead_letters} dead letters ({stats.duplicates} duplicates, "
        f"{stats.out_of_order} out of order) in "
        f"{stats.seconds:.2f} s ({rate:,.0f} msg/s)",
        file=sys.stderr,
    )
    if stats.framing_error is not None:
        print(
            f"lstm-stream replay: input framing is corrupt ({stats.framing_error}); the rest of "
            "the input could not be read",
            file=sys.stderr,
        )
        return 2
    return 0
