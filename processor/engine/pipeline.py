"""The one path from raw values to encoded outputs: batch decode -> engine on its own thread
-> batch encode. ``run`` (Kafka), ``replay`` (files) and ``demo`` (synthetic feeds) are thin
transports over it; see ``docs/architecture.md``.

A :class:`Pipeline` owns

* the validating batch decoder (:meth:`Pipeline.decode`): bad records come back as values
  (:class:`~processor.errors.BadRecord`), never as exceptions;
* the engine and its state cache, on one dedicated thread (:meth:`Pipeline.step` returns a
  ``concurrent.futures.Future``; TensorFlow releases the GIL while a step runs, so the
  caller's thread decodes and encodes other batches meanwhile);
* the batch encoder (:meth:`Pipeline.encode`);
* the policy for *stale* records -- a ``seq`` not above the stream's last applied one --
  which is the one thing transports do differently (:class:`StalePolicy`): ``skip`` counts
  them (Kafka: an at-least-once re-delivery is normal), ``dead_letter`` returns them as bad
  records with reason ``non_increasing_seq`` (replay: a file must not contain them). Either
  way a stale record below the last applied seq (``out_of_order``: a producer broke the
  per-key order) is told apart from one equal to it (``duplicate``: a re-delivery), and
  each out-of-order record is logged as a rate-limited WARNING naming the stream;
* the stream -> source index (:class:`~processor.engine.sources.SourceIndex`) of a
  transport that owns its inputs by source (Kafka: by partition), with its named operations
  on the engine thread: :meth:`Pipeline.take_changes`, :meth:`Pipeline.mark_changed`,
  :meth:`Pipeline.load_states`, :meth:`Pipeline.forget_streams`,
  :meth:`Pipeline.last_seqs`;
* the garbage-collector policy of the hot path (:meth:`Pipeline.freeze_gc`).

Threading: ``decode``/``encode`` run on the caller's thread; everything that touches the
engine runs on the pipeline's thread, one call at a time in submission order (``step`` and
the named operations above each return a ``concurrent.futures.Future``): an operation
submitted right after the step of batch ``k`` sees exactly the cache after batch ``k``.
"""

from __future__ import annotations

import enum
import gc
import logging
import time
from collections.abc import Callable, Collection, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, ParamSpec, TypeVar

from processor.codec import RecordDecoder, encode_outputs
from processor.codec.reasons import NON_INCREASING_SEQ
from processor.engine.engine import Engine
from processor.engine.sources import Changes, Loaded, SourceIndex, StateEncoder
from processor.errors import BadRecord
from processor.obs.ratelimit import RateLimitedLog
from processor.records import Output, Record
from processor.state.stats import CacheStats

