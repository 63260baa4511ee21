"""lstm-stream: a trained recurrent model stepped over many live streams.

One subpackage per layer (docs/architecture.md gives each one's responsibility and what it may
import): :mod:`processor.model` (StepModel), :mod:`processor.state` (StateCache),
:mod:`processor.engine` (planning, the Engine, the Pipeline), :mod:`processor.codec` (wire
format), :mod:`processor.config` and :mod:`processor.obs`; the transports
:mod:`processor.kafka`, :mod:`processor.replay` and :mod:`processor.demo`;
:mod:`processor.bench`; :mod:`processor.cli` (composition root).
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
