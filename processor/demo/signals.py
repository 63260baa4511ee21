"""Seeded synthetic signals of the example models: sensors (:class:`SignalBank`) and cameras
(:class:`FrameClips`).

Each generator holds many independent streams and continues each stream's own time: a
stream that is not asked for is paused, not skipped ahead. Training, validation and the
demo's live feeds draw from the same seed with different salts (:data:`TRAIN_SALT`,
:data:`VALIDATION_SALT`, :data:`FEED_SALT`), so a demo never scores streams the model was
trained on. NumPy only: nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "FEED_SALT",
    "FRAME_SHAPE",
    "FRAME_SIZE",
    "TRAIN_SALT",
    "VALIDATION_SALT",
    "FrameClips",
    "SignalBank",
]

TRAIN_SALT = 0
VALIDATION_SALT = 1
FEED_SALT = 2

FRAME_SIZE = 84
FRAME_SHAPE = (FRAME_SIZE, FRAME_SIZE, 1)


class SignalBank:
    """``n_streams`` synthetic sensors with ``channels`` channels each, reproducible by seed.

    Stream ``s``, channel ``c`` at its own step ``t`` is::

        offset[s, c] + sum_k amp[s, c, k] * sin(2 pi t / period[s, k] + phase[s, c, k])
                     + noise * N(0, 1)

    with ``components`` sines whose periods (in samples, uniform in
    ``[min_period, max_period]``) are shared by the channels of a stream (one machine, one
    set of rotation frequencies) while amplitudes (uniform in [0.2, 1.0]), phases and offsets
    (uniform in [-0.5, 0.5]) are per channel. Each stream starts at a random point of its
    cycle. The noise variance ``noise**2`` is the floor of any forecaster's mean squared error.

    Not thread-safe. Given the same seed, salt and sequence of calls the output is identical.
    """

    def __init__(
        self,
        n_streams: int,
        channels: int = 4,
        seed: int = 0,
        *,
        salt: int = TRAIN_SALT,
        components: int = 2,
        noise: float = 0.05,
        min_period: float = 8.0,
        max_period: float = 40.0,
    ) -> None:
        if n_streams < 1 or channels < 1 or components < 1:
            raise ValueError(
                f"need n_streams, channels, components >= 1, got {n_streams}, {channels}, "
                f"{components}"
            )
        if not 2.0 < min_period <= max_period:
            raise ValueError(
                f"need 2 < min_period <= max_period, got {min_period}, {max_period} "
                "(a period of 2 samples or less cannot be seen)"
            )
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.n_streams = n_streams
        self.channels = channels
        self.noise = float(noise)
        self._rng = np.random.default_rng([seed, salt])
        rng = self._rng
        period = rng.uniform(min_period, max_period, (n_streams, components))
        self._omega = 2.0 * np.pi / period  # [S, K], radians per sample
        self._amp = rng.uniform(0.2, 1.0, (n_streams, channels, components))
        self._phase = rng.uniform(0.0, 2.0 * np.pi, (n_streams, channels, components))
        self._offset = rng.uniform(-0.5, 0.5, (n_streams, channels))
        # int64 step counters; the sine argument is computed in float64 from them, so a
        # long-running stream does not lose precision.
        self._t = rng.integers(0, 10_000, n_streams).astype(np.int64)
        self._start = self._t.copy()

    @property
    def steps(self) -> np.ndarray:
        """Samples produced so far per stream (a copy)."""
        return self._t - self._start

    def _values(self, idx: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Noisy samples of streams ``idx`` at steps ``t`` (``t``: ``[n]`` or ``[n, T]``)."""
        tt = t.astype(np.float64)[..., None, None]  # [n(, T), 1, 1]
        omega = self._omega[idx]
        amp = self._amp[idx]
        phase = self._phase[idx]
        offset = self._offset[idx]
        if t.ndim == 2:
            omega, amp, phase, offset = (
                omega[:, None],
                amp[:, None],
                phase[:, None],
                offset[:, None],
            )
        clean = (amp * np.sin(omega[..., None, :] * tt + phase)).sum(-1) + offset
        noise = self._rng.standard_normal(clean.shape) * self.noise
        return (clean + noise).astype(np.float32)

    def next(self, streams: Sequence[int] | np.ndarray) -> np.ndarray:
        """The next sample ``[len(streams), channels]`` float32 of each given stream, and
        advance those streams by one step. ``streams`` must be distinct indices."""
        idx = np.asarray(streams, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_streams):
            raise IndexError(f"stream index out of range [0, {self.n_streams})")
        values = self._values(idx, self._t[idx])
        self._t[idx] += 1
        return values

    def sequences(self, steps: int) -> np.ndarray:
        """The next ``steps`` samples of every stream, ``[n_streams, steps, channels]``
        float32, advancing every stream by ``steps`` (for training and evaluation)."""
        idx = np.arange(self.n_streams)
        t = self._t[:, None] + np.arange(steps)[None, :]
        values = self._values(idx, t)
        self._t += steps
        return values


