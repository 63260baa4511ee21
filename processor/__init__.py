"""lstm-stream: a trained recurrent model stepped over many live streams.

Components (see ../shared/DESIGN.md): :mod:`processor.model` (StepModel),
:mod:`processor.cache` (StateCache), :mod:`processor.engine` (Engine),
:mod:`processor.codec` (wire format), :mod:`processor.cli` (composition root).
"""

import os

# Set before TensorFlow is first imported anywhere in the package: Keras must use the
# TensorFlow backend, and TF's C++ start-up chatter (CUDA probing on CPU-only machines)
# drowns the tool's own output. Users can still override both.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
