"""lstm-stream: a trained recurrent model stepped over many live streams.

Components (docs/architecture.md describes how they fit together): :mod:`processor.model.protocol`
(StepModel), :mod:`processor.state.cache` (StateCache), :mod:`processor.engine.engine` (Engine),
:mod:`processor.codec` (wire format), :mod:`processor.cli` (composition root).
"""

import os

# Set before TensorFlow is first imported anywhere in the package: Keras must use the
# TensorFlow backend, and TF's C++ INFO and WARNING lines would drown the tool's own output.
# Users can still override both. This does not reach the lines TensorFlow writes before its
# logging starts, nor the ERROR line of a failed CUDA probe on a machine without a GPU:
# processor.tfenv keeps those off the command line's stderr.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
