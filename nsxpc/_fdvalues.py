"""L2 values that carry a file descriptor: FileDescriptor and SharedMemory, and the
memfd helpers behind the shared-memory promotion of large ``bytes``.

They travel as extension 9 (an fd) and 10 (a memfd region); the fd itself rides
the frame's SCM_RIGHTS ancillary data. docs/FDS.md is the user's reference.

Ownership invariants (every fd is closed exactly once, whatever happens):
- A value owns its fd. ``FileDescriptor(fd)`` and ``SharedMemory(...)`` make
  their own fd (a CLOEXEC dup, a CLOEXEC memfd); the caller keeps its own.
- Encoding a value dups its fd into the message (EncodeContext.fds); the message
  owns those copies and the runtime closes them once the frame is written, or
  dropped unsent. So a value closed right after a call, before a queued message
  is flushed, cannot make the message carry a stale or reused fd number.
- Decoding adopts a received fd without a dup. An adopted value is recorded in
  the DecodeContext; the core grants ownership (``claimed_fds``) only when the
  message is delivered. If it is refused, the values give their fd up
  (:func:`forget`) and the core closes every fd of the frame.
- The receiver checks a region before mapping it: a regular memory file, sealed
  against shrinking and growing (so the sender cannot truncate it under our
  mapping, which would SIGBUS us), whose size is the size the message states.

Nothing here imports socket, threading or time: these are values, usable from
the sans-I/O layers (os, fcntl and mmap calls only touch the fds they own).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
from types import TracebackType
from typing import Protocol, Self

from ._errors import DecodingError, EncodingError

__all__ = [
    "NEVER",
    "SCM_MAX_FD",
    "FileDescriptor",
    "MessageFds",
    "SharedMemory",
    "check_region",
    "close_fds",
    "forget",
    "memfd_with",
    "read_region",
]

#: The kernel refuses more fds than this in one sendmsg (EINVAL): unix(7), SCM_MAX_FD.
SCM_MAX_FD = 253
#: A promotion threshold that no bytes value reaches (promotion disabled).
NEVER = 1 << 63

_MEMFD_FLAGS = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
_SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
# Promoted bytes are immutable once written: the receiver may rely on the content.
_BYTES_SEALS = _SIZE_SEALS | fcntl.F_SEAL_WRITE
# One read(2)/write(2) moves at most this much on Linux.
_IO_MAX = 0x7FFFF000


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def close_fds(fds: list[int] | tuple[int, ...]) -> None:
    """Close fds a message owns (after the frame is written, or when it is dropped)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class MessageFds(list[int]):
    """The fds one outgoing message owns (duplicates made while encoding it).

    The transport closes and empties it once the frame is written (or writing
    failed). A message dropped unsent (connection invalidated, call timed out
    in the outbox, encoding failed halfway) closes them when the list is
    garbage-collected, which in CPython is the moment the last reference goes.
    """

    __slots__ = ()

    def close(self) -> None:
        fds = list(self)
        self.clear()
        close_fds(fds)

    def __del__(self) -> None:
        if self:
            try:
                self.close()
            except Exception:
                pass


def _fd_kind(fd: int) -> str:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "?"
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISFIFO, "pipe"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "other"


