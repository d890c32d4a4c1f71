"""File descriptors, shared memory and the promotion of large bytes (API.md section 8,
docs/FDS.md), across real processes: the service is tests/helpers/fd_server.py.

Leak checks count the service's open fds (``/proc/self/fd``) through a call, before
and after; calls on one connection are handled in order, so a count asked for after
a refused message sees everything that message left behind.
"""

from __future__ import annotations

import array
import fcntl
import gc
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import pytest

import nsxpc
from tests.helpers.fd_server import Fds, Mismatch, pattern
from tests.integration.conftest import TIMEOUT, Child, Connections, RawClient, frame, pack, sync_proxy

MiB = 1024 * 1024
#: The leak checks wait this long for a torn-down connection's fds to be closed.
SETTLE = 10.0


@pytest.fixture
def fd_server(spawn: Callable[..., Child], service_name: str) -> Child:
    child = spawn("fd_server.py", service_name)
    child.name = service_name  # type: ignore[attr-defined]
    return child


def connect(
    connections: Connections, name: str, protocol: type = Fds, limits: nsxpc.Limits | None = None
) -> nsxpc.Connection:
    extra: dict[str, Any] = {} if limits is None else {"limits": limits}
    conn = connections.make(mach_service_name=name, **extra)
    conn.remote_object_interface = nsxpc.Interface(protocol)
    conn.resume()
    return conn


def raw_send(raw: RawClient, msg: Any, fds: list[int], nfds: int | None = None, cut: int | None = None) -> None:
    """Send one frame with ``fds`` attached by SCM_RIGHTS (optionally only its first ``cut`` bytes)."""
    data = frame(pack(msg), len(fds) if nfds is None else nfds)
    if cut is not None:
        data = data[:cut]
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sent = raw.sock.sendmsg([data], ancillary)
    if sent < len(data):
        raw.sock.sendall(data[sent:])


def wait_count(sync: Any, expected: int, timeout: float = SETTLE) -> int:
    """Ask the service for its fd count until it is ``expected`` (bounded); return the last."""
    done = threading.Event()
    deadline = TIMEOUT + timeout
    count = sync.fd_count()
    waited = 0.0
    while count != expected and waited < deadline:
        done.wait(0.05)  # a pause between two round trips, not a synchronisation
        waited += 0.05
        count = sync.fd_count()
    return count


def unsealed_memfd(size: int) -> int:
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    return fd


# --------------------------------------------------------------------------- values alone


