"""Serve the Fds test protocol as a mach service: ``fd_server.py NAME [MAX_FRAME_SIZE]``.

File descriptors, shared memory and bytes promotion, across processes
(tests/integration/test_fds.py). Prints ``READY <pid>``; exits when stdin closes.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nsxpc
from tests.helpers._child import ready, serve_until_parent_goes


@nsxpc.protocol
class Fds(Protocol):
    def write_to(self, fd: nsxpc.FileDescriptor, data: bytes, reply: Callable[[int], None]) -> None: ...
    def make_pipe(self, data: bytes, reply: Callable[[nsxpc.FileDescriptor], None]) -> None: ...
    def fd_count(self, reply: Callable[[int], None]) -> None: ...
    def take_int(self, value: int, reply: Callable[[int], None]) -> None: ...
    def take_fds(self, fds: list[nsxpc.FileDescriptor], reply: Callable[[int], None]) -> None: ...
    def take_str(self, value: str, reply: Callable[[int], None]) -> None: ...
    def take_region(self, region: nsxpc.SharedMemory, reply: Callable[[int], None]) -> None: ...
    def shm_swap(self, region: nsxpc.SharedMemory, reply: Callable[[bytes], None]) -> None: ...
    def shm_make(self, size: int, reply: Callable[[nsxpc.SharedMemory], None]) -> None: ...
    def shm_kept(self, count: int, reply: Callable[[bytes], None]) -> None: ...
    def echo_bytes(self, data: bytes, reply: Callable[[bytes], None]) -> None: ...
    def make_bytes(self, size: int, reply: Callable[[bytes], None]) -> None: ...


@nsxpc.protocol
class Mismatch(Protocol):
    """What a confused (or hostile) client believes: the same selectors, other types.
    The service's own slots decide what it admits."""

    def take_int(self, value: nsxpc.FileDescriptor, reply: Callable[[int], None]) -> None: ...
    def take_fds(self, fds: list, reply: Callable[[int], None]) -> None: ...  # type: ignore[type-arg]
    def take_str(self, value: bytes, reply: Callable[[int], None]) -> None: ...
    def take_region(self, region: bytes, reply: Callable[[int], None]) -> None: ...
    def fd_count(self, reply: Callable[[int], None]) -> None: ...


def pattern(size: int) -> bytes:
    """Deterministic bytes that differ at every offset modulo 251 (a prime)."""
    block = bytes(range(251))
    return (block * (size // 251 + 1))[:size]


_kept: list[nsxpc.SharedMemory] = []
_lock = threading.Lock()


class FdsImpl:
    def write_to(self, fd: nsxpc.FileDescriptor, data: bytes, reply: Any) -> None:
        with fd:
            written = os.write(fd.fileno(), data)
        reply(written)

    def make_pipe(self, data: bytes, reply: Any) -> None:
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        value = nsxpc.FileDescriptor(r)
        os.close(r)
        reply(value)
        value.close()

    def fd_count(self, reply: Any) -> None:
        reply(len(os.listdir("/proc/self/fd")))

    def take_int(self, value: int, reply: Any) -> None:
        reply(value)

    def take_fds(self, fds: list[nsxpc.FileDescriptor], reply: Any) -> None:
        for fd in fds:
            fd.close()
        reply(len(fds))

    def take_str(self, value: str, reply: Any) -> None:
        reply(len(value))

    def take_region(self, region: nsxpc.SharedMemory, reply: Any) -> None:
        with region:
            reply(region.size)

    def shm_swap(self, region: nsxpc.SharedMemory, reply: Any) -> None:
        with region:
            seen = bytes(region.buffer[:4])
            region.buffer[:4] = b"pong"
        reply(seen)

    def shm_make(self, size: int, reply: Any) -> None:
        region = nsxpc.SharedMemory(size)
        region.buffer[:4] = b"svc!"
        with _lock:
            _kept.append(region)
        reply(region)

    def shm_kept(self, count: int, reply: Any) -> None:
        with _lock:
            region = _kept[-1]
        reply(bytes(region.buffer[:count]))

    def echo_bytes(self, data: bytes, reply: Any) -> None:
        reply(data)

    def make_bytes(self, size: int, reply: Any) -> None:
        reply(pattern(size))


class Delegate:
    def __init__(self) -> None:
        self.iface = nsxpc.Interface(Fds)

    def should_accept_new_connection(self, listener: Any, conn: nsxpc.Connection) -> bool:
        conn.exported_interface = self.iface
        conn.exported_object = FdsImpl()
        conn.resume()
        return True


def main() -> None:
    name = sys.argv[1]
    limits = nsxpc.Limits()
    if len(sys.argv) > 2:
        limits = nsxpc.Limits(max_frame_size=int(sys.argv[2]))
    listener = nsxpc.Listener(mach_service_name=name, limits=limits)
    listener.delegate = Delegate()
    listener.resume()
    ready()
    serve_until_parent_goes()


if __name__ == "__main__":
    main()
