"""Padded sizes of the engine's compiled calls."""

from __future__ import annotations

import pytest

from processor.engine.buckets import bucket_for, bucket_sizes, scan_step_buckets
from processor.errors import ConfigError


def test_bucket_sizes() -> None:
    assert bucket_sizes(1024) == (1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 384, 512, 768, 1024)
    assert bucket_sizes(100) == (1, 2, 4, 8, 16, 32, 64, 100)
    assert bucket_sizes(600) == (1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 384, 512, 600)
    assert bucket_sizes(100, smallest=8) == (8, 16, 32, 64, 100)
    assert bucket_sizes(3) == (1, 2, 3)
    with pytest.raises(ConfigError):
        bucket_sizes(0)


def test_scan_step_buckets_are_powers_of_two_covering_min_to_max() -> None:
    assert scan_step_buckets(4, 64) == (4, 8, 16, 32, 64)
    assert scan_step_buckets(3, 50) == (4, 8, 16, 32, 64)
    assert scan_step_buckets(2, 2) == (2,)


def test_bucket_for_picks_the_smallest_that_holds_n() -> None:
    buckets = bucket_sizes(100)
    assert [bucket_for(buckets, n) for n in (1, 3, 64, 65, 100)] == [1, 4, 64, 100, 100]
    with pytest.raises(AssertionError):
        bucket_for(buckets, 101)
