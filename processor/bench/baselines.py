"""The methods compared by the benchmark, all behind one interface.

Every method takes a list of :class:`~processor.records.Record` (pre-built by the caller)
and returns one :class:`~processor.records.Output` per record, in record order per stream,
so that every method does the same job, from the same inputs, with the same weights:

* **B0** :class:`StatefulKeras` — the naive way: a Keras ``stateful=True`` model with
  ``batch_size=1`` called once per message. One stateful model holds one state, so
  interleaved streams need a state save/restore per switch (``swap=True``: the layer state
  variables are read back to the host and the next stream's state is assigned); with
  ``swap=False`` streams must arrive one at a time and the state is reset on a switch.
* **B1** :class:`HostStatePerMessage` — the classic answer: one compiled step per message,
  the stream's state fed from and fetched back to a host dict of NumPy arrays.
* **B2** :class:`HostTableBatched` — batched across streams with the same compiled step, but
  the states live in a host NumPy table: gather, copy in, step, copy out, scatter every step.
* **engine** :class:`EngineMethod` — :class:`processor.engine.engine.Engine` with its
  device-resident :class:`processor.state.cache.StateCache`.

B1 and B2 track no ``seq`` and detect no duplicates (the engine does): if anything that
favours them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)
from processor.bench.models import BenchModel
from processor.engine.engine import Engine
from processor.model import StepModel
from processor.records import Output, Record


class Method(Protocol):
    """A way of running the model over records (see the module docstring)."""

    def process(self, records: Sequence[Record]) -> list[Output]: ...


B0_MODES = ("predict", "predict_on_batch", "call")


class StatefulKeras:
    """B0: the stateful batch-1 Keras twin called once per message.

    ``mode``: ``predict`` (``model.predict(x, verbose=0)``), ``predict_on_batch`` or
    ``call`` (``model(x, training=False)``). ``swap``: save/restore the state variables when
    the stream changes (interleaved streams); otherwise reset them (streams one at a time).
    """

    def __init__(self, bm: BenchModel, mode: str = "call", *, swap: bool = True) -> None:
        if mode not in B0_MODES:
            raise ValueError(f"B0 mode must be one of {B0_MODES}, got {mode!r}")
        self.model = bm.new_stateful()
        self.mode = mode
        self.swap = swap
        self._layers = [layer for layer in self.model.layers if isinstance(layer, keras.layers.RNN)]
        self._vars = [v for layer in self._layers for v in layer.states]
        self._saved: dict[str, list[np.ndarray]] = {}
        self._current: str | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every stream (zero the model's state)."""
        for layer in self._layers:
            layer.reset_state()
        self._saved.clear()
        self._current = None

    def _switch_to(self, stream: str) -> None:
        if not self.swap:
            for layer in self._layers:
                layer.reset_state()
        else:
            if self._current is not None:
                self._saved[self._current] = [np.array(v.numpy()) for v in self._vars]
            saved = self._saved.get(stream)
            if saved is None:
                for layer in self._layers:
                    layer.reset_state()
            else:
                for v, value in zip(self._vars, saved, strict=True):
                    v.assign(value)
        self._current = stream

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.mode == "call":
            return np.asarray(self.model(x, training=False))
        if self.mode == "predict_on_batch":
            return np.asarray(self.model.predict_on_batch(x))
        return np.asarray(self.model.predict(x, verbose=0))

    def process(self, records: Sequence[Record]) -> list[Output]:
        out: list[Output] = []
        for r in records:
            if r.stream != self._current:
                self._switch_to(r.stream)
            if r.reset:
                for layer in self._layers:
                    layer.reset_state()
            y = self._run(r.x[None, None])
            out.append(Output(r.stream, r.seq, y[0, 0].astype(np.float32), r.ts))
        return out


def compiled_step(model: StepModel) -> Callable[[Any, list[Any]], tuple[Any, list[Any]]]:
    """The model's step as one tf.function (shared by B1 and B2: the same compiled step)."""

    @tf.function
    def step(x: Any, states: list[Any]) -> tuple[Any, list[Any]]:
        return model.step(x, states)

    return step


class HostStatePerMessage:
    """B1: one compiled step call per message; each stream's state in a host dict."""

    def __init__(self, model: StepModel, step: Callable[..., Any]) -> None:
        self._step = step
        self._zeros = [np.zeros((1, *s.shape), np.float32) for s in model.state_spec]
        self.states: dict[str, list[np.ndarray]] = {}

    def process(self, records: Sequence[Record]) -> list[Output]:
        out: list[Output] = []
        for r in records:
            st = self._zeros if r.reset else self.states.get(r.stream, self._zeros)
            y, new = self._step(tf.constant(r.x[None]), [tf.constant(s) for s in st])
            self.states[r.stream] = [s.numpy() for s in new]
            out.append(Output(r.stream, r.seq, y.numpy()[0], r.ts))
        return out


