"""Padded sizes of the engine's compiled calls: each distinct shape is one trace, so a
batch is padded up to the next of a few sizes and steady state never traces again. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from processor.errors import ConfigError

__all__ = ["bucket_for", "bucket_sizes", "scan_step_buckets"]


def bucket_sizes(max_batch: int, smallest: int = 1) -> tuple[int, ...]:
    """Padded batch sizes: powers of two from ``smallest``, plus 1.5x steps from 192 on
    (192, 384, 768, ...), up to and including ``max_batch``.

    Padding rows cost a full row of compute, so the large buckets are spaced more finely
    (a batch pays at most a third more than its size there, not double) for a few more
    traces.
    """
    if max_batch < 1:
        raise ConfigError(f"max batch must be >= 1, got {max_batch}")
    sizes = {max_batch}
    b = 1
    while b < max_batch:
        if b >= smallest:
            sizes.add(b)
        if b >= 128 and b + b // 2 < max_batch:
            sizes.add(b + b // 2)
        b *= 2
    return tuple(sorted(sizes))


def scan_step_buckets(scan_min_steps: int, max_scan_steps: int) -> tuple[int, ...]:
    """Padded step counts of a scan call: powers of two from the first >= ``scan_min_steps``
    up to the first >= ``max_scan_steps`` (for a compiler that traces per shape, XLA)."""
    steps = [1 << max(0, (scan_min_steps - 1).bit_length())]
    while steps[-1] < max_scan_steps:
        steps.append(steps[-1] * 2)
    return tuple(steps)


def bucket_for(buckets: Sequence[int], n: int) -> int:
    """The smallest of ``buckets`` (ascending) that holds ``n``; ``n`` must fit the last."""
    for b in buckets:
        if b >= n:
            return b
    raise AssertionError(f"{n} exceeds the largest bucket {buckets[-1]}")
