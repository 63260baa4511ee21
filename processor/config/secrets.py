"""Which option values are secrets, and what they are shown as wherever settings are
printed or logged."""

from __future__ import annotations

from typing import Final

__all__ = ["REDACTED", "is_secret_option"]

#: What a secret value is shown as wherever settings are printed or logged.
REDACTED: Final = "***"
_SECRET_WORDS: Final = ("password", "secret", "token", "key")


def is_secret_option(name: str) -> bool:
    """True when a Kafka option's value must never be logged (SASL passwords, SSL keys,
    OAuth tokens...). Deliberately broad: a false positive only hides a harmless value."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)