__all__ = [
    "CacheSnapshot",
    "Pipeline",
    "StalePolicy",
    "Stepped",
    "gc_tuned",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class StalePolicy(enum.Enum):
    """What the pipeline does with a record whose seq is not above its stream's last
    applied seq (never applied twice either way)."""

    SKIP = "skip"  #: count it; no output, no dead letter
    DEAD_LETTER = "dead_letter"  #: return it as a bad record (reason ``non_increasing_seq``)


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    """The state cache's numbers after a step (read on the engine thread): streams on the
    device, its capacity, streams off the device (host table and disk store; ``host`` of
    them in the host table) and a copy of the cache's counters."""

    active: int
    capacity: int
    spilled: int
    counters: CacheStats
    host: int = 0


@dataclass(slots=True)
class Stepped:
    """What one :meth:`Pipeline.step` did.

    ``outputs``: one per applied record, per stream in seq order. ``skipped``: stale records
    skipped under :attr:`StalePolicy.SKIP` (in input order); ``dead_letters``: stale records
    with their :class:`BadRecord` under :attr:`StalePolicy.DEAD_LETTER`. ``duplicates`` and
    ``out_of_order`` count the stale records by kind whatever the policy. ``seconds``: time
    spent in the engine; ``cache``: the cache's numbers afterwards.
    """

    outputs: list[Output]
    skipped: list[Record]
    dead_letters: list[tuple[Record, BadRecord]]
    duplicates: int
    out_of_order: int
    seconds: float
    cache: CacheSnapshot


# ---- garbage collector ------------------------------------------------------------------

_GC_YOUNG_THRESHOLD = 50_000  # net allocations between young collections while running
_gc_users = 0  # pipelines that asked for the tuned collector (see gc_tuned)
_saved_threshold: tuple[int, int, int] | None = None


def gc_tuned(enable: bool) -> None:
    """Tune (``enable``) or restore the cyclic garbage collector for the hot path;
    reference-counted per process, so nested users (tests, benchmarks) compose.

    * Collect once, then freeze every object alive now (TensorFlow, Keras, the model, the
      clients: hundreds of thousands of long-lived objects) out of the collector's reach.
      Without this each full collection triggered by the per-record allocations walks all
      of them while holding the GIL: 0.2-0.3 s each, several times a minute at full load
      (measured: 2.3 s of GC in an 8 s benchmark run; ~25% of a replay's time).
    * Raise the young-generation threshold from 700 to 50,000 net allocations. Per record
      the hot path allocates a few containers that reference counting frees once the
      record is answered; with 700, young collections run every ~100 records and keep
      walking records still in the pipeline. Cyclic garbage is still collected.

    The last restore unfreezes, so frozen garbage (of pipelines in tests) is collectable.
    """
    global _gc_users, _saved_threshold
    if enable:
        if _gc_users == 0:
            gc.collect()
            gc.freeze()
            young, older1, older2 = gc.get_threshold()
            _saved_threshold = (young, older1, older2)
            gc.set_threshold(max(young, _GC_YOUNG_THRESHOLD), older1, older2)
        _gc_users += 1
    elif _gc_users > 0:
        _gc_users -= 1
        if _gc_users == 0:
            gc.unfreeze()
            if _saved_threshold is not None:
                gc.set_threshold(*_saved_threshold)
                _saved_threshold = None


# ---- the pipeline -----------------------------------------------------------------------


class Pipeline:
    """See the module docstring. Lifecycle: construct (cheap, no TensorFlow work), then
    ``start()`` -- which builds the engine on the pipeline's thread -- and ``close()``.

    Args:
        build: builds the engine (called once, on the pipeline's thread).
        stale: the stale-record policy.
        max_record_bytes: larger values are bad records (``oversize``).
        warmup: trace the compiled functions for every bucket at start (``"scan"``: the
            catch-up scan too, so that a backlog after a restart never traces mid-traffic).
        owns_engine: :meth:`close` closes the engine's state cache (its disk store); False
            when ``build`` hands over an engine the caller keeps using and closes.
        track_changes: the source index keeps the streams changed since the last
            :meth:`take_changes` (a transport that checkpoints states).
    """

    def __init__(
        self,
        build: Callable[[], Engine],
        *,
        stale: StalePolicy,
        max_record_bytes: int = 4 * 1024 * 1024,
        warmup: bool | Literal["scan"] = "scan",
        owns_engine: bool = True,
        track_changes: bool = False,
    ) -> None:
        self._build = build
        self._sources = SourceIndex(track_changes=track_changes)
        self._owns_engine = owns_engine
        self._stale = stale
        self._max_record_bytes = max_record_bytes
        self._warmup = warmup
        self._executor: ThreadPoolExecutor | None = None
        self._engine: Engine | None = None
        self._decoder: RecordDecoder | None = None
        self._gc_tuned = False
        self._out_of_order_log = RateLimitedLog(log)

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> Future[None]:
        """Start the thread and build (and warm up) the engine on it; the future completes
        when the engine is ready (its exception if building failed). Call once."""
        if self._executor is not None:
            raise RuntimeError("pipeline already started")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lstm-engine")
        return self._executor.submit(self._start)

    def _start(self) -> None:
        engine = self._build()
        if self._warmup:
            engine.warmup(scan=self._warmup == "scan")
        model = engine.model
        self._decoder = RecordDecoder(
            tuple(model.input_shape), model.input_dtype, max_record_bytes=self._max_record_bytes
        )
        self._engine = engine

    def freeze_gc(self) -> None:
        """Apply the hot path's collector policy (:func:`gc_tuned`); call once every
        long-lived object of the transport exists (after start-up). Undone by close."""
        if not self._gc_tuned:
            gc_tuned(True)
            self._gc_tuned = True

    def close(self) -> None:
        """Wait for the running call, close the state cache (its disk store) when the
        pipeline owns the engine, stop the thread, restore the collector; idempotent."""
        executor, self._executor = self._executor, None
        if executor is not None:
            engine = self._engine
            if engine is not None and self._owns_engine:
                executor.submit(engine.cache.close)  # after every call queued before
            executor.shutdown(wait=True)
        if self._gc_tuned:
            self._gc_tuned = False
            gc_tuned(False)

    @property
    def decoder(self) -> RecordDecoder:
        """The validating batch decoder (once started); :meth:`decode` is its
        ``decode_many``. A transport whose stages live in their own modules (Kafka) calls it
        directly, so that a record enters this module only for its step."""
        if self._decoder is None:
            raise RuntimeError("pipeline not started")
        return self._decoder

    @property
    def max_record_bytes(self) -> int:
        """Values larger than this are bad records (``oversize``)."""
        return self._max_record_bytes

    @property
    def engine(self) -> Engine:
        """The engine, once started. From other threads read only its immutable facts
        (model, buckets, max_batch); everything else goes through the named operations on
        the engine thread."""
        if self._engine is None:
            raise RuntimeError("pipeline not started")
        return self._engine

    # ---- the stages -----------------------------------------------------------------------

    def decode(
        self, values: Sequence[bytes], keys: Sequence[bytes | str | None]
    ) -> list[Record | BadRecord]:
        """Decode and validate a batch (caller's thread): element ``i`` is the record of
        ``values[i]`` (stream id from ``keys[i]`` or the value's ``stream`` field) or the
        :class:`BadRecord` saying why it is rejected."""
        return self.decoder.decode_many(values, keys)

    def step(
        self, records: Sequence[Record], sources: Sequence[Hashable] | None = None
    ) -> Future[Stepped]:
        """Apply ``records`` (any streams, arrival order) on the engine thread; calls run in
        submission order. ``sources[i]``: where ``records[i]`` came from, noted in the source
        index right after the step (a transport that owns its inputs by source)."""
        return self._submit(self._step, records, sources)

    def take_changes(self, encode: StateEncoder) -> Future[Changes]:
        """The states of the streams changed since the last call, after every step submitted
        before (see :meth:`processor.engine.sources.SourceIndex.take_changes`)."""
        return self._submit(lambda: self._sources.take_changes(self.engine.cache, encode))

    def mark_changed(self, changes: Changes, owned: Collection[Hashable]) -> Future[None]:
        """A checkpoint of ``changes`` failed: take them again at the next one
        (:meth:`processor.engine.sources.SourceIndex.mark_changed`)."""
        return self._submit(self._sources.mark_changed, changes, owned)

    def load_states(self, source: Hashable, decode: Callable[[], Loaded]) -> Future[Loaded]:
        """Run ``decode`` on the engine thread and load the states it returns as those of
        ``source`` (:meth:`processor.engine.sources.SourceIndex.load`); the future gives
        them back. Decoding there lets the caller's thread fetch the next chunk meanwhile."""

        def load() -> Loaded:
            loaded = decode()
            self._sources.load(self.engine.cache, source, loaded)
            return loaded

        return self._submit(load)

    def forget_streams(self, match: Callable[[Hashable], bool]) -> Future[int]:
        """Forget every stream whose source ``match``es; the future gives their number."""
        return self._submit(lambda: self._sources.forget(self.engine.cache, match))

    def last_seqs(self, streams: Sequence[str]) -> Future[list[int]]:
        """Each stream's last applied seq (-1: not cached), after every step before."""
        return self._submit(lambda: [self.engine.cache.last_seq(s) for s in streams])

    def _submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        if self._executor is None:
            raise RuntimeError("pipeline not started or already closed")
        return self._executor.submit(fn, *args, **kwargs)

    @staticmethod
    def encode(outputs: Sequence[Output]) -> list[bytes]:
        """Encode outputs for the wire (caller's thread), one value per output."""
        return encode_outputs(outputs)

    # ---- engine thread --------------------------------------------------------------------

    def _step(self, records: Sequence[Record], sources: Sequence[Hashable] | None) -> Stepped:
        engine = self.engine
        t0 = time.perf_counter()
        result = engine.process(records)
        seconds = time.perf_counter() - t0
        cache = engine.cache
        if sources is not None:
            self._sources.note(cache, records, sources)
        stepped = Stepped(
            outputs=result.outputs,
            skipped=[],
            dead_letters=[],
            duplicates=len(result.duplicates),
            out_of_order=len(result.out_of_order),
            seconds=seconds,
            cache=CacheSnapshot(
                len(cache),
                cache.capacity,
                cache.spilled_count,
                cache.stats.copy(),
                cache.host_count,
            ),
        )
        if result.duplicates or result.out_of_order:
            self._apply_stale_policy(result.duplicates, result.out_of_order, stepped)
        return stepped

    def _apply_stale_policy(
        self,
        duplicates: list[Record],
        out_of_order: list[tuple[Record, int]],
        stepped: Stepped,
    ) -> None:
        for r, last in out_of_order:
            self._out_of_order_log.warning(
                "out-of-order record: stream %r seq %d arrived after seq %d was applied; "
                "skipped (producers must keep per-key order: enable idempotence or allow "
                "one request in flight)",
                r.stream,
                r.seq,
                last,
            )
        if self._stale is StalePolicy.SKIP:
            stepped.skipped = [*duplicates, *(r for r, _ in out_of_order)]
            return
        for r in duplicates:
            detail = f"seq {r.seq} of stream {r.stream!r} was already applied (a duplicate)"
            stepped.dead_letters.append((r, BadRecord(NON_INCREASING_SEQ, detail)))
        for r, last in out_of_order:
            stepped.dead_letters.append(
                (
                    r,
                    BadRecord(
                        NON_INCREASING_SEQ,
                        f"seq {r.seq} of stream {r.stream!r} is below its last applied seq "
                        f"{last} (out of order)",
                    ),
                )
            )
