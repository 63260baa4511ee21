"""Deterministic synthetic input steps: noisy sines for sensor models, a moving bar over low
noise for frame models. Library code shared by ``produce``
(:mod:`processor.kafka.tools.produce`), the benchmarks and the tests."""

from __future__ import annotations

import math

import numpy as np

from processor.errors import ConfigError

__all__ = ["SyntheticInput"]


class SyntheticInput:
    """Deterministic synthetic steps: ``SyntheticInput(kind, shape, streams, seed)`` then
    ``step(seq) -> array [streams, *shape]`` for one step of every stream."""

    def __init__(self, kind: str, shape: tuple[int, ...], streams: int, seed: int = 0) -> None:
        if kind not in ("sensor", "frames"):
            raise ConfigError(f"kind must be 'sensor' or 'frames', got {kind!r}")
        self.kind = kind
        self.shape = shape
        self.streams = streams
        rng = np.random.default_rng(seed)
        self._rng = rng
        size = math.prod(shape)
        self._phase = rng.uniform(0, 2 * np.pi, (streams, size)).astype(np.float32)
        self._freq = rng.uniform(0.05, 0.3, (streams, 1)).astype(np.float32)

    def step(self, seq: int) -> np.ndarray:
        """Step ``seq`` of every stream, ``[streams, *shape]``: for "sensor" float32 sines
        (per stream frequency and phases) plus noise; for "frames" uint8 low noise with a
        bright column (an element, for 1-D shapes) that moves one place per step, offset
        per stream. The signal depends on ``seq`` alone; the noise continues the
        generator's draws, so equal seeds and equal sequences of calls give equal steps."""
        n = self.streams
        if self.kind == "sensor":
            x = np.sin(self._phase + self._freq * seq)
            x += 0.05 * self._rng.standard_normal(x.shape, dtype=np.float32)
            return x.astype(np.float32).reshape(n, *self.shape)
        # frames: a bar that moves one column per step over low noise, per stream offset
        frames = self._rng.integers(0, 32, (n, *self.shape), dtype=np.uint8)
        width = self.shape[1] if len(self.shape) > 1 else self.shape[0]
        cols = (np.arange(n) * 7 + seq) % width
        for i, c in enumerate(cols):
            if len(self.shape) > 1:
                frames[i, :, c] = 255
            else:
                frames[i, c] = 255
        return frames