def test_file_descriptor_duplicates_and_owns_its_fd() -> None:
    r, w = os.pipe()
    try:
        value = nsxpc.FileDescriptor(w)
        assert value.fileno() != w
        assert fcntl.fcntl(value.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert "pipe" in repr(value) and f"fd={value.fileno()}" in repr(value)
        os.close(w)  # the caller's own copy: the value's stays open
        os.write(value.fileno(), b"x")
        assert os.read(r, 1) == b"x"
        with value:
            pass
        assert value.closed and "closed" in repr(value)
        with pytest.raises(ValueError):
            value.fileno()
        value.close()  # idempotent
        with pytest.raises(ValueError, match="not an open file descriptor"):
            nsxpc.FileDescriptor(w)
        with pytest.raises(TypeError):
            nsxpc.FileDescriptor("3")  # type: ignore[arg-type]
    finally:
        os.close(r)


def test_file_descriptor_detach_and_garbage_collection() -> None:
    r, w = os.pipe()
    os.close(w)
    with open(os.devnull, "rb") as f:
        value = nsxpc.FileDescriptor(f)  # anything with fileno()
    fd = value.detach()
    assert value.closed
    os.fstat(fd)  # still open: the caller owns it now
    os.close(fd)
    dropped = nsxpc.FileDescriptor(r)
    number = dropped.fileno()
    del dropped
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(number)  # closed when garbage-collected
    os.close(r)


def test_shared_memory_alone() -> None:
    with nsxpc.SharedMemory(4096) as region:
        assert region.size == 4096 and len(region.buffer) == 4096 and not region.buffer.readonly
        region.buffer[:3] = b"abc"
        seals = fcntl.fcntl(region._fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
        assert "4096 bytes" in repr(region)
    assert region.closed and "closed" in repr(region)
    with pytest.raises(ValueError):
        region.buffer  # noqa: B018
    kept = nsxpc.SharedMemory.from_bytes(b"0123456789")
    view = kept.buffer[2:5]
    kept.close()  # a view taken of the buffer keeps the mapping until it goes
    assert bytes(view) == b"234"
    view.release()
    copy = nsxpc.SharedMemory.from_bytes(b"hello")
    assert bytes(copy.buffer) == b"hello" and copy.size == 5
    copy.close()
    empty = nsxpc.SharedMemory.from_bytes(b"")
    assert empty.size == 0 and bytes(empty.buffer) == b""
    empty.close()
    with pytest.raises(ValueError):
        nsxpc.SharedMemory(-1)
    with pytest.raises(TypeError):
        nsxpc.SharedMemory(1.5)  # type: ignore[arg-type]


class Stasher(nsxpc.SecureCoding):
    """Keeps the FileDescriptor it decoded, then refuses the rest of its fields."""

    stashed: list[Any] = []

    def encode_with_coder(self, coder: nsxpc.Coder) -> None:
        raise NotImplementedError

    @classmethod
    def init_with_coder(cls, coder: nsxpc.Coder) -> Stasher:
        cls.stashed.append(coder.decode_object_of_class(nsxpc.FileDescriptor, "fd"))
        coder.decode_object_of_class(int, "count")  # a str on the wire: DecodingError
        return cls()


@nsxpc.protocol
class Stash(Protocol):
    def keep(self, box: Stasher, fd: nsxpc.FileDescriptor) -> None: ...


def test_values_of_a_refused_message_give_their_fds_back() -> None:
    """Sans-I/O, in the core: a value that adopted an fd of a message that is then
    refused gives it up (the core closes it, once); a delivered one keeps it."""
    from nsxpc import _codec, _messages
    from nsxpc._framing import encode_frame
    from nsxpc._protocol import CallReceived, CallRejected, ConnectionCore

    iface = nsxpc.Interface(Stash)
    server = ConnectionCore(client=False, exports={_messages.ROOT_OBJECT: (object(), iface)})
    server.receive(ConnectionCore(client=True).hello())
    server.welcome()
    fields = {"fd": msgpack.ExtType(9, pack(0)), "count": "x"}
    box = msgpack.ExtType(7, pack([nsxpc._coding.wire_name(Stasher), fields]))
    r, w = os.pipe()
    (event,) = server.receive(encode_frame(_codec.pack([_messages.INVOKE, 0, 1, "keep", [box, 0]]), 1), [w])
    assert isinstance(event, CallRejected)
    (stashed,) = Stasher.stashed
    assert stashed.closed  # given up, not left pointing at a number the core closed
    with pytest.raises(OSError):
        os.fstat(w)
    # The same fd twice in one message: refused (two owners would close it twice).
    twice = [msgpack.ExtType(9, pack(0)), msgpack.ExtType(9, pack(0))]
    r2, w2 = os.pipe()
    iface2 = nsxpc.Interface(Fds)
    server2 = ConnectionCore(client=False, exports={_messages.ROOT_OBJECT: (object(), iface2)})
    server2.receive(ConnectionCore(client=True).hello())
    server2.welcome()
    (event,) = server2.receive(encode_frame(_codec.pack([_messages.INVOKE, 1, 1, "take_fds", [twice]]), 1), [w2])
    assert isinstance(event, CallRejected) and "used twice" in event.error.message
    with pytest.raises(OSError):
        os.fstat(w2)
    r3, w3 = os.pipe()
    (event,) = server2.receive(encode_frame(_codec.pack([_messages.INVOKE, 2, 1, "take_fds", [twice[:1]]]), 1), [w3])
    assert isinstance(event, CallReceived)
    (kept,) = event.args[0]
    assert kept.fileno() == w3  # delivered: the value owns the received fd
    kept.close()
    for fd in (r, r2, r3):
        os.close(fd)


# --------------------------------------------------------------------------- file descriptors


def test_fd_round_trip_pipe_written_by_the_service(fd_server: Child, connections: Connections) -> None:
    sync = sync_proxy(connect(connections, fd_server.name))  # type: ignore[attr-defined]
    r, w = os.pipe()
    try:
        value = nsxpc.FileDescriptor(w)
        os.close(w)
        assert sync.write_to(value, b"written by the service") == 22
        assert not value.closed  # sending duplicated it again: ours stays open
        value.close()  # now the pipe has no writer left
        assert os.read(r, 100) == b"written by the service"
        assert os.read(r, 100) == b""  # the service closed its copy
    finally:
        os.close(r)


def test_fd_in_a_reply(fd_server: Child, connections: Connections) -> None:
    sync = sync_proxy(connect(connections, fd_server.name))  # type: ignore[attr-defined]
    value = sync.make_pipe(b"from the service")
    assert type(value) is nsxpc.FileDescriptor
    with value:
        assert fcntl.fcntl(value.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # MSG_CMSG_CLOEXEC
        chunks = []
        while chunk := os.read(value.fileno(), 100):
            chunks.append(chunk)
    assert b"".join(chunks) == b"from the service"


def test_fd_in_a_slot_that_does_not_allow_it_is_refused_and_closed(
    fd_server: Child, connections: Connections
) -> None:
    name = fd_server.name  # type: ignore[attr-defined]
    sync = sync_proxy(connect(connections, name))
    wrong = sync_proxy(connect(connections, name, Mismatch))
    before = wrong.fd_count()
    r, w = os.pipe()
    try:
        with nsxpc.FileDescriptor(w) as value:
            for _ in range(3):
                with pytest.raises(nsxpc.DecodingError, match="FileDescriptor is not allowed"):
                    wrong.take_int(value)  # the service's slot is an int
                # Adopted by the first member, then refused by the second: given back and closed.
                with pytest.raises(nsxpc.DecodingError, match="class str is not allowed"):
                    wrong.take_fds([value, value, "not an fd"])
        assert wrong.fd_count() == before
        assert sync.take_fds([nsxpc.FileDescriptor(r)]) == 1  # the connection stays up
        assert wrong.fd_count() == before
    finally:
        os.close(r)
        os.close(w)


def test_fd_cap(fd_server: Child, connections: Connections, logwatch: Any) -> None:
    name = fd_server.name  # type: ignore[attr-defined]
    sync = sync_proxy(connect(connections, name))
    r, w = os.pipe()
    fds = [nsxpc.FileDescriptor(w) for _ in range(20)]
    try:
        # The sender checks its own cap (16): nothing is sent.
        with pytest.raises(nsxpc.EncodingError, match="20 file descriptors, more than the cap of 16"):
            sync.take_fds(fds)
        baseline = sync.fd_count()
        # A sender whose cap is higher: the service (cap 16) drops the connection and
        # closes every fd that came with it.
        big = connect(connections, name, limits=nsxpc.Limits(max_fds=32))
        errors: list[Exception] = []
        loose = big.synchronous_remote_object_proxy_with_error_handler(errors.append, timeout=TIMEOUT)
        with pytest.raises(nsxpc.ConnectionInterrupted):
            loose.take_fds(fds)
        assert wait_count(sync, baseline) == baseline
        assert sync.take_fds(fds[:16]) == 16  # at the cap: fine
    finally:
        for value in fds:
            value.close()
        os.close(r)
        os.close(w)


def test_fds_of_refused_and_cut_frames_are_closed(fd_server: Child, connections: Connections) -> None:
    """Raw peers: fds that no frame announces, and a connection that dies mid-frame."""
    name = fd_server.name  # type: ignore[attr-defined]
    sync = sync_proxy(connect(connections, name))
    path = os.path.join(os.environ["NSXPC_RUNTIME_DIR"], f"{name}.sock")
    baseline = sync.fd_count()
    r, w = os.pipe()
    try:
        stray = RawClient(path)
        stray.handshake(b"")
        raw_send(stray, [3, 1, 1, "fd_count", []], [r, w], nfds=0)  # fds with a frame that announces none
        stray.expect_closed()
        stray.close()
        cut = RawClient(path)
        cut.handshake(b"")
        raw_send(cut, [3, 1, 1, "take_fds", [[msgpack.ExtType(9, pack(0))]]], [r, w], cut=12)
        cut.close()  # gone in the middle of the frame, its fds queued on the service's side
        assert wait_count(sync, baseline) == baseline
    finally:
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------------- shared memory


def test_shared_memory_from_client_to_service(fd_server: Child, connections: Connections) -> None:
    sync = sync_proxy(connect(connections, fd_server.name))  # type: ignore[attr-defined]
    with nsxpc.SharedMemory(4096) as region:
        region.buffer[:4] = b"ping"
        assert sync.shm_swap(region) == b"ping"  # the service read what we wrote
        assert bytes(region.buffer[:4]) == b"pong"  # and we see what it wrote


def test_shared_memory_from_service_to_client(fd_server: Child, connections: Connections) -> None:
    sync = sync_proxy(connect(connections, fd_server.name))  # type: ignore[attr-defined]
    region = sync.shm_make(8192)
    assert type(region) is nsxpc.SharedMemory
    with region:
        assert region.size == 8192
        assert bytes(region.buffer[:4]) == b"svc!"
        region.buffer[100:105] = b"hello"
        assert sync.shm_kept(105)[100:] == b"hello"  # the service's mapping shows our write


def test_unsealed_shared_memory_is_refused_and_closed(fd_server: Child, connections: Connections) -> None:
    name = fd_server.name  # type: ignore[attr-defined]
    sync = sync_proxy(connect(connections, name))
    baseline = sync.fd_count()
    raw = RawClient(os.path.join(os.environ["NSXPC_RUNTIME_DIR"], f"{name}.sock"))
    fd = unsealed_memfd(4096)
    sealed = nsxpc.SharedMemory(4096)
    try:
        raw.handshake(b"")
        raw_send(raw, [3, 1, 1, "take_region", [msgpack.ExtType(10, pack([0, 4096, False]))]], [fd])
        answer = raw.recv_msg()
        assert answer[:3] == [5, 1, 4864] and "not sealed" in answer[3], answer
        raw_send(raw, [3, 2, 1, "take_region", [msgpack.ExtType(10, pack([0, 8192, False]))]], [sealed._fd])
        answer = raw.recv_msg()
        assert answer[:3] == [5, 2, 4864] and "is 4096 bytes, but the message says 8192" in answer[3], answer
        raw_send(raw, [3, 3, 1, "take_region", [msgpack.ExtType(10, pack([0, 4096, False]))]], [sealed._fd])
        assert raw.recv_msg() == [4, 3, [4096]]  # the same region, stated right, is taken
        raw.close()
        assert wait_count(sync, baseline) == baseline
    finally:
        raw.close()
        os.close(fd)
        sealed.close()


# --------------------------------------------------------------------------- bytes promotion


@pytest.fixture
def small_frames(spawn: Callable[..., Child], service_name: str) -> Child:
    """The service with a 256 KiB frame cap: a 1 MiB bytes gets through only promoted."""
    child = spawn("fd_server.py", service_name, str(256 * 1024))
    child.name = service_name  # type: ignore[attr-defined]
    return child


def test_bytes_above_the_threshold_travel_promoted(small_frames: Child, connections: Connections) -> None:
    limits = nsxpc.Limits(max_frame_size=256 * 1024)
    sync = sync_proxy(connect(connections, small_frames.name, limits=limits))  # type: ignore[attr-defined]
    data = os.urandom(MiB + 1)
    echoed = sync.echo_bytes(data)  # promoted both ways: the call and the reply
    assert type(echoed) is bytes and echoed == data
    # At the threshold exactly, a bytes value goes inline, and meets the frame cap.
    with pytest.raises(nsxpc.EncodingError, match="frame cap"):
        sync.echo_bytes(data[:MiB])
    # Promotion disabled: the same value cannot be sent.
    never = nsxpc.Limits(max_frame_size=256 * 1024, shared_memory_threshold=None)
    off = sync_proxy(connect(connections, small_frames.name, limits=never))  # type: ignore[attr-defined]
    with pytest.raises(nsxpc.EncodingError, match="frame cap"):
        off.echo_bytes(data)


def test_bytes_promoted_in_a_reply(small_frames: Child, connections: Connections) -> None:
    limits = nsxpc.Limits(max_frame_size=256 * 1024)
    sync = sync_proxy(connect(connections, small_frames.name, limits=limits))  # type: ignore[attr-defined]
    for size in (MiB + 1, 3 * MiB + 7):
        value = sync.make_bytes(size)
        assert type(value) is bytes and value == pattern(size)


def test_promoted_bytes_respect_the_slot(fd_server: Child, connections: Connections) -> None:
    name = fd_server.name  # type: ignore[attr-defined]
    wrong = sync_proxy(connect(connections, name, Mismatch))
    before = wrong.fd_count()
    data = b"x" * (2 * MiB)
    with pytest.raises(nsxpc.DecodingError, match="class bytes is not allowed"):
        wrong.take_str(data)  # a str slot: bytes are refused, promoted or not
    with pytest.raises(nsxpc.DecodingError, match="class bytes is not allowed"):
        wrong.take_region(data)  # a SharedMemory slot never yields the promoted form
    assert wrong.fd_count() == before


def test_a_64_mib_bytes_value(fd_server: Child, connections: Connections) -> None:
    sync = sync_proxy(connect(connections, fd_server.name), timeout=30)  # type: ignore[attr-defined]
    data = pattern(64 * MiB)
    assert sync.echo_bytes(data) == data
