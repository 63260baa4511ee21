"""The pipeline's stream -> source index without an engine: which streams a checkpoint
takes (changed ones, tombstones for ended ones), taking them again after a failed
checkpoint, loading a source's states, and forgetting a source's streams."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from processor.engine.sources import Loaded, SourceIndex
from processor.model import StateSpec
from processor.records import Record
from processor.state.cache import StateCache, StreamState

SPEC = (StateSpec("lstm/h", (2,)),)


@pytest.fixture
def cache() -> Iterator[StateCache]:
    cache = StateCache(SPEC, 4, spill_capacity=8)
    try:
        yield cache
    finally:
        cache.close()


def _load(index: SourceIndex, cache: StateCache, source: str, seqs: dict[str, int]) -> None:
    streams = list(seqs)
    arrays = [np.full((len(streams), 2), 0.5, np.float32)]
    index.load(cache, source, Loaded(streams, np.array(list(seqs.values())), arrays))


def _encode(state: StreamState, source: object) -> bytes:
    return b"%s:%d" % (str(source).encode(), state.seq)


def test_a_checkpoint_takes_changed_streams_by_source_and_tombstones_ended_ones(
    cache: StateCache,
) -> None:
    index = SourceIndex(track_changes=True)
    _load(index, cache, "p0", {"a": 3, "b": 4})
    _load(index, cache, "p1", {"c": 5})
    assert len(index) == 3 and index.changed_count == 0  # loading changes nothing
    index.note(cache, [Record("a", 4, np.zeros(2)), Record("c", 6, np.zeros(2))], ["p0", "p1"])
    cache.forget(["c"])  # c's life ended
    changes = index.take_changes(cache, _encode)
    assert changes.records == {"p0": [("a", b"p0:3")], "p1": [("c", None)]}
    assert changes.ended == {"c": "p1"} and changes.count == 2
    assert index.changed_count == 0 and len(index) == 2  # the tombstoned c left the index
    # The checkpoint failed: its streams are taken again, c's tombstone only while p1 is owned.
    index.mark_changed(changes, owned={"p0"})
    again = index.take_changes(cache, _encode)
    assert again.records == {"p0": [("a", b"p0:3")]}


def test_forgetting_a_source_forgets_its_streams_and_their_changes(cache: StateCache) -> None:
    index = SourceIndex(track_changes=True)
    _load(index, cache, "p0", {"a": 1})
    _load(index, cache, "p1", {"b": 2, "c": 3})
    index.note(cache, [Record("b", 3, np.zeros(2))], ["p1"])
    assert index.forget(cache, lambda source: source == "p1") == 2
    assert [cache.last_seq(s) for s in "abc"] == [1, -1, -1]
    assert index.take_changes(cache, _encode).count == 0  # b's change went with it


def test_loading_forgets_the_streams_whose_lives_ended(cache: StateCache) -> None:
    index = SourceIndex()
    _load(index, cache, "p0", {"a": 1, "b": 2})
    arrays = [np.zeros((0, 2), np.float32)]
    index.load(cache, "p0", Loaded([], np.array([], np.int64), arrays, ended=["b"]))
    assert (cache.last_seq("a"), cache.last_seq("b")) == (1, -1)
    assert len(index) == 1
