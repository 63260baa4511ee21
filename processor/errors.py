"""Exception hierarchy: one root type, small per-area subclasses."""

from __future__ import annotations


class LstmStreamError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(LstmStreamError):
    """A setting or flag is invalid; fix the configuration."""


class ModelLoadError(LstmStreamError):
    """The model file cannot be turned into a step function (unsupported layer, bad file...)."""


class CapacityError(LstmStreamError):
    """The state cache cannot hold what a single step needs (batch larger than capacity)."""


class BadRecord(LstmStreamError):
    """One input record is invalid. A value for the dead-letter path, never fatal.

    ``reason`` is a short stable code (used as a metric label and DLQ header);
    ``detail`` is a human-readable explanation.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
