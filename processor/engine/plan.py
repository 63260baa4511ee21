"""Planning a batch: which records the engine applies, in which compiled calls; pure.

The engine's execution (:mod:`processor.engine.engine`) only carries out what is decided
here. :func:`group_streams` groups a batch's records by stream, in groups of at most
``max_batch`` streams (every stream of a group needs a device slot for the whole group).
:func:`plan_group` plans one group from each stream's last applied seq and whether it
starts from the initial state -- what the state cache answers when it hands out the
group's slots, so groups are planned and executed one after another (admitting a later
group may evict an earlier group's streams).

Per stream, records are applied strictly in order and at most one per step:

* a record whose ``seq`` equals the stream's last applied ``seq`` is a re-delivery of the
  record already applied: it is not applied, and planned as a *duplicate*;
* a record whose ``seq`` is below the stream's last applied ``seq`` is not applied either,
  and planned as *out of order* with the last applied seq it was compared against. Such
  a record arrived out of order (a producer without idempotence can store a retried batch
  after a later one) -- or it is one of several records of a stream re-delivered at once,
  of which only the last one has the equal seq. Seqs alone cannot tell these apart; a
  caller that knows more (a Kafka consumer knows which offsets it already processed) can;
* the last applied seq moves as the group's records are applied, so a later record of the
  same stream in the same batch is judged against the ones kept before it;
* after a stream's ``end`` record the stream is forgotten and its next record starts a new
  life, with any ``seq``, from the initial state; so does a ``reset`` record, and the first
  record of a stream the cache holds no state for;
* streams with fewer than ``scan_min_steps`` applied records go through *waves*: wave
  ``t`` is one compiled step over the ``t``-th applied record of every such stream;
* streams with more (catching up) go through the multi-step *scan*, in chunks of at most
  ``max_scan_steps`` steps: one compiled loop over ``[steps, streams]`` records per chunk.

Hot path: every record passes through :func:`group_streams` and :func:`plan_group`, so
each costs a few list operations per record; telling a duplicate from an out-of-order
record costs one more comparison, and only for records that are skipped anyway.

Imports no TensorFlow, no state cache and no transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from processor.records import Record

__all__ = [
    "ScanChunk",
    "StepPlan",
    "StreamGroup",
    "Wave",
    "group_streams",
    "plan_group",
]


@dataclass(frozen=True, slots=True)
class StreamGroup:
    """Distinct streams (in order of first arrival) and each one's records (in arrival
    order); ``streams[i]``'s records are ``records[i]``."""

    streams: Sequence[str]
    records: Sequence[Sequence[Record]]


@dataclass(frozen=True, slots=True)
class Wave:
    """One compiled step: ``records[k]`` steps stream ``rows[k]`` of the plan (an index into
    :attr:`StepPlan.rows`), from the initial state where ``fresh[k]``."""

    rows: Sequence[int]
    records: Sequence[Record]
    fresh: Sequence[bool]


@dataclass(frozen=True, slots=True)
class ScanChunk:
    """One compiled multi-step call: stream ``rows[k]`` of the plan (an index into
    :attr:`StepPlan.rows`) steps through ``records[k]`` (1 to ``steps`` records), from the
    initial state at step ``t`` where ``fresh[k][t]``."""

    rows: Sequence[int]
    records: Sequence[Sequence[Record]]
    fresh: Sequence[Sequence[bool]]
    steps: int


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What the engine does for one :class:`StreamGroup`.

    ``rows``: the group's streams (indices into :attr:`StreamGroup.streams`) with at least
    one record to apply; ``records[j]`` are stream ``rows[j]``'s records to apply, in
    order, and ``last_seqs[j]`` the last applied seq to record for it afterwards. The
    waves run first, then the scan chunks; between them they step each record of
    ``records`` exactly once, each stream's in order. ``ended``: streams whose last
    applied record is an ``end`` (to release); ``restarted``: ``end`` records followed by
    a new life of the same stream in this group (their slot carries on). The records not
    applied, the caller's objects, per stream in arrival order: ``duplicates`` (seq equal
    to the last applied one) and ``out_of_order`` (``(record, last applied seq)``: below
    it). ``applied``: how many records are applied.
    """

    rows: Sequence[int]
    records: Sequence[Sequence[Record]]
    last_seqs: Sequence[int]
    waves: Sequence[Wave]
    scans: Sequence[ScanChunk]
    ended: Sequence[str]
    restarted: int
    duplicates: Sequence[Record]
    out_of_order: Sequence[tuple[Record, int]]
    applied: int


def group_streams(records: Sequence[Record], max_batch: int) -> list[StreamGroup]:
    """``records`` grouped by stream, in groups of at most ``max_batch`` streams; streams
    in order of first arrival, each stream's records in arrival order."""
    by_stream: dict[str, list[Record]] = {}
    for r in records:
        lst = by_stream.get(r.stream)
        if lst is None:
            by_stream[r.stream] = [r]
        else:
            lst.append(r)
    streams = list(by_stream)
    if len(streams) <= max_batch:
        return [StreamGroup(streams, list(by_stream.values()))] if streams else []
    pending = list(by_stream.values())
    return [
        StreamGroup(streams[i : i + max_batch], pending[i : i + max_batch])
        for i in range(0, len(streams), max_batch)
    ]


