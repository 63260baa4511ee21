"""The model layer: a trained recurrent model reduced to a pure, traceable
``step(x, states) -> (y, states)`` with its state spec and initial states; models that cannot
be stepped are refused at load time with the reason.

* :mod:`.protocol` -- :class:`StepModel`, what the engine codes against.
* :mod:`.load` -- :func:`load_step_model`: a ``.keras`` file or a SavedModel directory.
* :mod:`.keras_step` -- :class:`KerasStepModel`: a Keras 3 model stepped one time step at a
  time (encoder, LSTM/GRU/SimpleRNN stack, head; an optional init model).
* :mod:`.keras_chain` -- the layer-chain rules: which layers run per step, and the refusal of
  anything that mixes time steps.
* :mod:`.saved_step` -- :class:`SavedModelStep`: a SavedModel's ``step`` and
  ``initial_state`` signatures.
* :mod:`.facts` -- :class:`StateSpec` and what every implementation shares (input checks,
  FLOP counts, the model files' digest).

The face re-exports those names; the package's own modules import each other by full path.
Importing it imports TensorFlow and Keras.
"""

from processor.model.facts import StateSpec, Tensor
from processor.model.keras_step import KerasStepModel
from processor.model.load import load_step_model
from processor.model.protocol import StepModel
from processor.model.saved_step import SavedModelStep

__all__ = [
    "KerasStepModel",
    "SavedModelStep",
    "StateSpec",
    "StepModel",
    "Tensor",
    "load_step_model",
]
