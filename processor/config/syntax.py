"""The text syntax shared by flags, ``LSTM_STREAM_*`` variables, TOML strings and Kafka
options: booleans and ``KEY=VALUE`` assignments. Pure functions; no imports beyond the
project's errors."""

from __future__ import annotations

from processor.errors import ConfigError

__all__ = ["parse_bool", "split_assignment"]


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` -> False (any case, spaces ignored);
    ValueError otherwise. The one boolean syntax of flags, env, TOML strings and Kafka
    options."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def split_assignment(text: str, flag: str) -> tuple[str, str]:
    """``KEY=VALUE`` of a map flag -> (stripped key, value as given); :class:`ConfigError`
    naming ``flag`` without ``=`` or with an empty key."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} expects KEY=VALUE, got {text!r}")
    return key.strip(), value
