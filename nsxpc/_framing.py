"""L1: bytes <-> frames. Sans-I/O: no sockets, no threads, no clocks.

A frame is an 8-byte header followed by a body::

    +----------------+----------------+----------------+---------------------+
    | length: u32 BE | fd count: u16  | flags: u16 = 0 | body (length bytes) |
    +----------------+----------------+----------------+---------------------+

The file descriptors of a frame travel as SCM_RIGHTS ancillary data attached
to the frame's bytes; the kernel hands them to the receiver no later than the
frame's first byte, so by the time a frame is complete its fds are queued.

Invariants:
- A header whose length exceeds ``max_frame_size``, whose fd count exceeds
  ``max_fds``, or whose flags are not zero is rejected *before* any body byte
  is buffered (a 4 GiB declared length costs nothing).
- After a :class:`~nsxpc._errors.ProtocolError` the decoder is dead: a byte
  stream cannot resynchronise, so the connection must be invalidated.
- Feeding is split-agnostic: the same bytes fed in any chunking yield the
  same frames (a partial frame stays buffered until complete).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from operator import itemgetter

from ._errors import ProtocolError

__all__ = ["DEFAULT_MAX_FDS", "DEFAULT_MAX_FRAME_SIZE", "HEADER", "Frame", "FrameDecoder", "encode_frame"]

HEADER = struct.Struct(">IHH")
#: Default cap on one frame's body. Large ``bytes`` travel through shared memory.
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024
#: Default cap on file descriptors per frame (D-Bus's 16, fdo#82820).
DEFAULT_MAX_FDS = 16


class Frame(tuple[bytes, tuple[int, ...]]):
    """One complete frame: its msgpack body and the fds that came with it, as the pair
    ``(body, fds)``.

    A tuple, not a slotted record (nor a ``NamedTuple``, whose class costs a quarter of
    a millisecond of every ``import nsxpc``): one is made per message on both sides,
    and :class:`FrameDecoder` builds it with ``tuple.__new__``, without a Python call.
    """

    __slots__ = ()

    def __new__(cls, body: bytes, fds: tuple[int, ...] = ()) -> Frame:
        return tuple.__new__(cls, (body, fds))

    body = property(itemgetter(0))
    fds = property(itemgetter(1))

    def __repr__(self) -> str:
        return f"Frame({len(self.body)} bytes, fds={self.fds})"


_new_frame = tuple.__new__


def encode_frame(body: bytes, nfds: int = 0) -> bytes:
    """Prefix ``body`` with its header. The caller attaches ``nfds`` fds when sending."""
    return HEADER.pack(len(body), nfds, 0) + body


class FrameDecoder:
    """Splits a byte stream (and the fds received with it) into frames."""

    __slots__ = ("_dead", "_fds", "_pos", "buf", "max_fds", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, max_fds: int = DEFAULT_MAX_FDS) -> None:
        self.max_frame_size = max_frame_size
        self.max_fds = max_fds
        #: Bytes received and not yet consumed (read-only outside this class; empty
        #: when every frame has been taken, which the core checks before decoding).
        self.buf = bytearray()
        self._pos = 0  # start of the first unconsumed byte in buf
        self._fds: deque[int] = deque()
        self._dead = False

    def feed(self, data: bytes | memoryview, fds: Sequence[int] = ()) -> None:
        """Append received bytes and the fds that arrived with them."""
        if self._dead:
            raise ProtocolError("frame decoder used after a framing error")
        self.buf += data
        if fds:
            self._fds.extend(fds)

    def take_fds(self) -> list[int]:
        """Remove and return every fd still queued (to close them at teardown)."""
        fds = list(self._fds)
        self._fds.clear()
        return fds

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self.buf) - self._pos

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed.

        The header is checked as soon as its 8 bytes are here, before any of the
        body is waited for.

        Raises:
            ProtocolError: the stream is corrupt (oversized frame, too many fds,
                unknown flags, or fds missing); the decoder is dead afterwards.
        """
        if self._dead:
            raise ProtocolError("frame decoder used after a framing error")
        buf, pos = self.buf, self._pos
        size = len(buf)
        if size - pos < 8:
            self._compact()
            return None
        length, nfds, flags = HEADER.unpack_from(buf, pos)
        if flags or length > self.max_frame_size or nfds > self.max_fds:
            self._bad_header(length, nfds, flags)
        end = pos + 8 + length
        if size < end:
            self._compact()
            return None
        body = bytes(buf[pos + 8 : end])
        if end == size:
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        if nfds:
            if len(self._fds) < nfds:
                self._fail(f"frame announces {nfds} file descriptors but {len(self._fds)} arrived")
            return _new_frame(Frame, (body, tuple(self._fds.popleft() for _ in range(nfds))))
        return _new_frame(Frame, (body, ()))

    def _compact(self) -> None:
        # Drop consumed bytes only when waiting for more: one memmove per read, not per frame.
        if self._pos:
            del self.buf[: self._pos]
            self._pos = 0

    def _bad_header(self, length: int, nfds: int, flags: int) -> None:
        if flags:
            self._fail(f"frame header has unknown flags {flags:#06x}")
        if length > self.max_frame_size:
            self._fail(f"frame of {length} bytes exceeds the {self.max_frame_size}-byte cap")
        self._fail(f"frame carries {nfds} file descriptors, more than the cap of {self.max_fds}")

    def _fail(self, reason: str) -> None:
        self._dead = True
        raise ProtocolError(f"corrupt framing: {reason}")
