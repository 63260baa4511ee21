"""The settings of one ``lstm-stream demo`` run: :class:`DemoConfig`, its kinds
(:class:`DemoKind`) and the defaults that depend on them.

Pure data: nothing here imports TensorFlow or runs anything. :mod:`processor.demo.command`
turns the flags into a :class:`DemoConfig`; :func:`processor.demo.run.run_demo` runs one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from processor.config.engine_options import EngineOptions
from processor.errors import ConfigError

__all__ = [
    "DEMO_ENGINE",
    "IDLE_TIMEOUT_S",
    "KINDS",
    "KIND_DEFAULTS",
    "DemoConfig",
    "DemoKind",
    "auto_cache_capacity",
]


class DemoKind(enum.StrEnum):
    """What the synthetic streams send: sensor vectors whose next sample the model forecasts,
    or camera frames whose object's velocity it gives. The values are the ``--kind``
    spellings (and the summary's ``kind``)."""

    SENSOR = "sensor"
    FRAMES = "frames"


KINDS = tuple(k.value for k in DemoKind)
# Settings whose default depends on --kind (a frame is ~7 KB and ~0.4 MFLOP: fewer streams,
# and a smaller sample, whose whole clips are kept in memory for the evaluation).
KIND_DEFAULTS: dict[DemoKind, dict[str, Any]] = {
    DemoKind.SENSOR: {"streams": 4000, "sample_streams": 200},
    DemoKind.FRAMES: {"streams": 2000, "sample_streams": 32, "start_spread_s": 5.0},
}

IDLE_TIMEOUT_S = 1.0


def auto_cache_capacity(streams: int, max_batch: int) -> int:
    """The demo's default cache size: 9/16 of the streams (at least ``max_batch``).

    About half the streams are active at a time and those that just fell quiet stay cached
    for the idle timeout, ~0.58 of the streams together with the traffic defaults; a cache
    a little smaller than that shows both LRU and idle eviction, with spill and restore.
    """
    return max(max_batch, streams * 9 // 16)


DEMO_ENGINE = EngineOptions(
    cache_capacity=auto_cache_capacity(4000, 1024), idle_timeout=IDLE_TIMEOUT_S
)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (the ``demo`` flags).

    ``engine``: model path and engine/cache options (the shared engine flags).
    ``streams``: synthetic sensors or cameras. ``duration``: seconds of live traffic
    (warm-up and the final evaluation are not counted). ``rate``: messages per second, 0 =
    as fast as possible. ``progress``: live progress lines. ``sample_streams``: streams
    replayed for the reset/offline comparison. ``redeliver``: fraction of messages sent a
    second time. ``mean_active_s`` and ``quiet_s``: a stream stays active for an
    exponential time of this mean, then is quiet for a uniform time in ``quiet_s``.
    ``seed``: feeds and, without a model, training. ``kind``: a :class:`DemoKind` value
    (:data:`KIND_DEFAULTS` holds the settings the flags default differently by kind).
    ``clip_frames``: for frames, each clip's length is uniform in this range.
    ``start_spread_s``: streams start at a uniform time in ``[0, start_spread_s)`` (0 = near
    the steady state from the start).

    Construction checks nothing (a test may build any value); :meth:`check` does.
    """

    engine: EngineOptions = field(default_factory=lambda: DEMO_ENGINE)
    streams: int = 4000
    duration: float = 30.0
    rate: float = 0.0
    seed: int = 0
    progress: bool = True
    sample_streams: int = 200
    redeliver: float = 0.002
    mean_active_s: float = 6.0
    quiet_s: tuple[float, float] = (2.0, 10.0)
    kind: DemoKind = DemoKind.SENSOR
    clip_frames: tuple[int, int] = (30, 300)
    start_spread_s: float = 0.0

    def check(self) -> None:
        """Raise ConfigError for an unusable setting."""
        if self.kind not in KINDS:
            raise ConfigError(f"--kind must be one of {KINDS}, got {self.kind!r}")
        lo, hi = self.clip_frames
        if not 1 <= lo <= hi:
            raise ConfigError(f"clip lengths must satisfy 1 <= lo <= hi, got {lo}, {hi}")
        if self.start_spread_s < 0:
            raise ConfigError(f"the start spread must be >= 0, got {self.start_spread_s}")
        if self.streams < 1:
            raise ConfigError(f"--streams must be >= 1, got {self.streams}")
        if not self.duration > 0:
            raise ConfigError(f"--duration must be > 0, got {self.duration}")
        if self.rate < 0:
            raise ConfigError(f"--rate must be >= 0, got {self.rate}")
        if not 0.0 <= self.redeliver < 1.0:
            raise ConfigError(f"--redeliver must be in [0, 1), got {self.redeliver}")
        if self.sample_streams < 0:
            raise ConfigError(f"--sample-streams must be >= 0, got {self.sample_streams}")
