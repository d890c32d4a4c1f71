"""L4: Unix-socket I/O: the runtime directory, connecting, sending and receiving
frames with their fds, and the kernel's word on who the peer is.

Security notes (research/reliability.md section 2):
- Sockets are pathname sockets in a 0700 folder owned by us, never abstract
  sockets (which have no permissions: CVE-2022-42919).
- Peer identity is read from the kernel once, at connect or accept
  (SO_PEERCRED, and SO_PEERPIDFD where the kernel has it), never looked up
  later by PID.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Sequence

import attrs

from ._errors import ConnectionInvalid, XPCError
from ._fdvalues import MessageFds

__all__ = [
    "PeerCredentials",
    "connect_unix",
    "peer_credentials",
    "recv_chunk",
    "runtime_dir",
    "send_frame",
    "service_socket_path",
    "try_flock",
]

#: Linux's SO_PEERPIDFD (6.5+); Python 3.11 lacks the constant.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_UCRED = struct.Struct("3i")
_INT = struct.Struct("i")
_TIMEVAL = struct.Struct("ll")
_MAX_SUN_PATH = 107
RECV_SIZE = 64 * 1024


@attrs.frozen
class PeerCredentials:
    """Who the peer is, as the kernel saw it when the connection was made.

    Attributes:
        pid: the peer's process id at connect (for a listener's side: whoever called listen()).
        uid: effective user id at connect.
        gid: effective group id at connect.
        executable: ``/proc/<pid>/exe`` read while the peer was provably alive
            (bracketed by its pidfd), or None if it could not be read soundly.
    """

    pid: int
    uid: int
    gid: int
    executable: str | None = None


def runtime_dir() -> str:
    """The folder for nsxpc sockets, created 0700 if missing.

    ``$NSXPC_RUNTIME_DIR`` if set, else ``$XDG_RUNTIME_DIR/nsxpc``, else
    ``/tmp/nsxpc-<uid>``. Read on every call: the environment is consulted when
    a connection or listener is made, not at import.

    Raises:
        XPCError: the folder exists but is not ours, not a folder, or open to others.
    """
    path = os.environ.get("NSXPC_RUNTIME_DIR")
    if not path:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        path = os.path.join(xdg, "nsxpc") if xdg else f"/tmp/nsxpc-{os.getuid()}"
    if path in _verified:
        return path
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise XPCError(f"cannot create the nsxpc runtime directory {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise XPCError(f"nsxpc runtime directory {path} is not a directory")
    if st.st_uid != os.getuid():
        raise XPCError(f"nsxpc runtime directory {path} belongs to uid {st.st_uid}, not to us")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    # Checked once per process: a folder we own, in a place others cannot rename it
    # from under us, stays ours; each connection need not pay two system calls again.
    _verified.add(path)
    return path


_verified: set[str] = set()


def check_service_name(name: str) -> None:
    """Raises ValueError unless ``name`` can name a socket file."""
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\0" in name:
        raise ValueError(f"invalid service name {name!r}: use a reverse-DNS name such as com.example.kitchen")


def service_socket_path(name: str) -> str:
    """``<runtime dir>/<name>.sock``.

    Raises:
        ValueError: the name is invalid or the path is longer than a Unix socket allows.
    """
    check_service_name(name)
    path = os.path.join(runtime_dir(), f"{name}.sock")
    check_socket_path(path)
    return path


def check_socket_path(path: str) -> None:
    if len(os.fsencode(path)) > _MAX_SUN_PATH:
        raise ValueError(
            f"socket path {path!r} is longer than the {_MAX_SUN_PATH} bytes a Unix socket allows: "
            "set NSXPC_RUNTIME_DIR to a shorter folder"
        )


def connect_unix(path: str) -> socket.socket:
    """Connect a blocking, close-on-exec stream socket to ``path``.

    Raises:
        OSError: nobody listens there (ENOENT, ECONNREFUSED) or another failure.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Read the peer's identity from the kernel, once, at connect or accept.

    pid, uid and gid come from SO_PEERCRED: the kernel's snapshot taken when the
    peer called ``connect()`` (for a client looking at a listener: whoever last
    called ``listen()``). The executable is ``/proc/<pid>/exe``, kept only if the
    peer's pidfd (SO_PEERPIDFD, Linux 6.5+) shows it alive after the read (and so
    during it), so a recycled pid cannot lend its executable. Without SO_PEERPIDFD
    (older kernels) nothing ties the pid to the peer, so ``executable`` is None
    rather than a guess.
    """
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    try:
        (pidfd,) = _INT.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, _INT.size))
    except OSError:
        pidfd = -1  # ENOPROTOOPT: a kernel before 6.5
    executable: str | None = None
    if pidfd >= 0:
        try:
            executable = _read_exe(pid, pidfd)
        finally:
            os.close(pidfd)
    return PeerCredentials(pid=pid, uid=uid, gid=gid, executable=executable)


def spawned_credentials(pid: int, pidfd: int) -> PeerCredentials:
    """The identity of a process this process spawned (a launched service), known by the
    pidfd of its spawn rather than by SO_PEERCRED, which names whoever called
    ``listen()`` on the socket (research 2.1): the pid from the spawn, and the
    effective uid and gid and the executable read from ``/proc`` while that pidfd
    shows the process alive. Ids that cannot be read that way are our own (the
    launcher runs services as us).

    ``pidfd`` stays the caller's; -1 gives no executable.
    """
    uid, gid = os.geteuid(), os.getegid()
    executable: str | None = None
    if pidfd >= 0:
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
            if not _exited(pidfd):
                ids = {
                    line.split(":", 1)[0]: line.split()[1:]
                    for line in status.splitlines()
                    if line[:4] in ("Uid:", "Gid:")
                }
                uid, gid = int(ids["Uid"][1]), int(ids["Gid"][1])  # real, *effective*, saved, fs
        except (OSError, KeyError, IndexError, ValueError):
            pass
        executable = _read_exe(pid, pidfd)
    return PeerCredentials(pid=pid, uid=uid, gid=gid, executable=executable)


def _read_exe(pid: int, pidfd: int) -> str | None:
    """``/proc/<pid>/exe``, checked: the pidfd names the process we mean, and it must be
    alive after the read. Then it was alive during the read too, and a pid is not given
    to another process while its process lives (zombie included): the read was of ours."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    return None if _exited(pidfd) else exe