class _Closable:
    """``with value:`` closes it on the way out."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FileDescriptor(_Closable):
    """A file descriptor that travels in a message (``xpc_fd_create``; ``NSFileHandle``
    over NSXPC).

    ``FileDescriptor(fd)`` duplicates ``fd`` (close-on-exec): the caller keeps
    its own and may close it at once. Sending the value sends another
    duplicate by ``SCM_RIGHTS``, so the sender's value stays open. The receiver
    gets a new ``FileDescriptor`` that owns a new fd (close-on-exec): use it
    with :meth:`fileno`, take it with :meth:`detach`, or :meth:`close` it. A
    value neither detached nor closed closes its fd when garbage-collected.
    Two values are equal only if they are the same object (as ``xpc_equal``
    on fds).

    A slot admits it only if its allowlist holds ``nsxpc.FileDescriptor``
    (annotate the parameter ``nsxpc.FileDescriptor``, or ``Any``).

    Args:
        fd: an open file descriptor, or an object with ``fileno()``.

    Raises:
        TypeError: ``fd`` is not an int or an object with ``fileno()``.
        ValueError: ``fd`` is not an open file descriptor.
    """

    __slots__ = ("__weakref__", "_fd")

    def __init__(self, fd: int | _HasFileno) -> None:
        self._fd = -1
        if not isinstance(fd, int) or isinstance(fd, bool):
            fileno = getattr(fd, "fileno", None)
            if fileno is None:
                raise TypeError(f"FileDescriptor needs an int or an object with fileno(), not {type(fd).__name__}")
            fd = fileno()
            if not isinstance(fd, int) or isinstance(fd, bool):
                raise TypeError("fileno() did not return an int")
        if fd < 0:
            raise ValueError(f"{fd} is not a file descriptor")
        try:
            self._fd = os.dup(fd)  # F_DUPFD_CLOEXEC: a child process never inherits it
        except OSError as exc:
            raise ValueError(f"fd {fd} is not an open file descriptor: {exc.strerror}") from exc

    @classmethod
    def _adopt(cls, fd: int) -> FileDescriptor:
        """A value owning ``fd`` as received (already a new, CLOEXEC fd: no dup)."""
        self = object.__new__(cls)
        self._fd = fd
        return self

    @property
    def closed(self) -> bool:
        """True once closed or detached."""
        return self._fd < 0

    def fileno(self) -> int:
        """The fd this value owns (it stays owned: do not close it yourself).

        Raises:
            ValueError: the value is closed or detached.
        """
        if self._fd < 0:
            raise ValueError("I/O operation on a closed nsxpc.FileDescriptor")
        return self._fd

    def detach(self) -> int:
        """Give up ownership: return the fd, which the caller must close; the value is closed.

        Raises:
            ValueError: the value is already closed or detached.
        """
        fd = self.fileno()
        self._fd = -1
        return fd

    def close(self) -> None:
        """Close the fd (idempotent)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        # An fd received in a message and never used is not leaked.
        self.close()

    def __repr__(self) -> str:
        if self._fd < 0:
            return "<nsxpc.FileDescriptor closed>"
        return f"<nsxpc.FileDescriptor fd={self._fd} ({_fd_kind(self._fd)})>"


