"""Engine: compiled gather -> step -> scatter over a batch of streams.

:meth:`Engine.process` takes any list of decoded records (many per stream allowed, in
arrival order) and returns one output per applied record. Per stream, records are applied
strictly in order and at most one per step:

* a record whose ``seq`` equals the stream's last applied ``seq`` is a re-delivery of the
  record already applied: it is skipped and returned in ``duplicates``;
* a record whose ``seq`` is below the stream's last applied ``seq`` is skipped too and
  returned in ``out_of_order`` with the last applied seq it was compared against. Such a
  record arrived out of order (a producer without idempotence can store a retried batch
  after a later one; its input never reaches the model) -- or it is one of several records
  of a stream re-delivered at once, of which only the last one has the equal seq. The
  engine sees seqs only and cannot tell these apart; a caller that knows more (a Kafka
  consumer knows which offsets it already processed) can;
* after a stream's ``end`` record the stream is forgotten and its next record starts a new
  life, with any ``seq``;
* streams with fewer than ``scan_min_steps`` pending records go through *waves*: wave ``t``
  is one compiled step over the ``t``-th pending record of every such stream;
* streams with more pending records (catching up) go through one multi-step *scan*: a
  compiled loop over ``[T, B]`` records with masks, one call for ``T`` steps.

Both paths give the same results to float32 rounding (different kernels: tested to 1e-5).
Batches are padded to a few bucket sizes (padded rows read and write the cache's scratch
slot and start from the initial state), so the compiled functions are traced once per
bucket and never again in steady state (:attr:`Engine.trace_count`).

Threading: an Engine and its cache belong to one thread (the runtime's worker thread);
TensorFlow releases the GIL while the step runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)
from processor.errors import ConfigError
from processor.model.protocol import StepModel
from processor.records import Output, Record
from processor.state.cache import StateCache, pow2

log = logging.getLogger(__name__)


class _DropRetracingWarnings(logging.Filter):
    """TF warns when a function is traced several times in a row. The engine and cache
    trace once per bucket by design (counted in ``trace_count`` and tested), so for their
    functions the warning is noise that would alarm operators; others' still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "triggered tf.function retracing" not in message or not any(
            f"{owner}." in message for owner in ("Engine", "StateCache")
        )


tf.get_logger().addFilter(_DropRetracingWarnings())