#: How a write that timed out under limit_sending() fails: EAGAIN on a blocking socket.
SLOW_CONSUMER = os.strerror(errno.EAGAIN)


def limit_sending(sock: socket.socket, buffer_bytes: int, timeout: float) -> None:
    """Bound what one peer can make us hold: the kernel keeps at most ``buffer_bytes``
    unread for it (SO_SNDBUF; the kernel doubles it for bookkeeping and caps it at
    net.core.wmem_max), and a blocking write that cannot put a byte into that buffer
    for ``timeout`` seconds fails with EAGAIN (SO_SNDTIMEO) instead of waiting for a
    peer that reads nothing."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, min(buffer_bytes, 2**31 - 1) // 2)
    seconds = int(timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(seconds, int((timeout - seconds) * 1e6)))


def _exited(pidfd: int) -> bool:
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


# Plain ints: the socket module's flag enums cost a microsecond per bitwise operation.
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM = int(socket.SCM_RIGHTS)
_SEND_FLAGS = int(socket.MSG_NOSIGNAL)
_CTRUNC = int(socket.MSG_CTRUNC)


def send_frame(sock: socket.socket, frame: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Write one whole frame (blocking), attaching ``fds`` to its first byte.

    An fd list the message owns (``MessageFds``, from encoding) is closed once
    the kernel has taken its own references, or when writing failed: the
    receiver gets new fds, the sender keeps its values.

    Raises:
        OSError: the peer is gone (EPIPE, ECONNRESET) or another failure.
    """
    if fds:
        try:
            sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, _SCM, array.array("i", fds).tobytes())], _SEND_FLAGS)
            if sent < len(frame):
                sock.sendall(memoryview(frame)[sent:], _SEND_FLAGS)
        finally:
            if type(fds) is MessageFds:
                fds.close()
    else:
        sock.sendall(frame, _SEND_FLAGS)


_ANC_SPACE = socket.CMSG_SPACE(253 * 4)
_BLOCKING_RECV_FLAGS = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_RECV_FLAGS = int(socket.MSG_DONTWAIT) | _BLOCKING_RECV_FLAGS


def recv_chunk(sock: socket.socket, buffer: memoryview, block: bool = False) -> tuple[memoryview, Sequence[int]] | None:
    """Read what is available into ``buffer`` without blocking.

    Reading into a buffer the connection keeps avoids allocating (and for large
    sizes mmap-ing) a fresh bytes object per read, which cost more than the
    round trip itself.

    Returns (the filled part of ``buffer``, fds); an empty view at end of
    stream; None if nothing is ready. With ``block`` it waits for data instead
    (a shutdown of the socket ends the wait with end of stream).

    Raises:
        OSError: the connection failed (ECONNRESET...).
        ConnectionInvalid: the kernel truncated the fds (more than the process may hold).
    """
    try:
        n, ancdata, flags, _ = sock.recvmsg_into([buffer], _ANC_SPACE, _BLOCKING_RECV_FLAGS if block else _RECV_FLAGS)
    except (BlockingIOError, InterruptedError):
        return None
    if not ancdata and not flags & _CTRUNC:
        return buffer[:n], ()  # the common case: bytes alone
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == _SOL_SOCKET and kind == _SCM:
            usable = len(payload) - len(payload) % 4
            fds.extend(array.array("i", payload[:usable]))
    if flags & _CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ConnectionInvalid("file descriptors were truncated in transit (MSG_CTRUNC)")
    return buffer[:n], fds


def try_flock(path: str) -> int:
    """An fd holding an exclusive flock on ``path`` (created 0600), or -1 if another
    process holds it. The kernel drops the lock when its holder dies, however it dies:
    that is how a name's liveness is known without trusting a pid file."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return -1
        raise
    return fd


def is_no_listener(exc: OSError) -> bool:
    """True for the errors that mean nothing listens at the path."""
    return exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK)
