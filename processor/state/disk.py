"""The disk tier's storage: an embedded RocksDB store of stream id -> encoded state.

:class:`DiskStore` holds the states that neither the device table nor the host table of
:class:`processor.state.cache.StateCache` has room for (:mod:`processor.state.disk_tier` puts
them there and takes them back); its size is bounded by the disk, not by memory. It is a
cache, never a durable store: it lives in a directory of its own, created with the store and
deleted by :meth:`DiskStore.close` (and, should ``close`` never be called, by a
``weakref.finalize`` safety net at garbage collection or interpreter exit), so that no run
ever reads another run's states.

:class:`RecordLayout` encodes states to and from the stored values: ``seq`` as a
little-endian int64, then the raw bytes of each state tensor in the storage dtype, in spec
order. All encoding and decoding is vectorised over a batch of rows.

RocksDB is configured for a cache whose memory must stay bounded: no write-ahead log (a
crash loses nothing that a restart would keep anyway), small write buffers, a bounded block
cache, bloom filters (most lookups are for streams that are not there) and no compression
(float states do not compress).

Threading: like the cache that owns it, a DiskStore belongs to one thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import rocksdict

from processor.errors import LstmStreamError

__all__ = ["DiskStore", "RecordLayout", "StoreError"]

log = logging.getLogger(__name__)

# Memory RocksDB may use, whatever the number of stored states: two 8 MiB memtables and a
# 16 MiB block cache (index and filter blocks are charged to it too).
WRITE_BUFFER_BYTES = 8 << 20
MAX_WRITE_BUFFERS = 2
BLOCK_CACHE_BYTES = 16 << 20
MAX_OPEN_FILES = 512


class StoreError(LstmStreamError):
    """The disk tier failed to write or read (I/O error, closed store, full disk)."""


class RecordLayout:
    """How one stream's state is laid out in a stored value.

    ``shapes``: the state tensors' shapes; ``dtype``: their host storage dtype (float32,
    float16, or uint16 holding bfloat16 bits). A value is ``8 + sum(prod(shape)) * itemsize``
    bytes: the seq (little-endian int64) then each tensor's raw bytes.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], dtype: np.dtype[Any]) -> None:
        self.shapes = tuple(tuple(s) for s in shapes)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._sizes = [int(np.prod(s)) * self.dtype.itemsize for s in self.shapes]
        self.nbytes = 8 + sum(self._sizes)

    def encode(self, seqs: np.ndarray, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """``[n, nbytes]`` uint8 rows for ``seqs`` ``[n]`` and ``arrays`` (``[n, *shape]``
        each, in the storage dtype)."""
        n = len(seqs)
        out = np.empty((n, self.nbytes), np.uint8)
        out[:, :8] = np.asarray(seqs, "<i8").reshape(n, 1).view(np.uint8)
        pos = 8
        for a, size in zip(arrays, self._sizes, strict=True):
            flat = np.ascontiguousarray(a, self.dtype).reshape(n, -1)
            out[:, pos : pos + size] = flat.view(np.uint8)
            pos += size
        return out

    def decode(self, values: Sequence[bytes]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(seqs [n], arrays)`` of ``values`` (each exactly :attr:`nbytes` long; check
        with :meth:`valid`), arrays in the storage dtype, ``[n, *shape]`` each."""
        n = len(values)
        raw = np.frombuffer(b"".join(values), np.uint8).reshape(n, self.nbytes)
        seqs = raw[:, :8].copy().view("<i8").reshape(n).astype(np.int64)
        arrays = []
        pos = 8
        for shape, size in zip(self.shapes, self._sizes, strict=True):
            part = raw[:, pos : pos + size].copy().view(self.dtype)
            arrays.append(part.reshape(n, *shape).astype(self.dtype.newbyteorder("=")))
            pos += size
        return seqs, arrays

    def valid(self, value: bytes) -> bool:
        """Whether ``value`` can be decoded (its length is the layout's)."""
        return len(value) == self.nbytes


def _options() -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
    opts.set_max_write_buffer_number(MAX_WRITE_BUFFERS)
    opts.set_max_open_files(MAX_OPEN_FILES)
    opts.set_compression_type(rocksdict.DBCompressionType.none())
    opts.set_keep_log_file_num(1)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(BLOCK_CACHE_BYTES))
    table.set_cache_index_and_filter_blocks(True)
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    return opts


def _destroy(db: Any, path: str) -> None:
    """Close ``db`` and delete its directory (the finalizer: must not reference the store)."""
    with contextlib.suppress(Exception):  # already closed, or failing: the files go anyway
        db.close()
    shutil.rmtree(path, ignore_errors=True)


class DiskStore:
    """stream id -> stored value (bytes of a :class:`RecordLayout`), in a private directory.

    ``parent``: the directory to create the store's own subdirectory in (``None``: the
    system's temporary directory). The subdirectory is created at construction and deleted
    by :meth:`close`; ``parent`` itself is never deleted. ``open_db``: opens the RocksDB
    database in a directory with the given options (``rocksdict.Rdict``; a test passes one
    whose writes fail, as a full disk's would).

    The store counts its entries itself (:func:`len`), checking each written key against
    the store's bloom filters (a key that is not there costs no I/O), so the count is exact
    and free to read. Every failing RocksDB call raises :class:`StoreError`.
    """

    def __init__(
        self,
        parent: str | None = None,
        *,
        open_db: Callable[[str, rocksdict.Options], Any] = rocksdict.Rdict,
    ) -> None:
        if parent is not None:
            os.makedirs(parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="lstm-stream-states-", dir=parent)
        try:
            # Any: the stubs' key types are narrower than the calls below (lists of bytes).
            self._db: Any = open_db(self.path, _options())
            # A property at run time, though the type stubs declare a method.
            write: Any = rocksdict.WriteOptions()
            write.disable_wal = True
            self._db.set_write_options(write)
        except Exception as exc:
            shutil.rmtree(self.path, ignore_errors=True)
            raise StoreError(f"cannot open the state store in {self.path}: {exc}") from exc
        self._count = 0
        self._finalizer = weakref.finalize(self, _destroy, self._db, self.path)

    def __len__(self) -> int:
        return self._count

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _existing(self, keys: Sequence[bytes]) -> int:
        """How many of ``keys`` are stored (a bloom-filter check first, a read only for the
        keys that may be there)."""
        db = self._db
        maybe = [k for k in keys if db.key_may_exist(k)]
        if not maybe:
            return 0
        return sum(v is not None for v in db.get(maybe))

    def put_many(self, keys: Sequence[str], values: np.ndarray) -> None:
        """Store ``values[i]`` (a row of a ``[n, nbytes]`` uint8 array) under ``keys[i]``,
        replacing any stored value, in one atomic write. Raises StoreError (then nothing of
        this call is stored)."""
        encoded = [k.encode() for k in keys]
        try:
            existing = self._existing(encoded)
            batch = rocksdict.WriteBatch(raw_mode=True)
            put = batch.put
            for k, row in zip(encoded, values, strict=True):
                put(k, row.tobytes())
            self._db.write(batch)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"writing {len(keys)} states to {self.path} failed: {exc}") from exc
        self._count += len(keys) - existing

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The stored values of ``keys`` (``None`` for a key not stored). Raises StoreError."""
        if not keys:
            return []
        try:
            return list(self._db.get([k.encode() for k in keys]))
        except Exception as exc:
            raise StoreError(f"reading {len(keys)} states from {self.path} failed: {exc}") from exc

    def pop_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """:meth:`get_many`, deleting the keys found. Raises StoreError (then nothing was
        deleted)."""
        values = self.get_many(keys)
        found = [k for k, v in zip(keys, values, strict=True) if v is not None]
        if found:
            self._delete(found)
            self._count -= len(found)
        return values

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete ``keys`` (absent ones are ignored); returns how many were stored. Raises
        StoreError."""
        encoded = [k.encode() for k in keys]
        try:
            existing = self._existing(encoded)
        except Exception as exc:
            raise StoreError(f"reading {len(keys)} states from {self.path} failed: {exc}") from exc
        if existing:
            self._delete(keys)
            self._count -= existing
        return existing

    def _delete(self, keys: Sequence[str]) -> None:
        try:
            batch = rocksdict.WriteBatch(raw_mode=True)
            for k in keys:
                batch.delete(k.encode())
            self._db.write(batch)
        except Exception as exc:
            raise StoreError(f"deleting {len(keys)} states from {self.path} failed: {exc}") from exc

    def __contains__(self, key: str) -> bool:
        encoded = key.encode()
        return bool(self._db.key_may_exist(encoded)) and self._db.get(encoded) is not None

    def __iter__(self) -> Iterator[str]:
        """The stored stream ids (in key order; for tests and diagnostics, not per step)."""
        for k in self._db.keys():  # noqa: SIM118 (an Rdict itself is not iterable)
            yield bytes(k).decode()

    def close(self) -> None:
        """Close the database and delete its directory. Idempotent; the store cannot be
        used afterwards."""
        self._finalizer()
        self._count = 0
