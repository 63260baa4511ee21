"""Engine: executes a batch's plan as compiled gather -> step -> scatter calls.

:meth:`Engine.process` takes any list of decoded records (many per stream allowed, in
arrival order) and returns one output per applied record. What is applied, in which order
and in which calls -- per-stream order, duplicates and out-of-order records, ``reset`` and
``end``, waves vs catch-up scan -- is planned by :mod:`processor.engine.plan`. Per group of
streams the engine acquires their slots from its :class:`~processor.state.cache.StateCache`
(which answers their last applied seqs), has the group planned, runs the plan's waves and
scan chunks, records the streams' new last applied seqs and releases the streams that
ended.

Waves and scan give the same results to float32 rounding (different kernels: tested to
1e-5). Batches are padded to a few bucket sizes (:mod:`processor.engine.buckets`; padded
rows read and write the cache's scratch slot and start from the initial state), so the
compiled functions are traced once per bucket and never again in steady state
(:attr:`Engine.trace_count`).

Threading: an Engine and its cache belong to one thread (the pipeline's engine thread);
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
from processor.engine.buckets import bucket_for, bucket_sizes, scan_step_buckets
from processor.engine.plan import ScanChunk, StepPlan, Wave, group_streams, plan_group
from processor.errors import ConfigError
from processor.model import StepModel
from processor.records import Output, Record
from processor.state.cache import StateCache

__all__ = ["Engine", "EngineStats", "StepResult"]


class _DropRetracingWarnings(logging.Filter):
    """TF warns when a function is traced several times in a row. The engine and the
    state table trace once per bucket or row count by design (counted in ``trace_count``
    and tested), so for their functions the warning is noise that would alarm operators;
    others' still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "triggered tf.function retracing" not in message or not any(
            f"{owner}." in message for owner in ("Engine", "StateCache", "DeviceTable")
        )


tf.get_logger().addFilter(_DropRetracingWarnings())


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

    Skipped records are the caller's objects, unchanged, each stream's in arrival order
    (streams in order of first arrival).
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
            self.scan_buckets = scan_step_buckets(scan_min_steps, max_scan_steps)
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

    # ---- execution --------------------------------------------------------------------------

    def process(self, records: Sequence[Record]) -> StepResult:
        """Apply ``records`` (any number, any streams, arrival order) and return the outputs.

        Every record is either applied exactly once (one Output) or returned, unapplied, in
        ``duplicates`` or ``out_of_order`` (see :class:`StepResult` and
        :mod:`processor.engine.plan` for the rules). Outputs of one stream are in seq
        order. Raises only on engine failure (device error); bad records must have been
        rejected by the codec before.
        """
        self.stats.batch_sizes = []
        outputs: list[Output] = []
        duplicates: list[Record] = []
        out_of_order: list[tuple[Record, int]] = []
        cache = self.cache
        for group in group_streams(records, self.max_batch):
            acquired = cache.acquire(group.streams)
            plan = plan_group(
                group,
                acquired.seqs.tolist(),
                acquired.fresh.tolist(),
                scan_min_steps=self.scan_min_steps,
                max_scan_steps=self.max_scan_steps,
            )
            if plan.duplicates:
                duplicates.extend(plan.duplicates)
            if plan.out_of_order:
                out_of_order.extend(plan.out_of_order)
            if plan.rows:
                self._execute(plan, acquired.slots, len(group.streams), outputs)
        self.stats.duplicates += len(duplicates)
        self.stats.out_of_order += len(out_of_order)
        if cache.idle_timeout_s is not None:
            cache.evict_idle()
        return StepResult(outputs, duplicates, out_of_order)

    def _execute(
        self, plan: StepPlan, group_slots: np.ndarray, n_streams: int, outputs: list[Output]
    ) -> None:
        """Run ``plan`` over the slots its group acquired (``group_slots``, one per stream of
        the group), appending one Output per applied record."""
        cache = self.cache
        if plan.restarted:
            cache.note_ended(plan.restarted)
        slots = group_slots if len(plan.rows) == n_streams else group_slots[plan.rows]
        for wave in plan.waves:
            self._call_step(wave, slots, outputs)
        for chunk in plan.scans:
            self._call_scan(chunk, slots, outputs)
        cache.commit_seqs(slots, plan.last_seqs)
        self.stats.records_applied += plan.applied
        if plan.ended:
            cache.release(plan.ended)

    def _call_step(self, wave: Wave, slots: np.ndarray, outputs: list[Output]) -> None:
        recs = wave.records
        n = len(recs)
        b = bucket_for(self.buckets, n)
        x = np.empty((b, *self._x_shape), self._x_dtype)
        np.stack([r.x for r in recs], out=x[:n])
        x[n:] = 0
        s = np.full(b, self.cache.scratch_slot, np.int32)
        s[:n] = slots[wave.rows]
        f = np.ones(b, bool)  # padded rows restart from the initial state every time
        f[:n] = wave.fresh
        with tf.device(self.cache.device):
            y = self._step_fn(
                tf.constant(x), tf.constant(s), tf.constant(f), tf.constant(any(wave.fresh))
            )
        self.stats.wave_calls += 1
        self.stats.padded_rows += b - n
        self.stats.batch_sizes.append(n)
        outputs.extend(
            map(
                Output,
                [r.stream for r in recs],
                [r.seq for r in recs],
                y.numpy()[:n],
                [r.ts for r in recs],
            )
        )

    def _call_scan(self, chunk: ScanChunk, slots: np.ndarray, outputs: list[Output]) -> None:
        steps = chunk.steps
        n = len(chunk.rows)
        if self.scan_buckets:
            t_pad, b = bucket_for(self.scan_buckets, steps), bucket_for(self.buckets, n)
        else:
            t_pad, b = steps, n
        x = np.zeros((t_pad, b, *self._x_shape), self._x_dtype)
        fresh_mask = np.zeros((t_pad, b), bool)
        valid = np.zeros((t_pad, b), bool)
        for k, (recs, fresh) in enumerate(zip(chunk.records, chunk.fresh, strict=True)):
            for t, r in enumerate(recs):
                x[t, k] = r.x
            fresh_mask[: len(recs), k] = fresh
            valid[: len(recs), k] = True
        s = np.full(b, self.cache.scratch_slot, np.int32)
        s[:n] = slots[chunk.rows]
        with tf.device(self.cache.device):
            y = self._scan_fn(
                tf.constant(x), tf.constant(s), tf.constant(fresh_mask), tf.constant(valid)
            ).numpy()
        self.stats.scan_calls += 1
        self.stats.padded_rows += t_pad * b - int(valid.sum())
        self.stats.batch_sizes.append(n)
        for k, recs in enumerate(chunk.records):
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