def plan_group(
    group: StreamGroup,
    last_seqs: Sequence[int],
    fresh: Sequence[bool],
    *,
    scan_min_steps: int,
    max_scan_steps: int,
) -> StepPlan:
    """Plan ``group`` (see the module docstring).

    ``last_seqs[i]``: stream ``i``'s last applied seq (-1: none); ``fresh[i]``: it has no
    state and starts from the initial state. ``scan_min_steps``: a stream with at least
    this many records to apply goes through the scan (0: never); ``max_scan_steps``: the
    most steps in one scan chunk.
    """
    rows: list[int] = []
    records: list[Sequence[Record]] = []
    flags: list[list[bool]] = []
    duplicates: list[Record] = []
    out_of_order: list[tuple[Record, int]] = []
    restarted = 0
    for row, (recs, last, new) in enumerate(zip(group.records, last_seqs, fresh, strict=True)):
        if len(recs) == 1:  # the steady-state case: one record per stream
            r = recs[0]
            if r.seq <= last:
                if r.seq == last:
                    duplicates.append(r)
                else:
                    out_of_order.append((r, last))
                continue
            kept: Sequence[Record] = recs
            starts = [new or r.reset]
        else:
            in_order: list[Record] = []
            starts = []
            after_end = False
            for r in recs:
                if after_end:
                    last = -1  # `end` forgot the stream: a new life starts with any seq
                if r.seq <= last:
                    if r.seq == last:
                        duplicates.append(r)
                    else:
                        out_of_order.append((r, last))
                    continue
                starts.append(r.reset or after_end or (new and not in_order))
                in_order.append(r)
                after_end = r.end
                last = r.seq
            if not in_order:
                continue
            restarted += sum(r.end for r in in_order[:-1])
            kept = in_order
        rows.append(row)
        records.append(kept)
        flags.append(starts)
    if not rows:
        return StepPlan((), (), (), (), (), (), restarted, duplicates, out_of_order, 0)
    if scan_min_steps and max(map(len, records)) >= scan_min_steps:
        scan_rows = [j for j, recs in enumerate(records) if len(recs) >= scan_min_steps]
        wave_rows = [j for j, recs in enumerate(records) if len(recs) < scan_min_steps]
    else:
        scan_rows, wave_rows = [], list(range(len(records)))
    streams = group.streams
    return StepPlan(
        rows=rows,
        records=records,
        last_seqs=[recs[-1].seq for recs in records],
        waves=_waves(records, flags, wave_rows) if wave_rows else (),
        scans=_scan_chunks(records, flags, scan_rows, max_scan_steps) if scan_rows else (),
        ended=[streams[row] for row, recs in zip(rows, records, strict=True) if recs[-1].end],
        restarted=restarted,
        duplicates=duplicates,
        out_of_order=out_of_order,
        applied=sum(map(len, records)),
    )


def _waves(records: list[Sequence[Record]], flags: list[list[bool]], rows: list[int]) -> list[Wave]:
    waves = []
    active = rows
    for t in range(max(len(records[j]) for j in rows)):
        if t:
            active = [j for j in active if len(records[j]) > t]
        waves.append(Wave(active, [records[j][t] for j in active], [flags[j][t] for j in active]))
    return waves


def _scan_chunks(
    records: list[Sequence[Record]], flags: list[list[bool]], rows: list[int], max_steps: int
) -> list[ScanChunk]:
    # A backlog longer than max_steps takes several chunks, each starting where the previous
    # one left the states.
    chunks = []
    depth = max(len(records[j]) for j in rows)
    for t0 in range(0, depth, max_steps):
        active = [j for j in rows if len(records[j]) > t0]
        end = t0 + max_steps
        chunks.append(
            ScanChunk(
                active,
                [records[j][t0:end] for j in active],
                [flags[j][t0:end] for j in active],
                min(max_steps, depth - t0),
            )
        )
    return chunks
