"""Keeping secret Kafka settings out of error lines.

A broker's error text comes from outside and could quote what it was sent (a password, a
token), so before such a text is shown it is checked against the values of every secret
option (:func:`processor.config.secrets.is_secret_option`) and withheld whole when it holds
one. Pure functions.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from processor.config.secrets import REDACTED, is_secret_option

__all__ = ["scrub_secrets", "secret_values"]


def secret_values(*sources: Mapping[str, Any] | None) -> list[str]:
    """The values of every secret option (with or without a ``consumer.``/``producer.``
    prefix) in ``sources``: client keyword arguments and the Kafka options they were built
    from (``ssl_password`` only exists there)."""
    return [
        str(value)
        for source in sources
        for name, value in (source or {}).items()
        if is_secret_option(name) and isinstance(value, str) and value
    ]


def scrub_secrets(text: str, secrets: Collection[str]) -> str:
    """``text``, or a stand-in when it contains any of ``secrets``: the whole text is
    withheld rather than the secret cut out, because the gaps a cut leaves would show where
    (and so what) a short secret is."""
    if any(secret and secret in text for secret in secrets):
        return f"{REDACTED} (the server's message is withheld: it holds a secret setting's value)"
    return text
