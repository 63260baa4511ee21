"""The example model: next-value forecasting of noisy periodic sensor signals.

(``--kind frames`` trains the video counterpart instead: see :mod:`processor.demo.frames_example`;
this module is the ``example-model`` command for both kinds.)

``lstm-stream example-model --out build/example-model.keras`` trains, in a few seconds on a
small CPU, a one-layer LSTM that reads one sample of a multi-channel sensor per step and
predicts the stream's next sample. The signal makes kept state matter: from one sample alone
the next one cannot be told (the same value occurs on the rising and the falling edge of a
sine), while a few samples of history pin down each stream's frequencies and phases.

Pieces reused by the demo and the tests:

* :class:`SignalBank` — a seeded generator of many independent streams; each call to
  :meth:`SignalBank.next` yields the next sample of the given streams, continuing each
  stream's own time (a stream that is not asked for is paused, not skipped ahead).
* :func:`build_example_model`, :func:`train_example_model` — the Keras model and its
  training on SignalBank data, with honest held-out metrics (model vs. naive baseline vs.
  the same model without state).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)
from processor.demo import frames_example
from processor.demo.frames_example import FramesTrainConfig

import keras  # isort: skip

# Salts of the seed, so that training, validation and the demo's live feeds draw different
# streams from the same --seed (a demo never forecasts streams the model was trained on).
TRAIN_SALT = 0
VALIDATION_SALT = 1
FEED_SALT = 2


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


def build_example_model(channels: int = 4, units: int = 64, layers: int = 1) -> Any:
    """``Input((None, channels)) -> LSTM(units, return_sequences=True) x layers ->
    Dense(channels)``: per step, the predicted next sample. Steppable by
    :class:`processor.model.protocol.KerasStepModel` (a linear chain, per-step head)."""
    if layers < 1 or units < 1:
        raise ValueError(f"need layers >= 1 and units >= 1, got {layers}, {units}")
    stack: list[Any] = [keras.Input((None, channels), name="samples")]
    stack += [
        keras.layers.LSTM(units, return_sequences=True, name=f"lstm_{i}") for i in range(layers)
    ]
    stack.append(keras.layers.Dense(channels, name="next_sample"))
    return keras.Sequential(stack, name="example_forecaster")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (the ``example-model`` flags)."""

    streams: int = 1024
    steps: int = 100
    epochs: int = 25
    channels: int = 4
    units: int = 64
    layers: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    seed: int = 0
    val_streams: int = 256
    val_steps: int = 400


@dataclass(frozen=True)
class TrainMetrics:
    """Held-out results of a training run (validation streams the model never saw, run for
    ``val_steps`` steps from a zero state, longer than the training windows).

    ``val_mse``: the model with its state kept; ``val_mse_after_warmup``: the same from step
    20 on (the first steps, before the state has seen a cycle, are worse); ``naive_mse``:
    predicting that the next sample equals the current one; ``reset_mse``: the model with its
    state reset before every sample (what a stateless server would compute);
    ``noise_floor``: the noise variance, the best any forecaster can do.
    """

    train_loss: float
    val_mse: float
    val_mse_after_warmup: float
    naive_mse: float
    reset_mse: float
    noise_floor: float
    fit_seconds: float
    total_seconds: float
    epochs: int
    parameters: int


WARMUP_STEPS = 20


