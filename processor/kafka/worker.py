"""The engine's own thread: one worker owns the Engine and its StateCache.

Engine and cache are single-threaded objects, so every call that touches them -- building,
warming up, ``process``, forgetting streams -- runs on one dedicated thread (a
``ThreadPoolExecutor(max_workers=1)``). The event loop awaits those calls and keeps fetching,
decoding and producing meanwhile (TensorFlow releases the GIL while a step runs).

The worker also remembers which partition each stream's records came from, so that the
streams of a partition that moved to another member can be forgotten (``cache.forget``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from processor.engine import Engine
from processor.options import EngineOptions, build_engine
from processor.records import Output, Record

__all__ = ["EngineWorker", "WorkResult"]

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class WorkResult:
    """What one batch did: ``outputs`` (one per applied record), ``duplicates`` (skipped),
    ``seconds`` spent in the engine, and a snapshot of the cache numbers for metrics."""

    outputs: list[Output]
    duplicates: list[Record]
    seconds: float
    cache_active: int
    cache_capacity: int
    cache_spilled: int
    cache_counters: dict[str, int]


class EngineWorker:
    """See the module docstring. Create, then ``await start()``; ``await close()`` at the end.

    Args:
        options: how to build the engine (model path, cache sizes...).
        engine_factory: builds the engine on the worker thread (tests inject a prepared
            model this way); default :func:`processor.options.build_engine`.
        warmup: trace the compiled step for every batch bucket before the first batch.
    """

    def __init__(
        self,
        options: EngineOptions,
        *,
        engine_factory: Callable[[EngineOptions], Engine] | None = None,
        warmup: bool = True,
    ) -> None:
        self._options = options
        self._factory = engine_factory or build_engine
        self._warmup = warmup
        self._executor: ThreadPoolExecutor | None = None
        self._engine: Engine | None = None
        # stream -> partition of its latest record; touched on the worker thread only.
        self._partition_of: dict[str, Hashable] = {}
        self._prune_at = 0

    # ---- lifecycle (event loop) --------------------------------------------------------

    async def start(self) -> None:
        """Start the thread, build the engine on it and warm it up."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lstm-engine")
        self._engine = await self._call(self._build)
        cache = self._engine.cache
        self._prune_at = 2 * (cache.capacity + cache.spill_capacity) + self._engine.max_batch

    async def close(self) -> None:
        """Wait for the running call (if any) and stop the thread; idempotent."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    @property
    def engine(self) -> Engine:
        """The engine (read its immutable facts only from the event loop: model, buckets)."""
        if self._engine is None:
            raise RuntimeError("worker not started")
        return self._engine

    async def _call(self, fn: Callable[..., R], *args: Any) -> R:
        if self._executor is None:
            raise RuntimeError("worker not started or already closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- calls (event loop side) -------------------------------------------------------

    def submit(self, records: Sequence[Record], partitions: Sequence[Hashable]) -> Any:
        """Start processing a batch now; returns an awaitable future of :class:`WorkResult`.
        ``partitions[i]`` is the partition ``records[i]`` came from."""
        if self._executor is None:
            raise RuntimeError("worker not started or already closed")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._process, records, partitions)

    async def forget_partitions(self, partitions: Collection[Hashable]) -> int:
        """Forget the cached state of every stream last seen on ``partitions``; returns how
        many streams were forgotten."""
        return await self._call(self._forget, lambda tp: tp in partitions)

    async def retain_partitions(self, partitions: Collection[Hashable]) -> int:
        """Forget the state of every stream *not* last seen on ``partitions``."""
        return await self._call(self._forget, lambda tp: tp not in partitions)

    # ---- worker thread -----------------------------------------------------------------

    def _build(self) -> Engine:
        engine = self._factory(self._options)
        if self._warmup:
            engine.warmup(scan=True)  # catch-up after a restart must not trace mid-traffic
        return engine

    def _process(self, records: Sequence[Record], partitions: Sequence[Hashable]) -> WorkResult:
        engine = self.engine
        t0 = time.perf_counter()
        result = engine.process(records)
        seconds = time.perf_counter() - t0
        index = self._partition_of
        for r, tp in zip(records, partitions, strict=True):
            index[r.stream] = tp
        if len(index) > self._prune_at:
            self._prune()
        cache = engine.cache
        return WorkResult(
            outputs=result.outputs,
            duplicates=result.duplicates,
            seconds=seconds,
            cache_active=len(cache),
            cache_capacity=cache.capacity,
            cache_spilled=cache.spilled_count,
            cache_counters=asdict(cache.stats),
        )

    def _prune(self) -> None:
        """Drop index entries of streams the cache no longer knows (ended, or spilled and
        dropped), so the index stays bounded by about the cache's capacity + spill store."""
        cache = self.engine.cache
        self._partition_of = {
            s: tp for s, tp in self._partition_of.items() if cache.last_seq(s) != -1
        }

    def _forget(self, match: Callable[[Hashable], bool]) -> int:
        streams = [s for s, tp in self._partition_of.items() if match(tp)]
        self.engine.cache.forget(streams)
        for s in streams:
            del self._partition_of[s]
        return len(streams)
