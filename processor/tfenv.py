"""TensorFlow's start-up output, kept off the terminal unless asked for.

Importing TensorFlow writes lines such as ``WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR`` and ``cudart_stub.cc ... Could not
find cuda drivers`` straight to file descriptor 2, before its logging is initialised (so
``TF_CPP_MIN_LOG_LEVEL`` does not filter them), and the first look at the devices writes
``E0000 ... failed call to cuInit: ... UNKNOWN ERROR (303)`` on every machine without a GPU
(an ERROR-level line, which ``TF_CPP_MIN_LOG_LEVEL=2`` lets through). None of it is a
failure, but it reads like one.

:func:`quiet_tensorflow_startup` runs a block (the CLI imports the chosen command's module
in it) with descriptor 2 redirected to a temporary file and, if the block imported
TensorFlow, also probes the physical devices there, which is when CUDA is initialised; the
captured text is shown only when the block fails or when asked (``--log-level DEBUG``).
Later device use prints nothing more on a CPU-only machine. The one line that replaces all
of that, naming the device the engine runs on, is logged by
:func:`processor.engine.device.resolve_device`.

Only the composition root (:mod:`processor.cli`) should use the context manager: it swaps a
process-wide file descriptor, so it must run while no other thread writes to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _captured_fd2(into: list[str]) -> Iterator[None]:
    """Redirect file descriptor 2 to a temporary file for the block; afterwards (whether
    the block succeeded or raised) append the captured text to ``into``. If descriptor 2
    cannot be duplicated (it is closed), the block runs uncaptured."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with tempfile.TemporaryFile() as tmp:
            sys.stderr.flush()  # Python's own buffered text goes where it was meant to go
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                tmp.seek(0)
                into.append(tmp.read().decode("utf-8", "replace"))
    finally:
        os.close(saved)


@contextlib.contextmanager
def quiet_tensorflow_startup(*, show: bool) -> Iterator[None]:
    """Run the block with TensorFlow's start-up output captured (see the module docstring).

    If TensorFlow is already imported when the block starts, nothing is captured (its
    start-up output is long gone). Otherwise, after the block, if it imported TensorFlow,
    the physical devices are listed while still captured: this initialises CUDA (or fails
    to) without creating TensorFlow's runtime, so thread pools and visible devices can
    still be configured afterwards. The captured text is written to stderr as it is when
    the block raises (it may say why), logged at DEBUG level when ``show`` is true, and
    dropped otherwise.
    """
    if "tensorflow" in sys.modules:
        yield
        return
    captured: list[str] = []
    try:
        with _captured_fd2(captured):
            yield
            tf: Any = sys.modules.get("tensorflow")
            if tf is not None:
                tf.config.list_physical_devices()
    except BaseException:
        sys.stderr.write("".join(captured))
        sys.stderr.flush()
        raise
    text = "".join(captured).rstrip("\n")
    if show and text:
        log.debug("TensorFlow start-up output:\n%s", text)
