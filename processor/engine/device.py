"""Device resolution: ``--device`` to the TensorFlow device the engine and its state table
run on, named once per process in the log (:class:`DeviceAnnouncer`)."""

from __future__ import annotations

import logging

import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)
from processor.errors import ConfigError

__all__ = ["DeviceAnnouncer", "describe_device", "resolve_device"]

log = logging.getLogger(__name__)


class DeviceAnnouncer:
    """Logs each device at INFO level the first time it is announced (``device: /CPU:0 (no
    GPU visible)``, see :func:`describe_device`), so a command that runs the model says once
    where it runs, although several engines of one process (the demo, the benchmarks)
    resolve the same device."""

    def __init__(self) -> None:
        self._named: set[str] = set()

    def announce(self, device: str) -> None:
        """Log ``device`` (a name returned by :func:`resolve_device`) unless this announcer
        already did."""
        if device not in self._named:
            self._named.add(device)
            log.info("device: %s", describe_device(device))


# The process's announcer: resolve_device names each device through it.
_PROCESS_ANNOUNCER = DeviceAnnouncer()


def resolve_device(device: str | None, announcer: DeviceAnnouncer = _PROCESS_ANNOUNCER) -> str:
    """Map ``--device`` to a TensorFlow device name, and announce it (by default once per
    process).

    ``None``/``"auto"``: the first GPU TensorFlow sees, else the CPU. ``"cpu"``/``"gpu"``
    (optionally ``gpu:N``) or a full name such as ``/GPU:1``. Raises ConfigError for a device
    TensorFlow does not have.
    """
    if device is None or device == "auto":
        name = "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
    else:
        name = device if device.startswith("/") else "/" + device.upper()
        if ":" not in name:
            name += ":0"
        kind, _, index = name[1:].partition(":")
        available = [d.name for d in tf.config.list_logical_devices()]
        if not any(d.endswith(f"device:{kind.upper()}:{index}") for d in available):
            raise ConfigError(f"device {device!r} not found; TensorFlow sees {available}")
        name = f"/{kind.upper()}:{index}"
    announcer.announce(name)
    return name


def describe_device(device: str) -> str:
    """``device`` (a name returned by :func:`resolve_device`) with what TensorFlow says about
    it and the GPUs it sees, e.g. ``/CPU:0 (no GPU visible)``, ``/CPU:0 (1 GPU visible, not
    used)`` or ``/GPU:0 (NVIDIA A100-SXM4-40GB, 2 GPUs visible)``. Best effort: a detail
    TensorFlow cannot give is left out."""
    gpus = tf.config.list_physical_devices("GPU")
    seen = f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''} visible"
    kind, _, index = device.lstrip("/").partition(":")
    if kind.upper() != "GPU":
        return f"{device} ({seen}, not used)" if gpus else f"{device} (no GPU visible)"
    parts = [seen]
    try:
        details = tf.config.experimental.get_device_details(gpus[int(index or 0)])
    except (IndexError, ValueError, RuntimeError):
        details = {}
    if details.get("device_name"):
        parts.insert(0, str(details["device_name"]))
    return f"{device} ({', '.join(parts)})"