class SharedMemory(_Closable):
    """A shared-memory region that travels by fd and is mapped on both sides
    (``xpc_shmem_create`` / ``xpc_shmem_map``).

    The region is an anonymous memory file (``memfd_create``), sealed against
    shrinking and growing, and mapped shared: ``buffer`` is a writable
    memoryview, and what one process writes, every process that received the
    region reads. Sending it sends a duplicate of its fd; the receiver checks
    the seals and the size, then maps it. ``close()`` unmaps the region and
    closes the fd (views of ``buffer`` still alive keep the mapping until they
    are released); a region neither closed nor referenced is closed when
    garbage-collected. Equal only to itself.

    A slot admits it only if its allowlist holds ``nsxpc.SharedMemory``.

    Args:
        size: the region's size in bytes, fixed for its life.

    Raises:
        TypeError: ``size`` is not an int.
        ValueError: ``size`` is negative.
        OSError: the kernel could not create or map the region (ENOMEM, EMFILE).
    """

    __slots__ = ("__weakref__", "_fd", "_map", "_size", "_view")

    def __init__(self, size: int) -> None:
        self._fd = -1
        self._size = 0
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be an int, not {type(size).__name__}")
        if size < 0:
            raise ValueError(f"size must not be negative, not {size}")
        fd = os.memfd_create("nsxpc-shm", _MEMFD_FLAGS)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SIZE_SEALS)
            self._attach(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> SharedMemory:
        """A new region holding a copy of ``data`` (its size is ``len(data)`` bytes).

        Raises:
            TypeError: ``data`` is not a bytes-like object.
            OSError: the kernel could not create the region.
        """
        try:
            view = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"from_bytes needs a bytes-like object, not {type(data).__name__}") from None
        region = cls(view.nbytes)
        if view.nbytes:
            region.buffer[:] = view
        return region

    @classmethod
    def _adopt(cls, fd: int, size: int) -> SharedMemory:
        """Map a received region whose fd (owned from now on) :func:`check_region` checked.

        Raises:
            DecodingError: it cannot be mapped.
        """
        self = object.__new__(cls)
        self._fd, self._size, self._map, self._view = -1, 0, None, None
        try:
            self._attach(fd, size)
        except (OSError, ValueError) as exc:
            raise DecodingError(f"the shared memory region cannot be mapped: {exc}") from None
        return self

    def _attach(self, fd: int, size: int) -> None:
        if size:
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._view = memoryview(self._map)
        else:
            self._view = memoryview(bytearray())  # mmap cannot map 0 bytes; nothing to share
        self._fd = fd
        self._size = size

    @property
    def buffer(self) -> memoryview:
        """The region's bytes: a writable memoryview shared with every holder of the region.

        Raises:
            ValueError: the region is closed.
        """
        if self._view is None:
            raise ValueError("the nsxpc.SharedMemory region is closed")
        return self._view

    @property
    def size(self) -> int:
        """The region's size in bytes."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _fileno(self) -> int:
        if self._fd < 0:
            raise EncodingError("the nsxpc.SharedMemory region is closed and cannot be sent")
        return self._fd

    def close(self) -> None:
        """Unmap the region and close its fd (idempotent)."""
        view, self._view = self._view, None
        mapping, self._map = self._map, None
        fd, self._fd = self._fd, -1
        if view is not None:
            try:
                view.release()
            except BufferError:
                pass  # something holds a buffer export of it: as below
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass  # views of buffer are alive: the mapping goes when the last one does
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _forget(self) -> None:
        """Unmap and give up the fd without closing it (a refused message's fds are
        closed by the core, once)."""
        self._fd = -1
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except AttributeError:
            pass  # __init__ failed before the slots were set

    def __repr__(self) -> str:
        if self._fd < 0:
            return "<nsxpc.SharedMemory closed>"
        return f"<nsxpc.SharedMemory {self._size} bytes fd={self._fd}>"


def forget(value: object) -> None:
    """Make a value built while decoding a refused message give up its fd unclosed."""
    if type(value) is FileDescriptor:
        value._fd = -1
    elif type(value) is SharedMemory:
        value._forget()


# --------------------------------------------------------------------------- promotion


def memfd_with(data: bytes) -> int:
    """A sealed memfd holding ``data``: how a large ``bytes`` value travels.

    One copy, done by the kernel (write(2) into the memory file), instead of
    the several a socket needs (msgpack, framing, both socket buffers).

    Raises:
        EncodingError: the kernel could not create or fill it.
    """
    try:
        fd = os.memfd_create("nsxpc-bytes", _MEMFD_FLAGS)
    except OSError as exc:
        raise EncodingError(f"cannot create shared memory for a {len(data)}-byte value: {exc.strerror}") from exc
    try:
        view = memoryview(data)
        done, size = 0, len(data)
        while done < size:
            done += os.write(fd, view[done : done + _IO_MAX])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _BYTES_SEALS)
    except OSError as exc:
        os.close(fd)
        raise EncodingError(f"cannot fill shared memory for a {len(data)}-byte value: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_region(fd: int, size: int) -> None:
    """Check a received region before it is mapped or read.

    Raises:
        DecodingError: not a memory file, not sealed against resizing, or not
            of the size the message states.
    """
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise DecodingError(f"the shared memory fd cannot be examined: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DecodingError(f"the shared memory fd is a {_fd_kind(fd)}, not a memory file")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0  # a file that cannot be sealed (not a memfd)
    if seals & _SIZE_SEALS != _SIZE_SEALS:
        raise DecodingError(
            "the shared memory region is not sealed against resizing (F_SEAL_SHRINK and F_SEAL_GROW): refused"
        )
    if st.st_size != size:
        raise DecodingError(f"the shared memory region is {st.st_size} bytes, but the message says {size}")


def read_region(fd: int, size: int) -> bytes:
    """The content of a checked region as ``bytes`` (one copy, by pread(2)).

    Raises:
        DecodingError: the region could not be read whole.
    """
    try:
        data = os.pread(fd, size, 0)
        if len(data) < size:  # only past 2 GiB (one read's maximum)
            parts = [data]
            done = len(data)
            while done < size:
                more = os.pread(fd, size - done, done)
                if not more:
                    raise DecodingError(f"the shared memory region ended after {done} of {size} bytes")
                parts.append(more)
                done += len(more)
            data = b"".join(parts)
    except OSError as exc:
        raise DecodingError(f"the shared memory region cannot be read: {exc.strerror}") from None
    return data