class HostTableBatched:
    """B2: one compiled step per batch of distinct streams; states in a host NumPy table
    gathered into the call and scattered back from its results every step."""

    def __init__(self, model: StepModel, step: Callable[..., Any], capacity: int) -> None:
        self._step = step
        self.tables = [np.zeros((capacity, *s.shape), np.float32) for s in model.state_spec]
        self._slots: dict[str, int] = {}
        self.capacity = capacity

    def _slot(self, stream: str) -> int:
        slot = self._slots.get(stream)
        if slot is None:
            if len(self._slots) >= self.capacity:
                raise RuntimeError(f"B2 host table full ({self.capacity} streams)")
            slot = self._slots[stream] = len(self._slots)
        return slot

    def process(self, records: Sequence[Record]) -> list[Output]:
        """One step: ``records`` must name distinct streams (one record per stream)."""
        if any(r.reset for r in records):
            raise ValueError("B2 (a benchmark baseline) does not take reset records")
        n = len(records)
        idx = np.fromiter((self._slot(r.stream) for r in records), np.int64, n)
        x = np.stack([r.x for r in records])
        states = [tf.constant(t[idx]) for t in self.tables]
        y, new = self._step(tf.constant(x), states)
        for t, s in zip(self.tables, new, strict=True):
            t[idx] = s.numpy()
        ys = y.numpy()
        return [Output(r.stream, r.seq, ys[k], r.ts) for k, r in enumerate(records)]


class EngineMethod:
    """The engine as a Method (outputs only; duplicates would be a benchmark bug)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def process(self, records: Sequence[Record]) -> list[Output]:
        result = self.engine.process(records)
        if result.duplicates:
            raise RuntimeError(
                f"benchmark fed {len(result.duplicates)} duplicate records to the engine"
            )
        return result.outputs


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


class Feed:
    """Deterministic records over ``streams`` drawn from an input ``pool``.

    The input of stream ``k`` at ``seq`` ``t`` is always ``pool[(t * S + k) % len(pool)]``
    (``S`` = number of streams), whichever way the records are ordered, so every method
    sees exactly the same inputs.
    """

    def __init__(self, streams: Sequence[str], pool: np.ndarray, seq0: int = 0) -> None:
        self.streams = list(streams)
        self.pool = pool
        self.seq0 = seq0

    def x(self, k: int, t: int) -> np.ndarray:
        """Input of stream ``k`` at step ``t``."""
        x: np.ndarray = self.pool[(t * len(self.streams) + k) % len(self.pool)]
        return x

    def step(self, t: int, seq: int | None = None) -> list[Record]:
        """One record per stream for step ``t`` (seq ``seq0 + t`` unless given)."""
        seq = self.seq0 + t if seq is None else seq
        pool, n, p = self.pool, len(self.streams), len(self.pool)
        base = t * n
        return [Record(s, seq, pool[(base + k) % p]) for k, s in enumerate(self.streams)]

    def round_robin(self, i: int) -> list[Record]:
        """Message ``i`` of the interleaved order (stream ``i % S`` at step ``i // S``)."""
        k, t = i % len(self.streams), i // len(self.streams)
        return [Record(self.streams[k], self.seq0 + t, self.x(k, t))]

    def one_at_a_time(self, i: int, steps_per_stream: int) -> list[Record]:
        """Message ``i`` of the stream-major order: ``steps_per_stream`` steps of a stream,
        then the next stream."""
        k, t = (i // steps_per_stream) % len(self.streams), i % steps_per_stream
        rounds = i // (steps_per_stream * len(self.streams))
        t += rounds * steps_per_stream
        return [Record(self.streams[k], self.seq0 + t, self.x(k, t))]

    def backlog(self, rep: int, steps: int, seq0: int | None = None) -> list[Record]:
        """``steps`` pending records for every stream (rep ``rep`` of a catch-up run), in
        arrival order: step-major, streams interleaved; seqs from ``seq0`` if given."""
        out: list[Record] = []
        for k, t in enumerate(range(rep * steps, (rep + 1) * steps)):
            out.extend(self.step(t, None if seq0 is None else seq0 + k))
        return out
