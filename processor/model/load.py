"""Loading a model file as a :class:`~processor.model.protocol.StepModel`: a Keras 3 ``.keras``
file (in safe mode, with an optional init model) or a SavedModel directory, refused with a
:class:`~processor.errors.ModelLoadError` that says why when it cannot be stepped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)
from processor.errors import ModelLoadError
from processor.model.facts import _file_digest
from processor.model.keras_step import KerasStepModel
from processor.model.protocol import StepModel
from processor.model.saved_step import SavedModelStep

import keras  # isort: skip

__all__ = ["load_step_model"]


def _load_keras(path: Path) -> Any:
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError... for bad files
        hint = ""
        if "safe_mode" in str(exc):
            # Keras suggests safe_mode=False; lstm-stream never loads untrusted code.
            hint = (
                " (lstm-stream loads models in Keras safe mode only: replace Lambda layers "
                "with built-in or registered layers)"
            )
        raise ModelLoadError(
            f"cannot load Keras model {str(path)!r}: {_short_keras_error(exc)}{hint}"
        ) from exc


def _short_keras_error(exc: Exception, limit: int = 1000) -> str:
    """Keras deserialization errors embed whole model configs (tens of KB); keep the
    sentences that say what failed."""
    parts = [p for p in str(exc).split("\n\n") if not p.startswith("config=")]
    text = " ".join(p.split(" Full object config:")[0].strip() for p in parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_step_model(path: str | os.PathLike[str], init_model: str | None = None) -> StepModel:
    """Load ``path`` (a ``.keras`` file or a SavedModel directory) as a StepModel.

    ``init_model`` (``.keras``) maps a stream's first input to its initial states; only for
    Keras models (a SavedModel brings its own ``initial_state`` signature). Raises
    :class:`ModelLoadError` with the reason when the model cannot be stepped.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model path {str(p)!r} does not exist")
    if p.is_dir():
        if not (p / "saved_model.pb").exists():
            raise ModelLoadError(f"directory {str(p)!r} is not a SavedModel (no saved_model.pb)")
        if init_model is not None:
            raise ModelLoadError(
                "--init-model applies to Keras models; a SavedModel exports its own "
                "'initial_state' signature"
            )
        return SavedModelStep(str(p))
    if p.suffix != ".keras":
        raise ModelLoadError(
            f"model file {str(p)!r} is not a Keras 3 '.keras' file (or a SavedModel directory)"
        )
    model = _load_keras(p)
    init = None
    if init_model is not None:
        ip = Path(init_model)
        if ip.suffix != ".keras" or not ip.is_file():
            raise ModelLoadError(f"init model {init_model!r} must be an existing '.keras' file")
        init = _load_keras(ip)
    return KerasStepModel(model, init, identity=_file_digest(p, init_model))
