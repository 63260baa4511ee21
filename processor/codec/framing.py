"""Framing a file of concatenated msgpack records: :func:`iter_framed` splits it into
:class:`Frame` objects (no I/O beyond reading the file object handed in, and seeking it
forward when it is seekable).

Records up to the size limit are split by msgpack's own parser. A record found to be larger
is walked header by header instead (:class:`_Walker`): every msgpack header states how
long its payload is (str, bin, ext) or how many elements follow (array, map), so the walk
passes over payloads without holding them -- seeking on a seekable file, reading and
discarding on a pipe -- and finds the exact end of the record whatever its size. Only bytes
that are not a valid header, nesting deeper than the walk tracks, or the end of the input
inside a record stop the framing.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

import msgpack

from processor.codec.reasons import OVERSIZE, TRUNCATED, UNDECODABLE

__all__ = ["MAX_WALK_DEPTH", "Frame", "iter_framed"]

#: Containers that may be open at once while walking an oversize record (nested arrays and
#: maps that still have elements to come; a container that is the last element of its
#: parent does not count). Bounds the walk's memory; deeper records end the framing.
MAX_WALK_DEPTH: Final = 1024


@dataclass(frozen=True, slots=True)
class Frame:
    """One top-level object of a file of concatenated msgpack records.

    ``offset``: byte offset of the object's first byte in the file. ``raw``: the object's
    original bytes (feed them to :meth:`~processor.codec.RecordDecoder.decode`, or verbatim
    to a dead-letter file), or ``None`` when they were not kept. ``error``: ``None`` for a
    complete object, else ``"<reason>"`` or ``"<reason>: <detail>"`` with reason
    ``oversize``, ``truncated`` or ``undecodable`` (codes of
    :data:`~processor.codec.reasons.REASONS`). ``fatal``: framing cannot go on after this
    frame, so the input after it was not read (it is then the last frame); a ``truncated``
    frame is last too, but not fatal: it ends at the end of the input.
    """

    offset: int
    raw: bytes | None
    error: str | None = None
    fatal: bool = False

    @property
    def reason(self) -> str | None:
        """The reason code of :attr:`error` (without the detail), or ``None``."""
        return None if self.error is None else self.error.partition(":")[0]


def iter_framed(fp: BinaryIO, max_record_bytes: int, chunk_size: int = 1 << 20) -> Iterator[Frame]:
    """Split a binary stream of concatenated msgpack objects into frames, in file order.

    Called by ``replay`` and by tools reading record files. Only the structure is checked
    here (so a frame may still be rejected by the decoder: an int is a valid frame whose
    decoding gives ``not_a_map``; invalid UTF-8 in a string is a valid frame too). ``fp`` is
    read in ``chunk_size`` pieces from its current position (and, when ``fp.seekable()``,
    sought forward over the payloads of oversize objects); offsets count from that position.
    Memory stays below about ``2 * (max_record_bytes + chunk_size)`` whatever the file holds.
    Raises ``ValueError`` for a limit below 1, and passes on the errors of ``fp.read``.

    Exactly one frame per top-level object:

    * a complete object of at most ``max_record_bytes``: ``Frame(offset, raw)``;
    * a complete object larger than that, of any size:
      ``Frame(offset, None, "oversize: record is <n> bytes, limit is <max_record_bytes>")``;
      its bytes are passed over, not kept, and framing goes on after it. Array and map
      headers are trusted: a corrupt header declaring billions of elements swallows the rest
      of the input as its elements (which then ends in ``truncated``), memory still bounded;
    * a complete object of at most ``max_record_bytes`` nesting deeper than msgpack's parser
      goes: ``Frame(offset, raw, "undecodable: <detail>")`` (``raw`` ``None`` if its end
      lay beyond the bytes buffered when that showed); framing goes on after it;
    * a partial object at the end of the input: ``Frame(offset, raw, "truncated")``, last;
      ``raw`` is the partial bytes, or ``None`` when they were not kept (``max_record_bytes``
      or more of them);
    * bytes that are not a msgpack header where one must be (e.g. the reserved byte 0xc1,
      also inside an oversize object), or an object walked by its headers with more than
      :data:`MAX_WALK_DEPTH` arrays and maps open at once:
      ``Frame(offset, None, "undecodable: <detail>", fatal=True)``, last, since no later
      object boundary can be found.
    """
    if max_record_bytes < 1:
        raise ValueError(f"max_record_bytes must be >= 1, got {max_record_bytes}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    # skip() parses without building anything and resumes where the last feed ended; only a
    # str/bin/ext payload must be contiguous in its buffer. An object still incomplete after
    # max_record_bytes is handed to the walker before the next feed, so the unpacker never
    # holds more than max_record_bytes + chunk_size unparsed bytes (no BufferFull).
    unpacker = _unpacker(max_record_bytes, chunk_size)
    base = 0  # offset of the unpacker's first byte (its tell() counts from there)
    buf = bytearray()  # file bytes from buf_start on, kept to hand out raw frames
    buf_start = 0
    start = 0  # offset of the object being parsed
    fed = 0  # offset just past the bytes fed to the unpacker
    eof = False
    while True:
        keep = 0  # when walking: bytes of the object worth keeping for its frame
        try:
            unpacker.skip()
        except msgpack.OutOfData:
            if eof:
                if fed > start:
                    yield Frame(start, bytes(buf[start - buf_start :]), TRUNCATED)
                return
            if fed - start < max_record_bytes:
                chunk = fp.read(chunk_size)
                if not chunk:
                    eof = True
                    continue
                unpacker.feed(chunk)
                buf += chunk
                fed += len(chunk)
                continue
            problem = None  # incomplete after max_record_bytes: oversize (or truncated)
            fatal = False
        except msgpack.StackError:
            # Deeper than msgpack's parser goes, which says nothing about where the object
            # ends: the walker finds that out (and the decoder then rejects the object).
            problem = f"{UNDECODABLE}: nested deeper than msgpack's parser allows"
            fatal = False
            keep = max_record_bytes
        except (ValueError, msgpack.UnpackException) as exc:  # FormatError: not msgpack
            # No boundary after this; the walker finds the offending byte for the detail.
            problem = f"{UNDECODABLE}: {str(exc) or 'invalid msgpack data'}"
            fatal = True
        else:
            end = base + unpacker.tell()
            if end - start > max_record_bytes:
                yield Frame(start, None, _oversize(end - start, max_record_bytes))
            else:
                yield Frame(start, bytes(buf[start - buf_start : end - buf_start]))
            del buf[: end - buf_start]
            buf_start = start = end
            continue
        # Walk the object to its end by its headers, then resume after it with a new
        # unpacker (the old one goes first: its parse stack alone is ~46 kB).
        del unpacker
        walker = _Walker(fp, bytes(buf[start - buf_start :]), start, chunk_size, keep)
        del buf[:]
        error = walker.skip_object()
        if error is not None or fatal:
            yield Frame(start, None, error or problem, fatal=error != TRUNCATED)
            return
        end = walker.offset
        if end - start > max_record_bytes:
            yield Frame(start, None, _oversize(end - start, max_record_bytes))
        else:  # only when too deep for msgpack: kept whole
            yield Frame(start, walker.kept(), problem)
        rest = walker.rest()
        unpacker = _unpacker(max_record_bytes, chunk_size)
        unpacker.feed(rest)
        buf = bytearray(rest)
        base = buf_start = start = end
        fed = end + len(rest)


def _unpacker(max_record_bytes: int, chunk_size: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=True, max_buffer_size=max_record_bytes + chunk_size + 64)


def _oversize(size: int, limit: int) -> str:
    return f"{OVERSIZE}: record is {size} bytes, limit is {limit}"


# -- walking an oversize object -------------------------------------------------------------

# For each first byte: the whole object's size when that byte alone tells it (ints, nil,
# bools, floats, fixstr, fixext), else 0.
_FIXED: Final[tuple[int, ...]] = tuple(
    1
    if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3)
    else 1 + (b & 0x1F)
    if 0xA0 <= b <= 0xBF
    else {
        0xCA: 5,  # float 32
        0xCB: 9,  # float 64
        0xCC: 2,  # uint 8, 16, 32, 64
        0xCD: 3,
        0xCE: 5,
        0xCF: 9,
        0xD0: 2,  # int 8, 16, 32, 64
        0xD1: 3,
        0xD2: 5,
        0xD3: 9,
        0xD4: 3,  # fixext 1, 2, 4, 8, 16: type byte and data
        0xD5: 4,
        0xD6: 6,
        0xD7: 10,
        0xD8: 18,
    }.get(b, 0)
    for b in range(256)
)
# For each such size, the first bytes of all scalars of that size.
_SAME_SIZE: Final[dict[int, bytes]] = {
    n: bytes(b for b in range(256) if _FIXED[b] == n) for n in set(_FIXED) - {0}
}
# Elements left in a container from which a run of scalars is worth looking for.
_RUN_MIN: Final = 16
_PAYLOAD, _EXT, _ARRAY, _MAP = range(4)
# Headers with a big-endian length or count after the first byte: (kind, its width).
_SIZED: Final[dict[int, tuple[int, int]]] = {
    0xC4: (_PAYLOAD, 1),  # bin 8, 16, 32
    0xC5: (_PAYLOAD, 2),
    0xC6: (_PAYLOAD, 4),
    0xC7: (_EXT, 1),  # ext 8, 16, 32 (a type byte follows the length)
    0xC8: (_EXT, 2),
    0xC9: (_EXT, 4),
    0xD9: (_PAYLOAD, 1),  # str 8, 16, 32
    0xDA: (_PAYLOAD, 2),
    0xDB: (_PAYLOAD, 4),
    0xDC: (_ARRAY, 2),  # array 16, 32
    0xDD: (_ARRAY, 4),
    0xDE: (_MAP, 2),  # map 16, 32
    0xDF: (_MAP, 4),
}


class _Truncated(Exception):
    """The input ended inside the object being walked."""


class _Walker:
    """Walks one msgpack object from its first byte to its end, reading only headers.

    ``data``: the object's bytes read so far (from its first byte, at file offset
    ``offset``); the rest comes from ``fp``. Holds at most ``len(data)`` or ``chunk_size``
    plus a header's bytes, the remaining element counts of the open containers (at most
    :data:`MAX_WALK_DEPTH`) and, with ``keep`` > 0, the object's bytes while there are at
    most ``keep`` of them (payloads are then read, not sought over).
    """

    __slots__ = ("_base", "_buf", "_chunk_size", "_fp", "_keep", "_kept", "_pos", "_seekable")

    def __init__(
        self, fp: BinaryIO, data: bytes, offset: int, chunk_size: int, keep: int = 0
    ) -> None:
        self._fp = fp
        self._buf = data
        self._pos = 0
        self._base = offset  # file offset of _buf[0]
        self._chunk_size = chunk_size
        self._keep = keep
        # The object's bytes before _buf[0], while kept (None: not kept).
        self._kept: bytearray | None = bytearray() if keep > 0 else None
        try:
            self._seekable = bool(fp.seekable())
        except (AttributeError, OSError, ValueError):  # a minimal reader, a closed file
            self._seekable = False

    @property
    def offset(self) -> int:
        """File offset of the walk's position: the object's end once walked."""
        return self._base + self._pos

    def kept(self) -> bytes | None:
        """The walked object's bytes if it had at most ``keep`` of them, else ``None``."""
        if self._kept is None or len(self._kept) + self._pos > self._keep:
            return None
        return bytes(self._kept + self._buf[: self._pos])

    def rest(self) -> bytes:
        """The bytes read beyond the walked object (the start of what follows it)."""
        return self._buf[self._pos :]

    def skip_object(self) -> str | None:
        """Walk the object; ``None`` when it ended (see :attr:`offset`, :meth:`rest`), else
        the frame error: ``"truncated"`` or ``"undecodable: <detail>"``."""
        buf, pos = self._buf, self._pos
        fixed, sized, same = _FIXED, _SIZED, _SAME_SIZE
        stack: list[int] = []  # elements still to come in each enclosing open container
        remaining = 1  # elements still to come at the current level
        try:
            while True:
                if not remaining:
                    if not stack:
                        break
                    remaining = stack.pop()
                    continue
                remaining -= 1
                if pos >= len(buf):
                    buf, pos = self._fill(buf, pos, 1)
                first = buf[pos]
                n = fixed[first]
                if n:  # the common case: a scalar (pos may now pass the buffered bytes)
                    pos += n
                    if remaining >= _RUN_MIN:
                        # Pass the run of buffered scalars of the same size that follows (a
                        # tensor as an array of numbers) at C speed: element i starts at
                        # pos + i * n as long as all before it are scalars of size n.
                        k = min(remaining, (len(buf) - pos) // n)
                        if k > 0:
                            run = k - len(buf[pos : pos + n * k : n].lstrip(same[n]))
                            pos += n * run
                            remaining -= run
                    continue
                if 0x80 <= first <= 0x9F:  # fixmap, fixarray
                    pos += 1
                    count = (first & 0x0F) * (2 if first < 0x90 else 1)
                else:
                    kind, width = sized.get(first, (-1, 0))
                    if kind < 0:
                        return (
                            f"{UNDECODABLE}: byte 0x{first:02x} at offset {self._base + pos} "
                            "is not a msgpack header"
                        )
                    if pos + 1 + width > len(buf):
                        buf, pos = self._fill(buf, pos, 1 + width)
                    size = int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
                    pos += 1 + width
                    if kind == _PAYLOAD:
                        pos += size
                        continue
                    if kind == _EXT:
                        pos += 1 + size
                        continue
                    count = size * (2 if kind == _MAP else 1)
                if count:
                    if remaining:  # the parent has more to come: remember it
                        if len(stack) >= MAX_WALK_DEPTH:
                            return (
                                f"{UNDECODABLE}: more than {MAX_WALK_DEPTH} nested arrays or "
                                f"maps open at offset {self._base + pos}"
                            )
                        stack.append(remaining)
                    remaining = count
            if pos > len(buf):  # the last payload ends beyond the buffered bytes
                buf, pos = self._fill(buf, pos, 0)
        except _Truncated:
            return TRUNCATED
        self._buf, self._pos = buf, pos
        return None

    def _fill(self, buf: bytes, pos: int, need: int) -> tuple[bytes, int]:
        """Return ``(buf, pos)`` moved on so that ``need`` bytes from ``pos`` are buffered
        (``pos`` beyond ``buf`` first passes over the missing bytes in the file); raise
        :class:`_Truncated` when the input ends before."""
        if pos > len(buf):
            self._keep_bytes(buf)
            self._pass(pos - len(buf))
            buf = b""
        else:
            self._keep_bytes(buf[:pos])
            buf = buf[pos:]
        self._base += pos
        while len(buf) < need:
            chunk = self._fp.read(self._chunk_size)
            if not chunk:
                raise _Truncated
            buf += chunk
        return buf, 0

    def _keep_bytes(self, data: bytes) -> None:
        """Add ``data`` to the kept bytes, or stop keeping beyond ``keep`` bytes."""
        if self._kept is not None:
            if len(self._kept) + len(data) > self._keep:
                self._kept = None
            else:
                self._kept += data

    def _pass(self, n: int) -> None:
        """Move ``n`` >= 1 bytes on in the file (kept while keeping, else not read when the
        file can seek), or raise :class:`_Truncated` when fewer remain."""
        if self._seekable and self._kept is None:
            try:
                # Seek to the last of the n bytes and read it: seeking alone cannot tell
                # whether the file is that long.
                self._fp.seek(n - 1, io.SEEK_CUR)
            except (OSError, ValueError):  # seekable() claimed too much: read instead
                self._seekable = False
            else:
                if not self._fp.read(1):
                    raise _Truncated
                return
        while n:
            got = self._fp.read(min(n, self._chunk_size))
            if not got:
                raise _Truncated
            self._keep_bytes(got)
            n -= len(got)
