"""The model of a demo run: the one given (``--model``, with ``--init-model``), or the
example model of the run's kind trained now; checked against what the kind feeds and scores.

:func:`prepare_model` loads or trains it (:class:`Trainers` says how each kind trains;
the default trains :mod:`processor.demo.example` or :mod:`processor.demo.frames_example`);
:func:`check_model` refuses a model the kind cannot feed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from processor.demo.config import DemoConfig, DemoKind
from processor.demo.example import TrainConfig, TrainMetrics, format_metrics, train_example_model
from processor.demo.frames_example import (
    FramesMetrics,
    FramesTrainConfig,
    format_frames_metrics,
    train_frames_model,
)
from processor.demo.signals import FRAME_SHAPE
from processor.errors import ConfigError
from processor.model import KerasStepModel, StepModel, load_step_model

__all__ = ["Trainers", "check_model", "prepare_model"]


@dataclass(frozen=True)
class Trainers:
    """How the example model of each kind is trained (by the demo when it is given none,
    and by ``lstm-stream example-model``): ``sensor``
    returns ``(keras model, metrics)``, ``frames`` ``(keras model, init model or None,
    metrics)``, as :func:`~processor.demo.example.train_example_model` and
    :func:`~processor.demo.frames_example.train_frames_model` (the defaults) do."""

    sensor: Callable[[TrainConfig], tuple[Any, TrainMetrics]] = train_example_model
    frames: Callable[[FramesTrainConfig], tuple[Any, Any | None, FramesMetrics]] = (
        train_frames_model
    )


def check_model(model: StepModel, kind: DemoKind = DemoKind.SENSOR) -> int:
    """The number of output values per step, after checking that ``model`` fits ``kind``
    (sensor: float input and output of one shape ``(C,)``; frames: 84x84x1 uint8 input and
    a ``(2,)`` velocity). Raises ConfigError otherwise."""
    shape = tuple(model.input_shape)
    out = tuple(model.output_shape)
    if kind == DemoKind.FRAMES:
        if shape != FRAME_SHAPE or np.dtype(model.input_dtype) != np.uint8 or out != (2,):
            raise ConfigError(
                f"the frames demo feeds {FRAME_SHAPE} uint8 frames and scores velocities: it "
                f"needs a model with per-step input {FRAME_SHAPE} uint8 and output (2,); got "
                f"input {shape} {model.input_dtype}, output {out}"
            )
        return 2
    if len(shape) != 1 or out != shape:
        raise ConfigError(
            f"the demo feeds sensor vectors and scores next-sample forecasts: it needs a model "
            f"with per-step input and output shape (C,); got input {shape}, output "
            f"{out}"
        )
    if np.dtype(model.input_dtype).kind != "f":
        raise ConfigError(f"the demo needs a float input model, got {model.input_dtype}")
    return int(shape[0])


def prepare_model(
    config: DemoConfig,
    train: TrainConfig | FramesTrainConfig | None = None,
    log: TextIO | None = None,
    *,
    trainers: Trainers | None = None,
    load_model: Callable[[str, str | None], StepModel] = load_step_model,
) -> tuple[StepModel, str | None]:
    """The model of ``config.engine.model`` (with ``config.engine.init_model``), or, without
    one, the example model of ``config.kind`` trained now by ``trainers`` (default:
    :class:`Trainers`) with ``train`` settings, of the kind's type (default: the kind's
    defaults with seed ``config.seed``). ``load_model`` loads a model path with its init
    model path (default: :func:`~processor.model.load.load_step_model`). Returns the
    model with the training summary, if any.
    Raises ConfigError for ``--init-model`` without ``--model`` or ``train`` settings of
    the other kind. Notes go to ``log`` (default: ``sys.stderr`` at the time of the call)."""
    log = log if log is not None else sys.stderr
    trainers = trainers if trainers is not None else Trainers()
    if config.engine.model is not None:
        return load_model(config.engine.model, config.engine.init_model), None
    if config.engine.init_model is not None:
        raise ConfigError("--init-model needs the --model it belongs to")
    if config.kind == DemoKind.FRAMES:
        fcfg = train or FramesTrainConfig(seed=config.seed)
        if not isinstance(fcfg, FramesTrainConfig):
            raise ConfigError("the frames demo trains with FramesTrainConfig settings")
        print(
            f"no --model given: training the frames example model now ({fcfg.epochs} epochs "
            f"on {fcfg.streams} clips; `lstm-stream example-model --kind frames --out FILE` "
            "saves one)...",
            file=log,
            flush=True,
        )
        frames_model, init_model, fmetrics = trainers.frames(fcfg)
        text = format_frames_metrics(fcfg, fmetrics)
        print(text, file=log, flush=True)
        return KerasStepModel.from_model(frames_model, init_model), text
    cfg = train or TrainConfig(seed=config.seed)
    if not isinstance(cfg, TrainConfig):
        raise ConfigError("the sensor demo trains with TrainConfig settings")
    print(
        f"no --model given: training the example model now ({cfg.epochs} epochs on "
        f"{cfg.streams} streams; `lstm-stream example-model --out FILE` saves one)...",
        file=log,
        flush=True,
    )
    keras_model, metrics = trainers.sensor(cfg)
    text = format_metrics(cfg, metrics)
    print(text, file=log, flush=True)
    return KerasStepModel.from_model(keras_model), text
