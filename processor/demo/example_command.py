"""``lstm-stream example-model``: train the example model of ``--kind`` and save it.

``--kind sensor`` (default) trains :mod:`processor.demo.example`'s forecaster, ``--kind
frames`` :mod:`processor.demo.frames_example`'s velocity model (with ``--init-out`` also its
init model). The module offers the command's :func:`add_arguments` and :func:`main`, the
flags' configs (:func:`config_from_args`, :func:`frames_config_from_args`) and
:func:`save_model`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from processor.demo.config import KINDS, DemoKind
from processor.demo.example import TrainConfig, format_metrics
from processor.demo.frames_example import FramesTrainConfig, format_frames_metrics
from processor.demo.prepare import Trainers

__all__ = ["add_arguments", "config_from_args", "frames_config_from_args", "main", "save_model"]


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
        choices=KINDS,
        default=DemoKind.SENSOR.value,
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


#: Saves a model to a path, returning the path (as :func:`save_model`).
SaveModel = Callable[[Any, str], Path]


def main(
    args: argparse.Namespace,
    *,
    trainers: Trainers | None = None,
    save: SaveModel = save_model,
) -> int:
    """Train the example model of ``--kind``, save it to ``--out`` (and the init model to
    ``--init-out``) and print the summary. Exit code 0, or 2 for invalid flags.

    The collaborators default to the real ones: ``trainers`` trains the model of each kind
    (default: :class:`~processor.demo.prepare.Trainers`), ``save`` writes a trained model
    to a ``.keras`` path and returns it (default: :func:`save_model`)."""
    trainers = trainers if trainers is not None else Trainers()
    if getattr(args, "kind", DemoKind.SENSOR) == DemoKind.FRAMES:
        return _main_frames(args, trainers, save)
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
    model, metrics = trainers.sensor(cfg)
    path = save(model, args.out)
    print(format_metrics(cfg, metrics))
    print(f"saved {path}")
    return 0


def _main_frames(args: argparse.Namespace, trainers: Trainers, save: SaveModel) -> int:
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
    model, init, metrics = trainers.frames(cfg)
    path = save(model, args.out)
    print(format_frames_metrics(cfg, metrics))
    print(f"saved {path}")
    if init is not None:
        print(f"saved {save(init, args.init_out)} (initial states: --init-model)")
    return 0