class FrameClips:
    """``n_streams`` synthetic clips of 84x84x1 uint8 frames, reproducible by seed and salt.

    Each clip has one object (a filled square or disc, 6 to 10 pixels in radius, brightness
    150 to 255) at its own random position, moving with its own constant speed: each
    velocity component is uniform in ``[min_speed, max_speed]`` pixels per frame with a
    random sign, and flips when the object bounces off an edge. The background is uniform
    noise in ``[0, noise]``. With probability ``occlusion_p`` per frame an occlusion starts:
    a grey bar (vertical or horizontal, ``bar_width`` pixels wide, placed over the object)
    hides it for 2 to 4 frames, while the object keeps moving.

    The target of a frame is the velocity the object moves with at that frame (after any
    bounce that brought it there), float32 ``(vx, vy)`` in pixels per frame (x: columns,
    y: rows).

    Not thread-safe. Given the same seed, salt and sequence of calls the output is identical.
    """

    def __init__(
        self,
        n_streams: int,
        seed: int = 0,
        *,
        salt: int = TRAIN_SALT,
        min_speed: float = 1.0,
        max_speed: float = 4.0,
        noise: int = 40,
        occlusion_p: float = 0.05,
        bar_width: int = 24,
    ) -> None:
        if n_streams < 1:
            raise ValueError(f"need n_streams >= 1, got {n_streams}")
        if not 0.0 <= min_speed <= max_speed <= 8.0:
            raise ValueError(f"need 0 <= min_speed <= max_speed <= 8, got {min_speed}, {max_speed}")
        if not 0 <= noise <= 120:
            raise ValueError(f"noise must be in [0, 120] (below the object), got {noise}")
        if not 0.0 <= occlusion_p <= 1.0 or not 1 <= bar_width <= FRAME_SIZE:
            raise ValueError(
                f"need occlusion_p in [0, 1] and bar_width in [1, {FRAME_SIZE}], got "
                f"{occlusion_p}, {bar_width}"
            )
        self.n_streams = n_streams
        self.noise = int(noise)
        self.occlusion_p = float(occlusion_p)
        self.bar_width = int(bar_width)
        self._rng = np.random.default_rng([seed, salt, 84])
        rng = self._rng
        self._radius = rng.uniform(6.0, 10.0, n_streams)
        self._disc = rng.random(n_streams) < 0.5
        self._level = rng.integers(150, 256, n_streams)
        lo, hi = self._radius, FRAME_SIZE - 1 - self._radius
        self._pos = rng.uniform(lo[:, None], hi[:, None], (n_streams, 2))  # (x, y)
        speed = rng.uniform(min_speed, max_speed, (n_streams, 2))
        self._vel = speed * rng.choice([-1.0, 1.0], (n_streams, 2))
        self._occluded = np.zeros(n_streams, np.int64)  # frames of occlusion left
        self._bar_vertical = np.zeros(n_streams, bool)
        self._bar_at = np.zeros(n_streams)  # the bar's centre column (vertical) or row
        self._t = np.zeros(n_streams, np.int64)
        grid = np.arange(FRAME_SIZE, dtype=np.float64)
        self._cols = grid[None, None, :]
        self._rows = grid[None, :, None]

    @property
    def steps(self) -> np.ndarray:
        """Frames produced so far per stream (a copy)."""
        return self._t.copy()

    def next(self, streams: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The next frame ``[n, 84, 84, 1]`` uint8 and its velocity ``[n, 2]`` float32 of
        each given stream, and advance those streams by one frame (a stream not asked for
        is paused). ``streams`` must be distinct indices in ``[0, n_streams)``."""
        idx = np.asarray(streams, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_streams):
            raise IndexError(f"stream index out of range [0, {self.n_streams})")
        if len(np.unique(idx)) != len(idx):
            raise ValueError("stream indices must be distinct")
        rng = self._rng
        n = len(idx)
        # Occlusions start over the object, then stay put while it moves on.
        start = (self._occluded[idx] == 0) & (rng.random(n) < self.occlusion_p)
        s = idx[start]
        self._occluded[s] = rng.integers(2, 5, len(s))
        self._bar_vertical[s] = rng.random(len(s)) < 0.5
        self._bar_at[s] = np.where(self._bar_vertical[s], self._pos[s, 0], self._pos[s, 1])

        frames = rng.integers(0, self.noise + 1, (n, FRAME_SIZE, FRAME_SIZE), dtype=np.uint8)
        dx = self._cols - self._pos[idx, 0, None, None]
        dy = self._rows - self._pos[idx, 1, None, None]
        r = self._radius[idx, None, None]
        disc = (dx * dx + dy * dy) <= r * r
        square = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        inside = np.where(self._disc[idx, None, None], disc, square)
        frames[inside] = np.broadcast_to(self._level[idx, None, None], inside.shape)[inside]
        hidden = self._occluded[idx] > 0
        if hidden.any():
            half = self.bar_width / 2.0
            at = self._bar_at[idx, None, None]
            bar = (
                np.where(
                    self._bar_vertical[idx, None, None],
                    np.abs(self._cols - at) <= half,
                    np.abs(self._rows - at) <= half,
                )
                & hidden[:, None, None]
            )
            frames[bar] = 100
        targets = self._vel[idx].astype(np.float32)

        self._occluded[idx] = np.maximum(self._occluded[idx] - 1, 0)
        self._advance(idx)
        self._t[idx] += 1
        return frames[..., None], targets

    def _advance(self, idx: np.ndarray) -> None:
        """Move streams ``idx`` by their velocity, reflecting off the edges (the velocity
        component flips at a bounce)."""
        lo = self._radius[idx, None]
        hi = FRAME_SIZE - 1 - lo
        pos = self._pos[idx] + self._vel[idx]
        vel = self._vel[idx].copy()
        below, above = pos < lo, pos > hi
        pos = np.where(below, 2 * lo - pos, pos)
        pos = np.where(above, 2 * hi - pos, pos)
        vel = np.where(below | above, -vel, vel)
        self._pos[idx] = np.clip(pos, lo, hi)
        self._vel[idx] = vel

    def clips(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``steps`` frames and velocities of every stream: ``[n_streams, steps,
        84, 84, 1]`` uint8 and ``[n_streams, steps, 2]`` float32 (for training and
        evaluation)."""
        idx = np.arange(self.n_streams)
        frames = np.empty((self.n_streams, steps, *FRAME_SHAPE), np.uint8)
        targets = np.empty((self.n_streams, steps, 2), np.float32)
        for t in range(steps):
            frames[:, t], targets[:, t] = self.next(idx)
        return frames, targets