def bucket_sizes(max_batch: int, smallest: int = 1) -> tuple[int, ...]:
    """Padded batch sizes: powers of two from ``smallest``, plus 1.5x steps from 192 on
    (192, 384, 768, ...), up to and including ``max_batch``.

    Padding rows cost a full row of compute, so the large buckets are spaced more finely
    (a batch pays at most a third more than its size there, not double) for a few more
    traces.
    """
    if max_batch < 1:
        raise ConfigError(f"max batch must be >= 1, got {max_batch}")
    sizes = {max_batch}
    b = 1
    while b < max_batch:
        if b >= smallest:
            sizes.add(b)
        if b >= 128 and b + b // 2 < max_batch:
            sizes.add(b + b // 2)
        b *= 2
    return tuple(sorted(sizes))


@dataclass
class EngineStats:
    """Monotonic counters, read by metrics and benchmarks. ``duplicates`` and
    ``out_of_order`` count the records returned in the fields of the same name of
    :class:`StepResult`."""

    records_applied: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    wave_calls: int = 0
    scan_calls: int = 0
    padded_rows: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # last call's real sizes, for metrics


@dataclass(frozen=True, slots=True)
class StepResult:
    """What :meth:`Engine.process` did, per input record exactly one of:

    * ``outputs``: one Output per applied record (per stream in seq order);
    * ``duplicates``: records skipped because their ``seq`` equals the stream's last
      applied seq (a re-delivery of an applied record);
    * ``out_of_order``: ``(record, last_applied_seq)`` for records skipped because their
      ``seq`` is below the stream's last applied seq at that moment.

    Skipped records are the caller's objects, unchanged, in arrival order per list.
    """

    outputs: list[Output]
    duplicates: list[Record]
    out_of_order: list[tuple[Record, int]] = field(default_factory=list)


class Engine:
    """See the module docstring.

    Args:
        model: the StepModel.
        cache: the StateCache (its device is the engine's device).
        max_batch: the most streams in one compiled step (also the largest bucket); must not
            exceed the cache capacity.
        scan_min_steps: a stream with at least this many pending records is caught up with
            the multi-step scan; ``0`` disables the scan.
        max_scan_steps: the most steps in one scan call (longer backlogs take several).
        jit_compile: compile the step with XLA.
    """

    def __init__(
        self,
        model: StepModel,
        cache: StateCache,
        *,
        max_batch: int = 1024,
        scan_min_steps: int = 4,
        max_scan_steps: int = 64,
        jit_compile: bool = False,
    ) -> None:
        if max_batch > cache.capacity:
            raise ConfigError(
                f"max batch {max_batch} exceeds the cache capacity {cache.capacity}: a step "
                "needs a slot for every stream in it"
            )
        if scan_min_steps < 0 or (scan_min_steps and scan_min_steps < 2):
            raise ConfigError(f"scan_min_steps must be 0 (off) or >= 2, got {scan_min_steps}")
        if max_scan_steps < 2:
            raise ConfigError(f"max_scan_steps must be >= 2, got {max_scan_steps}")
        self.model = model
        self.cache = cache
        self.max_batch = max_batch
        self.buckets = bucket_sizes(max_batch)
        # The scan (catch-up only) takes any [T, B] in one trace: TensorFlow's graph kernels
        # are shape-polymorphic, so neither T nor B is padded. XLA compiles per shape, so
        # with XLA both are padded to buckets instead: T to powers of two from the first
        # >= scan_min_steps up to the first >= max_scan_steps.
        self.scan_buckets: tuple[int, ...] = ()
        if scan_min_steps and jit_compile:
            t = pow2(scan_min_steps)
            self.scan_buckets = (t,)
            while self.scan_buckets[-1] < max_scan_steps:
                self.scan_buckets += (self.scan_buckets[-1] * 2,)
        self.scan_min_steps = scan_min_steps
        self.max_scan_steps = max_scan_steps
        self.stats = EngineStats()
        self.trace_count = 0
        self._x_shape = tuple(model.input_shape)
        self._x_dtype = np.dtype(model.input_dtype)
        self._y_shape = tuple(model.output_shape)
        self._state_ranks = [len(s.shape) for s in model.state_spec]
        self._step_fn = tf.function(self._step_impl, jit_compile=jit_compile)
        if jit_compile:
            self._scan_fn = tf.function(self._scan_impl, jit_compile=True)
        else:
            any_tb = tf.TensorSpec([None, None], tf.bool)
            self._scan_fn = tf.function(
                self._scan_impl,
                input_signature=[
                    tf.TensorSpec([None, None, *self._x_shape], tf.as_dtype(self._x_dtype)),
                    tf.TensorSpec([None], tf.int32),
                    any_tb,
                    any_tb,
                ],
            )

    # ---- compiled functions -----------------------------------------------------------------

    def _fresh_states(self, x: Any, states: list[Any], fresh: Any, run_init: Any) -> list[Any]:
        """Replace the states of rows with ``fresh`` set by the model's initial states.

        The init model (if any) runs only when ``run_init`` (a scalar) is true: the caller
        says whether a real row is fresh, since padded rows are always marked fresh (they
        then get zeros, which is all they need)."""
        if self.model.has_init_model:
            init = tf.cond(
                run_init,
                lambda: self.model.initial_state(x),
                lambda: [tf.zeros_like(s) for s in states],
            )
        else:
            init = [tf.zeros_like(s) for s in states]
        out = []
        for s, i, rank in zip(states, init, self._state_ranks, strict=True):
            mask = tf.reshape(fresh, [-1] + [1] * rank)
            out.append(tf.where(mask, i, s))
        return out

    def _step_impl(self, x: Any, slots: Any, fresh: Any, run_init: Any) -> Any:
        self.trace_count += 1  # runs only while tracing: counts traces
        states = self._fresh_states(x, self.cache.gather(slots), fresh, run_init)
        y, new = self.model.step(x, states)
        self.cache.scatter(slots, new)
        return y

    def _scan_impl(self, x: Any, slots: Any, fresh: Any, valid: Any) -> Any:
        """``x`` ``[T, B, ...]``; ``fresh``/``valid`` ``[T, B]``; a row with ``valid`` False
        at step t keeps its state unchanged (its output is garbage and discarded)."""
        self.trace_count += 1
        states = self.cache.gather(slots)
        steps = tf.shape(x)[0]
        ys = tf.TensorArray(tf.float32, size=steps, element_shape=[None, *self._y_shape])

        def body(t: Any, states: list[Any], ys: Any) -> tuple[Any, list[Any], Any]:
            xt = x[t]
            start = self._fresh_states(xt, states, fresh[t], tf.reduce_any(fresh[t]))
            y, new = self.model.step(xt, start)
            keep = []
            for old, s, rank in zip(states, new, self._state_ranks, strict=True):
                mask = tf.reshape(valid[t], [-1] + [1] * rank)
                keep.append(tf.where(mask, s, old))
            return t + 1, keep, ys.write(t, y)

        _, states, ys = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), states, ys))
        self.cache.scatter(slots, states)
        return ys.stack()

    # ---- planning ---------------------------------------------------------------------------

    def _bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise AssertionError(f"batch of {n} exceeds max_batch {self.max_batch}")

    def process(self, records: Sequence[Record]) -> StepResult:
        """Apply ``records`` (any number, any streams, arrival order) and return the outputs.

        Every record is either applied exactly once (one Output) or returned, unapplied, in
        ``duplicates`` or ``out_of_order`` (see :class:`StepResult`). Outputs of one stream
        are in seq order. Raises only on engine failure (device error);
        bad records must have been rejected by the codec before.
        """
        self.stats.batch_sizes = []
        by_stream: dict[str, list[Record]] = {}
        for r in records:
            lst = by_stream.get(r.stream)
            if lst is None:
                by_stream[r.stream] = [r]
            else:
                lst.append(r)
        outputs: list[Output] = []
        duplicates: list[Record] = []
        out_of_order: list[tuple[Record, int]] = []
        # Groups of at most max_batch streams, so that every stream of a group has a slot
        # for the whole group (the cache cannot evict a stream the group still needs).
        items = list(by_stream.items())
        for start in range(0, len(items), self.max_batch):
            self._process_group(
                items[start : start + self.max_batch], outputs, duplicates, out_of_order
            )
        self.stats.duplicates += len(duplicates)
        self.stats.out_of_order += len(out_of_order)
        if self.cache.idle_timeout_s is not None:
            self.cache.evict_idle()
        return StepResult(outputs, duplicates, out_of_order)

    def _process_group(
        self,
        items: list[tuple[str, list[Record]]],
        outputs: list[Output],
        duplicates: list[Record],
        out_of_order: list[tuple[Record, int]],
    ) -> None:
        # Hot path (every record passes here): kept to a few list operations per record.
        # Telling a duplicate from an out-of-order record costs one more comparison, and
        # only for records that are skipped anyway.
        cache = self.cache
        acquired = cache.acquire([stream for stream, _ in items])
        streams: list[str] = []
        records: list[list[Record]] = []
        fresh: list[list[bool]] = []
        slot_rows: list[int] = []
        for row, ((stream, recs), last, new) in enumerate(
            zip(items, acquired.seqs.tolist(), acquired.fresh.tolist(), strict=True)
        ):
            if len(recs) == 1:  # the steady-state case: one record per stream
                r = recs[0]
                if r.seq <= last:
                    if r.seq == last:
                        duplicates.append(r)
                    else:
                        out_of_order.append((r, last))
                    continue
                kept = recs
                flags = [new or r.reset]
            else:
                kept = []
                flags = []
                after_end = False
                for r in recs:
                    if after_end:
                        last = -1  # `end` forgot the stream: a new life starts with any seq
                    if r.seq <= last:
                        if r.seq == last:
                            duplicates.append(r)
                        else:
                            out_of_order.append((r, last))
                        continue
                    flags.append(r.reset or after_end or (new and not kept))
                    kept.append(r)
                    after_end = r.end
                    last = r.seq
                if not kept:
                    continue
                # An `end` followed by a new life of the same id in this call frees nothing
                # (the slot carries on), but the stream did end.
                restarted = sum(r.end for r in kept[:-1])
                if restarted:
                    cache.note_ended(restarted)
            streams.append(stream)
            records.append(kept)
            fresh.append(flags)
            slot_rows.append(row)
        if not streams:
            return
        slots = acquired.slots if len(slot_rows) == len(items) else acquired.slots[slot_rows]
        scan_min = self.scan_min_steps
        if scan_min and max(map(len, records)) >= scan_min:
            scan_rows = [i for i, recs in enumerate(records) if len(recs) >= scan_min]
            wave_rows = [i for i, recs in enumerate(records) if len(recs) < scan_min]
        else:
            scan_rows, wave_rows = [], list(range(len(records)))
        if wave_rows:
            self._run_waves(records, fresh, slots, wave_rows, outputs)
        if scan_rows:
            self._run_scan(records, fresh, slots, scan_rows, outputs)
        cache.commit_seqs(slots, [recs[-1].seq for recs in records])
        self.stats.records_applied += sum(map(len, records))
        ended = [stream for stream, recs in zip(streams, records, strict=True) if recs[-1].end]
        if ended:
            cache.release(ended)

    def _run_waves(
        self,
        records: list[list[Record]],
        fresh: list[list[bool]],
        slots: np.ndarray,
        rows: list[int],
        outputs: list[Output],
    ) -> None:
        depth = max(len(records[i]) for i in rows)
        active = rows
        for t in range(depth):
            if t:
                active = [i for i in active if len(records[i]) > t]
            recs = [records[i][t] for i in active]
            y = self._call_step(recs, slots[active], [fresh[i][t] for i in active])
            outputs.extend(
                map(
                    Output, [r.stream for r in recs], [r.seq for r in recs], y, [r.ts for r in recs]
                )
            )

    def _call_step(self, recs: list[Record], slots: np.ndarray, fresh: list[bool]) -> np.ndarray:
        n = len(recs)
        b = self._bucket(n)
        x = np.empty((b, *self._x_shape), self._x_dtype)
        np.stack([r.x for r in recs], out=x[:n])
        x[n:] = 0
        s = np.full(b, self.cache.scratch_slot, np.int32)
        s[:n] = slots
        f = np.ones(b, bool)  # padded rows restart from the initial state every time
        f[:n] = fresh
        with tf.device(self.cache.device):
            y = self._step_fn(
                tf.constant(x), tf.constant(s), tf.constant(f), tf.constant(any(fresh))
            )
        self.stats.wave_calls += 1
        self.stats.padded_rows += b - n
        self.stats.batch_sizes.append(n)
        return y.numpy()[:n]

    def _run_scan(
        self,
        records: list[list[Record]],
        fresh: list[list[bool]],
        slots: np.ndarray,
        rows: list[int],
        outputs: list[Output],
    ) -> None:
        # A backlog longer than max_scan_steps takes several calls, each starting where the
        # previous one left the states.
        depth = max(len(records[i]) for i in rows)
        for t0 in range(0, depth, self.max_scan_steps):
            active = [i for i in rows if len(records[i]) > t0]
            steps = min(self.max_scan_steps, depth - t0)
            n = len(active)
            if self.scan_buckets:
                t_pad, b = next(t for t in self.scan_buckets if t >= steps), self._bucket(n)
            else:
                t_pad, b = steps, n
            chunks = [records[i][t0 : t0 + steps] for i in active]
            x = np.zeros((t_pad, b, *self._x_shape), self._x_dtype)
            fresh_mask = np.zeros((t_pad, b), bool)
            valid = np.zeros((t_pad, b), bool)
            for k, (i, recs) in enumerate(zip(active, chunks, strict=True)):
                for t, r in enumerate(recs):
                    x[t, k] = r.x
                fresh_mask[: len(recs), k] = fresh[i][t0 : t0 + steps]
                valid[: len(recs), k] = True
            s = np.full(b, self.cache.scratch_slot, np.int32)
            s[:n] = slots[active]
            with tf.device(self.cache.device):
                y = self._scan_fn(
                    tf.constant(x), tf.constant(s), tf.constant(fresh_mask), tf.constant(valid)
                ).numpy()
            self.stats.scan_calls += 1
            self.stats.padded_rows += t_pad * b - int(valid.sum())
            self.stats.batch_sizes.append(n)
            for k, recs in enumerate(chunks):
                for t, r in enumerate(recs):
                    outputs.append(Output(r.stream, r.seq, y[t, k], r.ts))

    # ---- warm-up ----------------------------------------------------------------------------

    def warmup(self, scan: bool = False) -> None:
        """Trace every wave bucket (and, with ``scan``, the scan buckets) up front, so the
        first real batches do not pay for tracing. Touches only the scratch slot."""
        self.cache.warmup()
        self._warmup_buckets(scan)

    def _warmup_buckets(self, scan: bool) -> None:
        with tf.device(self.cache.device):
            for b in self.buckets:
                x = tf.zeros((b, *self._x_shape), self._x_dtype)
                s = tf.fill([b], self.cache.scratch_slot)
                self._step_fn(x, s, tf.ones([b], tf.bool), tf.constant(True))
            if not (scan and self.scan_min_steps):
                return
            # One trace serves every shape without XLA; with XLA, each bucket pair.
            for t in self.scan_buckets or (2,):
                for b in self.buckets if self.scan_buckets else (1,):
                    x = tf.zeros((t, b, *self._x_shape), self._x_dtype)
                    s = tf.fill([b], self.cache.scratch_slot)
                    self._scan_fn(x, s, tf.ones([t, b], tf.bool), tf.zeros([t, b], tf.bool))