def _call(model: Any, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """``model(x)`` in batches. Not ``predict``: Keras 3.15's predict can return a single
    time step for some models once it has traced a longer sequence."""
    return np.concatenate(
        [np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    )


def evaluate(model: Any, seq: np.ndarray) -> dict[str, float]:
    """Forecast errors of ``model`` on ``seq`` ``[n, T, C]`` (input ``seq[:, :-1]``, target
    ``seq[:, 1:]``): stateful, stateful after warm-up, naive, and state reset every step."""
    x, y = seq[:, :-1], seq[:, 1:]
    n, t, c = x.shape
    pred = _call(model, x)
    err = ((pred - y) ** 2).mean(axis=(0, 2))
    # Each sample as its own one-step sequence: the LSTM starts from zeros every time.
    single = _call(model, x.reshape(n * t, 1, c)).reshape(n, t, c)
    return {
        "val_mse": float(err.mean()),
        "val_mse_after_warmup": float(err[WARMUP_STEPS:].mean()),
        "naive_mse": float(((x - y) ** 2).mean()),
        "reset_mse": float(((single - y) ** 2).mean()),
    }


def train_example_model(config: TrainConfig | None = None) -> tuple[Any, TrainMetrics]:
    """Build and train the example model on fresh SignalBank streams; return it with its
    held-out metrics. Deterministic for a given config up to TensorFlow's thread scheduling."""
    cfg = config or TrainConfig()
    t_start = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    bank = SignalBank(cfg.streams, cfg.channels, cfg.seed, salt=TRAIN_SALT)
    data = bank.sequences(cfg.steps + 1)
    model = build_example_model(cfg.channels, cfg.units, cfg.layers)
    updates = cfg.epochs * -(-cfg.streams // cfg.batch_size)
    # Cosine decay: a high rate finds the periodic structure fast, the low tail settles it;
    # measured to beat a constant rate at the same number of epochs.
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, updates, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    t_fit = time.perf_counter()
    history = model.fit(
        data[:, :-1], data[:, 1:], epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0
    )
    fit_seconds = time.perf_counter() - t_fit
    val = SignalBank(cfg.val_streams, cfg.channels, cfg.seed, salt=VALIDATION_SALT)
    scores = evaluate(model, val.sequences(cfg.val_steps + 1))
    metrics = TrainMetrics(
        train_loss=float(history.history["loss"][-1]),
        noise_floor=bank.noise**2,
        fit_seconds=fit_seconds,
        total_seconds=time.perf_counter() - t_start,
        epochs=cfg.epochs,
        parameters=int(model.count_params()),
        **scores,
    )
    return model, metrics


def format_metrics(cfg: TrainConfig, m: TrainMetrics) -> str:
    """A human-readable training summary (several lines, no trailing newline)."""
    return "\n".join(
        [
            f"example model: {cfg.layers}x LSTM({cfg.units}) -> Dense({cfg.channels}), "
            f"{m.parameters:,} parameters",
            f"trained on {cfg.streams} streams x {cfg.steps} steps, {m.epochs} epochs in "
            f"{m.fit_seconds:.1f} s ({m.total_seconds:.1f} s with data and evaluation); "
            f"final train loss {m.train_loss:.5f}",
            f"held-out forecast MSE over {cfg.val_streams} new streams x {cfg.val_steps} steps:",
            f"  model, state kept        {m.val_mse:.5f}  (after {WARMUP_STEPS} steps: "
            f"{m.val_mse_after_warmup:.5f})",
            f"  model, state reset       {m.reset_mse:.5f}",
            f"  naive next = current     {m.naive_mse:.5f}",
            f"  noise floor              {m.noise_floor:.5f}",
        ]
    )


def save_model(model: Any, out: str | Path) -> Path:
    """Save ``model`` as a Keras 3 ``.keras`` file (parent directories created)."""
    path = Path(out)
    if path.suffix != ".keras":
        raise ValueError(f"output path {str(path)!r} must end in '.keras'")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


#: Flags that only the sensor model has.
_SENSOR_ONLY = ("channels", "layers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``lstm-stream example-model``. The training flags default to nothing on the
    parser (``argparse.SUPPRESS``) so that each ``--kind`` fills in its own defaults."""
    d = TrainConfig()
    f = FramesTrainConfig()
    parser.add_argument("--out", required=True, help="output '.keras' file")
    parser.add_argument(
        "--kind",
        choices=("sensor", "frames"),
        default="sensor",
        help="sensor: next-sample forecasting of noisy multi-channel sines; frames: the "
        "velocity of a bouncing object in 84x84x1 uint8 video frames",
    )
    parser.add_argument(
        "--init-out",
        default=None,
        help="frames only: also train, jointly, a model mapping a stream's first frame to "
        "every LSTM layer's initial (h, c) and save it to this '.keras' file (the engine's "
        "--init-model)",
    )

    def both(flag: str, kind: type, name: str, help_text: str) -> None:
        parser.add_argument(
            flag,
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{help_text} (default: {getattr(d, name)} sensor, {getattr(f, name)} frames)",
        )

    both("--seed", int, "seed", "random seed (data, weights)")
    both("--epochs", int, "epochs", "training epochs")
    both("--streams", int, "streams", "training streams (sequences)")
    both("--steps", int, "steps", "time steps per sequence")
    parser.add_argument(
        "--channels",
        type=int,
        default=argparse.SUPPRESS,
        help=f"sensor only: channels per stream (default: {d.channels})",
    )
    both("--units", int, "units", "LSTM units per layer")
    parser.add_argument(
        "--layers",
        type=int,
        default=argparse.SUPPRESS,
        help=f"sensor only: stacked LSTM layers (default: {d.layers}; frames: always 2)",
    )
    both("--batch-size", int, "batch_size", "training batch")
    both(
        "--learning-rate",
        float,
        "learning_rate",
        "initial Adam learning rate (cosine decay to 5%% of it)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed ``example-model`` flags (validation size at its default)."""
    names = set(asdict(TrainConfig()))
    return TrainConfig(**{k: getattr(args, k) for k in names if hasattr(args, k)})


def frames_config_from_args(args: argparse.Namespace) -> FramesTrainConfig:
    """The FramesTrainConfig of parsed ``example-model --kind frames`` flags (flags not
    given keep the frames defaults; ``init_model`` is set by ``--init-out``)."""
    names = set(asdict(FramesTrainConfig())) - {"init_model"}
    given = {k: getattr(args, k) for k in names if hasattr(args, k)}
    return FramesTrainConfig(**given, init_model=getattr(args, "init_out", None) is not None)


def main(args: argparse.Namespace) -> int:
    """Train the example model of ``--kind``, save it to ``--out`` (and the init model to
    ``--init-out``) and print the summary. Exit code 0, or 2 for invalid flags."""
    if getattr(args, "kind", "sensor") == "frames":
        return _main_frames(args)
    if getattr(args, "init_out", None) is not None:
        print("error: --init-out applies to --kind frames", file=sys.stderr)
        return 2
    cfg = config_from_args(args)
    if min(cfg.streams, cfg.steps, cfg.epochs, cfg.batch_size) < 1:
        print("error: --streams, --steps, --epochs and --batch-size must be >= 1", file=sys.stderr)
        return 2
    if not str(args.out).endswith(".keras"):
        print(f"error: --out {args.out!r} must end in '.keras'", file=sys.stderr)
        return 2
    print(f"training the example model (seed {cfg.seed})...", file=sys.stderr, flush=True)
    model, metrics = train_example_model(cfg)
    path = save_model(model, args.out)
    print(format_metrics(cfg, metrics))
    print(f"saved {path}")
    return 0


def _main_frames(args: argparse.Namespace) -> int:
    """``main`` for ``--kind frames``."""
    given = [f"--{n}" for n in _SENSOR_ONLY if hasattr(args, n)]
    if given:
        print(f"error: {', '.join(given)} applies to --kind sensor only", file=sys.stderr)
        return 2
    outs = [("--out", args.out), ("--init-out", getattr(args, "init_out", None))]
    for flag, value in outs:
        if value is not None and not str(value).endswith(".keras"):
            print(f"error: {flag} {value!r} must end in '.keras'", file=sys.stderr)
            return 2
    if getattr(args, "init_out", None) is not None and Path(args.init_out) == Path(args.out):
        print("error: --init-out must differ from --out", file=sys.stderr)
        return 2
    cfg = frames_config_from_args(args)
    if min(cfg.streams, cfg.steps, cfg.epochs, cfg.batch_size) < 1:
        print("error: --streams, --steps, --epochs and --batch-size must be >= 1", file=sys.stderr)
        return 2
    print(f"training the frames example model (seed {cfg.seed})...", file=sys.stderr, flush=True)
    model, init, metrics = frames_example.train_frames_model(cfg)
    path = save_model(model, args.out)
    print(frames_example.format_frames_metrics(cfg, metrics))
    print(f"saved {path}")
    if init is not None:
        print(f"saved {save_model(init, args.init_out)} (initial states: --init-model)")
    return 0
