"""Exception hierarchy: one root type, small per-area subclasses."""

from __future__ import annotations


class LstmStreamError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(LstmStreamError):
    """A setting or flag is invalid; fix the configuration."""


class KafkaAccessError(LstmStreamError):
    """The Kafka cluster cannot be reached, or refuses this client's TLS or SASL settings
    (authentication failed, untrusted certificate, security protocol mismatch). The
    command does not retry its start: the configuration or the network must change, or the
    command be started again once the broker is back. The message is one line
    naming the server and the cause, and never holds a secret.

    The commands that talk to Kafka (``run``, ``produce``, ``tail``) print it as their one
    error line and exit with :attr:`exit_code`.
    """

    exit_code = 3


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
