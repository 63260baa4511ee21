"""The processing guarantees the Kafka benchmarks compare, and the exactly-once facts they
rely on: the transaction timeout a commit interval needs (:func:`transaction_timeout_for`)
and when every output of an input counts as committed (:func:`outputs_committed`). Pure;
tested without a broker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeVar

#: The two ``--processing-guarantee`` values compared (spelled as the settings spell them).
AT_LEAST_ONCE: Final = "at-least-once"
EXACTLY_ONCE: Final = "exactly-once"

#: The settings' default transaction timeout; a longer commit interval gets a longer one
#: (the settings require more than twice the interval).
_DEFAULT_TRANSACTION_TIMEOUT_MS: Final = 30_000

K = TypeVar("K")


def transaction_timeout_for(commit_interval_ms: int) -> int:
    """The transaction timeout a benchmark run at ``commit_interval_ms`` uses: the settings'
    default, or three intervals when that is longer (the settings refuse a timeout of two
    intervals or less)."""
    return max(_DEFAULT_TRANSACTION_TIMEOUT_MS, 3 * commit_interval_ms)


def outputs_committed(
    committed: Mapping[K, int],
    input_ends: Mapping[K, int],
    output_stable: Mapping[K, int],
    output_ends: Mapping[K, int],
) -> bool:
    """True when every output of every input record is visible to a ``read_committed``
    reader: the group's committed offset of each input partition has reached that
    partition's end (in exactly-once mode the offsets commit in the same transaction as the
    outputs they cover), and no output partition has an open transaction left (its last
    stable offset equals its end offset, so the commit markers are written). A partition
    missing from ``committed`` has no committed offset yet."""
    if any(committed.get(tp, -1) < end for tp, end in input_ends.items()):
        return False
    return all(output_stable.get(tp, -1) >= end for tp, end in output_ends.items())
