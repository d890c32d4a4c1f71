"""L5: listeners (NSXPCListener): anonymous ones reached through their endpoint,
named services bound at ``<runtime dir>/<name>.sock``, and the listener of a
service launched on demand.

A named listener holds an exclusive ``flock`` on ``<name>.lock`` for its whole
life. The kernel drops the lock when the process dies however it dies, so a
socket file left by a dead process is recognised as stale and replaced, while a
name served by a live process makes ``resume()`` fail with an error naming it.

Sockets a listener did not bind itself are adopted, never re-bound:

- ``Listener.service()`` adopts the socket the launcher bound (``NSXPC_LISTEN_FD``,
  and for a User service the name lock, ``NSXPC_LOCK_FD``), then tells the
  launcher it is ready (``NSXPC_READY_FD``). See ``_launcher``.
- ``Listener(mach_service_name=...)`` adopts a socket handed over by systemd
  socket activation (``sd_listen_fds``): ``LISTEN_PID`` must be this process;
  the fds start at 3; the one named ``<name>`` in ``LISTEN_FDNAMES`` is taken,
  else the one bound at ``<runtime dir>/<name>.sock``, else the only one. The
  variables are removed from the environment when first read, so children do
  not inherit them.

An adopted socket is checked (a listening ``AF_UNIX`` stream socket), made
close-on-exec, and ``listen()`` is called on it again so that peers'
``SO_PEERCRED`` names this process rather than whoever bound it. Its path is
never unlinked by the listener (the launcher or systemd owns it), and a socket
systemd still holds is never shut down (that would break later activations).
"""

from __future__ import annotations

import atexit
import collections
import errno
import os
import select
import socket
import threading
import time
import weakref
from typing import Any

from ._connection import Connection
from ._errors import ErrorCode, LimitExceeded, PeerRequirementFailure, ProtocolError, XPCError
from ._framing import HEADER
from ._limits import DEFAULT_LIMITS, Limits
from ._log import log
from ._protocol import ConnectionCore
from ._requirements import PeerRequirement, check_peer, check_sound
from ._state import Lifecycle
from ._transport import (
    RECV_SIZE,
    PeerCredentials,
    check_socket_path,
    connect_unix,
    peer_credentials,
    recv_chunk,
    runtime_dir,
    service_socket_path,
    try_flock,
)
from ._values import ListenerEndpoint

__all__ = ["Listener"]

#: Large enough that 1,000 simultaneous connects all succeed (asyncio's 100 lost 899).
BACKLOG = 4096
#: The largest first frame (HELLO) a peer may send before it is accepted: a peer still
#: in its handshake costs the listener at most this much memory.
MAX_HANDSHAKE_FRAME = 64 * 1024
#: New connections accepted per wake-up before the others (handshakes) get a turn.
_ACCEPT_BATCH = 64
_live: weakref.WeakSet[Listener] = weakref.WeakSet()
_service_listener: Listener | None = None
_service_lock = threading.Lock()
#: Sockets systemd passed (fd -> name), read once from the environment; adopted ones are removed.
_activation: dict[int, str] | None = None
_activation_lock = threading.Lock()


class Listener:
    """Accepts connections and asks its delegate about each one (NSXPCListener).

    Make one with ``Listener.anonymous()`` or ``Listener(mach_service_name=...)``.
    It starts suspended; set ``delegate`` and ``resume()``. The delegate's
    ``should_accept_new_connection(listener, connection)`` configures the new
    connection, resumes it and returns True, or returns False to refuse it.
    Without a delegate every connection is refused.

    Args:
        mach_service_name: the name clients pass to ``Connection(mach_service_name=...)``.
        loop: an asyncio event loop: accepted connections (and the delegate) run on it.
        limits: resource limits applied to every accepted connection.

    Raises:
        ValueError: the name is invalid or too long for a socket path, or ``loop`` is closed.
        TypeError: ``loop`` is not an asyncio event loop.
    """

    #: The class of accepted connections (an XPCListener accepts message connections).
    _connection_class: type[Connection] = Connection

    def __init__(
        self, *, mach_service_name: str | None = None, loop: Any = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        if mach_service_name is None:
            raise TypeError("use Listener.anonymous() or Listener(mach_service_name=...)")
        self._init(limits, loop)
        self.mach_service_name: str | None = mach_service_name
        self._path = service_socket_path(mach_service_name)
        self._adopted: socket.socket | None = _socket_from_systemd(mach_service_name, self._path)

    def _init(self, limits: Limits, loop: Any = None) -> None:
        self._limits = limits
        #: The asyncio loop accepted connections run on (``loop=``), else None: threads.
        self._loop: Any = None
        if loop is not None:
            from ._aio import check_loop  # asyncio is imported only by programs that use it

            self._loop = check_loop(loop)
        self._life = Lifecycle()
        self._cond = threading.Condition(threading.RLock())
        self._delegate: Any = None
        self._delegate_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._lock_fd = -1
        self._token = b""
        self._thread: threading.Thread | None = None
        self._connections: set[Connection] = set()
        #: Connections per peer uid, handshake complete or not (Limits.max_connections_per_uid).
        self._per_uid: collections.Counter[int] = collections.Counter()
        self._requirement: PeerRequirement | None = None
        self._wake_fd = -1  # wakes the accept loop (suspend, resume, invalidate)
        self._adopted = None  # a socket handed over by systemd, bound at resume()
        self._owns_path = True  # False: the launcher or systemd owns the socket file
        self._shared_socket = False  # True: systemd holds the same socket; never shut it down
        self.mach_service_name = None
        #: The launched service's name (``Listener.service()`` only).
        self.service_name: str | None = None

    @classmethod
    def anonymous(cls, *, loop: Any = None, limits: Limits = DEFAULT_LIMITS) -> Listener:
        """A listener with no name, reachable only through its :attr:`endpoint`
        (``+[NSXPCListener anonymousListener]``)."""
        self = object.__new__(cls)
        self._init(limits, loop)
        self._token = os.urandom(16)
        self._path = os.path.join(runtime_dir(), f"anon-{os.getpid()}-{os.urandom(6).hex()}.sock")
        check_socket_path(self._path)
        self._bind()
        return self

    @classmethod
    def service(cls, *, loop: Any = None, limits: Limits = DEFAULT_LIMITS) -> Listener:
        """The listener of a service launched on demand (``+[NSXPCListener serviceListener]``).

        It adopts the socket the launcher bound for this process and tells the
        launcher the service is ready. There is one per process: later calls
        return the same listener. ``nsxpc.main(delegate)`` calls it for you.

        Raises:
            XPCError: this process was not launched as a service (``NSXPC_LISTEN_FD``
                is not set), or what it was handed is not a listening Unix socket.
        """
        global _service_listener
        with _service_lock:
            if _service_listener is not None:
                if loop is not None and _service_listener._loop is not loop:
                    raise RuntimeError("Listener.service() was already made with another loop")
                return _service_listener
            env = os.environ
            fd_text = env.get("NSXPC_LISTEN_FD")
            if not fd_text:
                raise XPCError(
                    "Listener.service() works only in a process launched for a service bundle "
                    "(NSXPC_LISTEN_FD is not set); elsewhere use nsxpc.Listener(mach_service_name=...) "
                    "or nsxpc.Listener.anonymous()",
                    code=ErrorCode.CONNECTION_INVALID,
                )
            sock = _adopt(_fd_number(fd_text, "NSXPC_LISTEN_FD"), "NSXPC_LISTEN_FD")
            lock_fd = _fd_number(env.get("NSXPC_LOCK_FD", "-1"), "NSXPC_LOCK_FD")
            ready_fd = _fd_number(env.get("NSXPC_READY_FD", "-1"), "NSXPC_READY_FD")
            for key in ("NSXPC_LISTEN_FD", "NSXPC_LOCK_FD", "NSXPC_READY_FD"):
                env.pop(key, None)
            self = object.__new__(cls)
            self._init(limits, loop)
            self.service_name = env.get("NSXPC_SERVICE_NAME") or None
            self._owns_path = False
            name = sock.getsockname()
            self._path = name if isinstance(name, str) else repr(name)
            if lock_fd >= 0:
                os.set_inheritable(lock_fd, False)
                self._lock_fd = lock_fd
            try:
                sock.listen(BACKLOG)  # peers' SO_PEERCRED now name this process, not the launcher
            except OSError as exc:
                sock.close()
                raise XPCError(f"cannot listen on NSXPC_LISTEN_FD: {exc.strerror}") from exc
            self._sock = sock
            _live.add(self)
            if ready_fd >= 0:
                try:
                    os.write(ready_fd, b"R")
                except OSError:
                    pass  # the launcher gave up waiting: it connects anyway
                os.close(ready_fd)
            _service_listener = self
            return self

    def __repr__(self) -> str:
        name = self.mach_service_name or self.service_name or "anonymous"
        return f"<nsxpc.Listener {name} {self._life.state.name} connections={len(self._connections)}>"

    @property
    def delegate(self) -> Any:
        """The object asked about every new connection (held strongly)."""
        return self._delegate

    @delegate.setter
    def delegate(self, value: Any) -> None:
        if value is not None and not callable(getattr(value, "should_accept_new_connection", None)):
            raise TypeError("a listener delegate needs a should_accept_new_connection(listener, connection) method")
        self._delegate = value

    def set_connection_peer_requirement(self, requirement: PeerRequirement) -> None:
        """Require every peer that connects to satisfy ``requirement``
        (``-[NSXPCListener setConnectionCodeSigningRequirement:]``). It is checked at
        accept, against the identity the kernel gave at connect, before the delegate
        sees the connection or any message of it is read: a peer that fails is refused
        (it sees ``ConnectionInvalid``, naming the requirement) and logged here.

        Raises:
            TypeError: ``requirement`` is not an ``nsxpc.PeerRequirement``.
            ValueError: it can be met by an executable alone (docs/SECURITY.md).
            RuntimeError: a requirement was already set, or the listener was resumed.
        """
        req = check_sound(requirement)
        with self._cond:
            if self._requirement is not None:
                raise RuntimeError(f"{self!r} already has a connection peer requirement ({self._requirement!r})")
            if self._life.activated or self._life.invalid:
                raise RuntimeError("set_connection_peer_requirement() must be called before resume()")
            self._requirement = req

    @property
    def endpoint(self) -> ListenerEndpoint:
        """A value that lets any process connect to this listener."""
        return ListenerEndpoint(path=self._path, token=self._token)

    # ------------------------------------------------------------------ life cycle

    def resume(self) -> None:
        """Start (or, after ``suspend()``, continue) accepting connections.

        Raises:
            XPCError: the name is already served by a live process, or cannot be bound.
            RuntimeError: resumed more times than suspended.
        """
        with self._cond:
            first = not self._life.activated
            running = self._life.resume()
            if first and running and self._sock is None:
                try:
                    self._bind()
                except BaseException:
                    self._life.invalidate()
                    raise
            if running and self._thread is None:
                self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self._thread = threading.Thread(
                    target=self._accept_loop, name=f"nsxpc listener {self._path}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
            self._wake()

    def activate(self) -> None:
        """Start an inactive listener; does nothing if it was already activated."""
        if not self._life.activated:
            self.resume()

    def suspend(self) -> None:
        """Stop accepting new connections until the matching ``resume()``."""
        with self._cond:
            self._life.suspend()
            self._wake()

    def invalidate(self) -> None:
        """Stop accepting for good and remove the socket. Accepted connections stay up."""
        with self._cond:
            if not self._life.invalidate():
                return
            self._cond.notify_all()
            self._wake()
            sock = self._sock
        if sock is not None and self._shared_socket:
            # systemd keeps this socket for the next activation: wake accept() with a
            # throw-away connection instead of shutting the socket down for everyone.
            try:
                connect_unix(self._path).close()
            except OSError:
                pass
        elif sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # Give the name back now, not when the accept thread notices: a new listener
        # may claim it as soon as this returns.
        with self._cond:
            self._close()

    def _bind(self) -> None:
        if self.mach_service_name is not None:
            self._take_name()
        if self._adopted is not None:
            sock, self._adopted = self._adopted, None
            try:
                sock.listen(BACKLOG)  # peers' SO_PEERCRED now name this process, not systemd
            except OSError as exc:
                sock.close()
                self._release_name()
                raise XPCError(
                    f"cannot listen on the socket systemd passed for {self.mach_service_name}: {exc.strerror}",
                    code=ErrorCode.CONNECTION_INVALID,
                ) from exc
            self._sock = sock
            self._owns_path = False
            self._shared_socket = True
            _live.add(self)
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            try:
                os.unlink(self._path)  # stale: the name lock proves nobody live serves it
            except FileNotFoundError:
                pass
            sock.bind(self._path)
            os.chmod(self._path, 0o600)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            self._release_name()
            raise XPCError(f"cannot listen at {self._path}: {exc.strerror}", code=ErrorCode.CONNECTION_INVALID) from exc
        self._sock = sock
        _live.add(self)

    def _take_name(self) -> None:
        fd = try_flock(self._path[: -len(".sock")] + ".lock")
        if fd < 0:
            raise XPCError(
                f"the service name {self.mach_service_name} is already served by a live process",
                code=ErrorCode.CONNECTION_INVALID,
            )
        self._lock_fd = fd

    def _release_name(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                if self._owns_path and os.path.exists(self._path):
                    os.unlink(self._path)
            except OSError:
                pass
            sock.close()
        self._release_name()

    # ------------------------------------------------------------------ accepting

    def _wake(self) -> None:
        """Wake the accept loop (called with ``_cond`` held)."""
        if self._wake_fd >= 0:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass

    def _accept_loop(self) -> None:
        """The listener's thread: accepts, and holds each new connection until its whole
        first frame (the handshake) has arrived, all in one epoll set. A peer that stays
        silent costs a socket and at most MAX_HANDSHAKE_FRAME bytes, never a thread, and
        is closed at Limits.handshake_timeout; only a peer whose handshake is complete
        gets a Connection (and its serial queue). Identity is read and checked once, at
        accept: the listener's peer requirement and the per-uid cap apply before
        anything of the peer is read."""
        epoll = select.epoll()
        with self._cond:
            wake = self._wake_fd
        epoll.register(wake, select.EPOLLIN)
        pending: dict[int, _Handshake] = {}
        listen_fd = -1  # the listening socket's fd while it is in the epoll set
        backoff_until = 0.0
        buffer = memoryview(bytearray(RECV_SIZE))
        try:
            while True:
                with self._cond:
                    # Under the lock: invalidate() closes the socket (and its fd number may be
                    # reused at once), so it is registered only while known to be open.
                    if self._life.invalid:
                        return
                    sock = self._sock
                    accepting = self._life.running and sock is not None and time.monotonic() >= backoff_until
                    if accepting and listen_fd < 0:
                        assert sock is not None
                        sock.setblocking(False)  # accept in batches, until EAGAIN
                        listen_fd = sock.fileno()
                        epoll.register(listen_fd, select.EPOLLIN)
                    elif not accepting and listen_fd >= 0:
                        _unregister(epoll, listen_fd)
                        listen_fd = -1
                now = time.monotonic()
                deadlines = [h.deadline for h in pending.values()]
                if backoff_until > now:
                    deadlines.append(backoff_until)
                timeout = max(0.0, min(deadlines) - now) if deadlines else -1.0
                for fd, _mask in epoll.poll(timeout):
                    if fd == wake:
                        try:
                            os.eventfd_read(wake)
                        except BlockingIOError:
                            pass
                    elif fd == listen_fd:
                        assert sock is not None
                        if not self._accept_batch(sock, epoll, pending):
                            backoff_until = time.monotonic() + 0.1
                    elif fd in pending:
                        self._read_handshake(pending, pending[fd], buffer, epoll)
                now = time.monotonic()
                for hs in [h for h in pending.values() if h.deadline <= now]:
                    log.warning(
                        "nsxpc: the connection from %s to %s did not complete the handshake within %g s "
                        "(nsxpc.Limits.handshake_timeout); closing it",
                        _who(hs.creds),
                        self._path,
                        self._limits.handshake_timeout,
                    )
                    self._drop_handshake(pending, hs, epoll)
        finally:
            for hs in list(pending.values()):
                self._drop_handshake(pending, hs, epoll)
            epoll.close()
            with self._cond:
                self._wake_fd = -1
                os.close(wake)
                self._close()

    def _accept_batch(self, sock: socket.socket, epoll: select.epoll, pending: dict[int, _Handshake]) -> bool:
        """Accept what is waiting; False to back off (out of fds or memory)."""
        for _ in range(_ACCEPT_BATCH):
            try:
                client, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("nsxpc: listener %s cannot accept (%s); backing off", self._path, exc.strerror)
                    return False
                if exc.errno == errno.ECONNABORTED:
                    continue
                if not self._life.invalid:
                    log.error("nsxpc: listener %s cannot accept: %s", self._path, exc.strerror)
                return False
            if self._life.invalid:
                client.close()  # the wake-up connection of invalidate(), or one that lost the race
                return True
            self._admit(client, epoll, pending)
        return True

    def _admit(self, client: socket.socket, epoll: select.epoll, pending: dict[int, _Handshake]) -> None:
        try:
            creds = peer_credentials(client)
        except OSError as exc:
            log.warning("nsxpc: dropped a new connection at %s: %s", self._path, exc.strerror)
            client.close()
            return
        limits = self._limits
        refusal: XPCError | None = None
        try:
            check_peer(self._requirement, creds, "the peer")
        except PeerRequirementFailure as exc:
            refusal = exc
        with self._cond:
            if refusal is None and self._per_uid[creds.uid] >= limits.max_connections_per_uid:
                refusal = LimitExceeded(
                    f"uid {creds.uid} already has {limits.max_connections_per_uid} connections to this listener "
                    "(nsxpc.Limits.max_connections_per_uid)"
                )
            if refusal is None:
                self._per_uid[creds.uid] += 1
        if refusal is not None:
            log.warning("nsxpc: listener %s refused the connection from %s: %s", self._path, _who(creds), refusal)
            _refuse(client, refusal)
            return
        if len(pending) >= limits.max_pending_connections:
            # Full of peers that have not said HELLO: the oldest goes, not the newcomer.
            # A real client says HELLO right after connect(), so stalled peers cannot
            # lock it out by holding every slot until their timeout (test plan B2).
            oldest = next(iter(pending.values()))
            log.warning(
                "nsxpc: listener %s has %d connections in their handshake (nsxpc.Limits.max_pending_connections); "
                "closing the oldest, from %s",
                self._path,
                len(pending),
                _who(oldest.creds),
            )
            self._drop_handshake(pending, oldest, epoll)
        hs = _Handshake(client, creds, time.monotonic() + limits.handshake_timeout)
        pending[hs.fd] = hs
        # A client sends HELLO right after connect(): it is usually here already, and
        # then the socket never joins the poll set.
        self._read_handshake(pending, hs, None, epoll)
        if pending.get(hs.fd) is hs:
            epoll.register(hs.fd, select.EPOLLIN | select.EPOLLRDHUP)
            hs.polled = True

    def _read_handshake(
        self, pending: dict[int, _Handshake], hs: _Handshake, buffer: memoryview | None, epoll: select.epoll
    ) -> None:
        sock = hs.sock
        if sock is None:
            return
        try:
            chunk = recv_chunk(sock, buffer if buffer is not None else memoryview(bytearray(4096)))
        except (OSError, XPCError):
            chunk = (memoryview(b""), [])
        if chunk is None:
            return
        data, fds = chunk
        hs.fds.extend(fds)
        if not data:
            self._drop_handshake(pending, hs, epoll)  # gone before its handshake: nothing to tell
            return
        hs.data += data
        if len(hs.data) < HEADER.size:
            return
        length, _, _ = HEADER.unpack_from(hs.data)
        if length > MAX_HANDSHAKE_FRAME:
            log.warning("nsxpc: the connection from %s sent a %d-byte handshake; closing it", _who(hs.creds), length)
            _refuse(
                sock, ProtocolError(f"a handshake frame of {length} bytes is over the cap of {MAX_HANDSHAKE_FRAME}")
            )
            hs.sock = None
            self._drop_handshake(pending, hs, epoll)
            return
        if len(hs.data) >= HEADER.size + length:
            self._hand_over(pending, hs, epoll)

    def _hand_over(self, pending: dict[int, _Handshake], hs: _Handshake, epoll: select.epoll) -> None:
        """The first frame is complete: the connection gets its own queue from here."""
        del pending[hs.fd]
        if hs.polled:
            _unregister(epoll, hs.fd)
        sock, hs.sock = hs.sock, None
        assert sock is not None
        if not sock.getblocking():  # accepted sockets are blocking already: no system call
            sock.setblocking(True)
        fds, hs.fds = tuple(hs.fds), []
        try:
            conn = self._connection_class._accepted(self, sock, self._limits, hs.creds, bytes(hs.data), fds)
        except OSError as exc:
            log.warning("nsxpc: dropped a new connection at %s: %s", self._path, exc.strerror)
            sock.close()
            for fd in fds:
                os.close(fd)
            with self._cond:
                self._release_uid(hs.creds.uid)
            return
        with self._cond:
            # Made outside the lock (the previous connection's teardown need not wait for
            # it), so its queue may have ended it already: _teardown sets _finished before
            # it calls _forget, so one that ended is forgotten here, and never twice.
            if conn._finished:
                self._release_uid(hs.creds.uid)
            else:
                self._connections.add(conn)

    def _drop_handshake(self, pending: dict[int, _Handshake], hs: _Handshake, epoll: select.epoll) -> None:
        pending.pop(hs.fd, None)
        if hs.polled:
            _unregister(epoll, hs.fd)
        if hs.sock is not None:
            hs.sock.close()
            hs.sock = None
        for fd in hs.fds:
            os.close(fd)
        hs.fds = []
        with self._cond:
            self._release_uid(hs.creds.uid)

    def _release_uid(self, uid: int) -> None:
        """Called with ``_cond`` held."""
        self._per_uid[uid] -= 1
        if self._per_uid[uid] <= 0:
            del self._per_uid[uid]

    def _offer(self, conn: Connection) -> bool:
        """Ask the delegate about ``conn`` (one at a time: the listener's serial queue)."""
        with self._delegate_lock:
            if self._life.invalid:
                return False
            delegate = self._delegate
            if delegate is None:
                return False
            try:
                return bool(delegate.should_accept_new_connection(self, conn))
            except Exception:
                log.exception("nsxpc: the listener delegate raised; refusing the connection")
                return False

    def _forget(self, conn: Connection) -> None:
        with self._cond:
            if conn in self._connections:
                self._connections.discard(conn)
                if conn._creds is not None:
                    self._release_uid(conn._creds.uid)


class _Handshake:
    """A connection accepted but not yet handed to a Connection: its first bytes."""

    __slots__ = ("creds", "data", "deadline", "fd", "fds", "polled", "sock")

    def __init__(self, sock: socket.socket, creds: PeerCredentials, deadline: float) -> None:
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.creds = creds
        self.deadline = deadline
        self.data = bytearray()
        self.fds: list[int] = []
        self.polled = False  # in the listener's poll set (its HELLO did not come at once)


def _who(creds: PeerCredentials) -> str:
    return f"pid {creds.pid} (uid {creds.uid})"


def _unregister(epoll: select.epoll, fd: int) -> None:
    try:
        epoll.unregister(fd)
    except (OSError, ValueError):
        pass


def _refuse(sock: socket.socket, error: XPCError) -> None:
    """Tell a peer why it is refused (REFUSE, never blocking: it may read nothing) and close."""
    try:
        sock.send(ConnectionCore(client=False).refuse(error), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
    except OSError:
        pass
    sock.close()


@atexit.register
def _remove_sockets() -> None:
    for listener in list(_live):
        if listener._sock is not None and listener._owns_path and os.path.exists(listener._path):
            try:
                os.unlink(listener._path)
            except OSError:
                pass


# --------------------------------------------------------------------------- adopted sockets


def _fd_number(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise XPCError(f"{what}={text!r} is not a file descriptor number", code=ErrorCode.CONNECTION_INVALID) from None


def _adopt(fd: int, what: str) -> socket.socket:
    """Take ownership of ``fd`` if it is a listening AF_UNIX stream socket; close-on-exec.

    Raises:
        XPCError: it is not open, or not such a socket.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise XPCError(
            f"{what}: fd {fd} is not an open socket ({exc.strerror})", code=ErrorCode.CONNECTION_INVALID
        ) from exc
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        kind = f"{sock.family.name} {sock.type.name}{'' if listening else ', not listening'}"
        sock.detach()  # not ours to close
        raise XPCError(
            f"{what}: fd {fd} is not a listening Unix stream socket ({kind})", code=ErrorCode.CONNECTION_INVALID
        )
    os.set_inheritable(fd, False)
    return sock


def _passed_sockets() -> dict[int, str]:
    """The fds systemd passed to this process (sd_listen_fds), read and unset on first use."""
    global _activation
    if _activation is not None:
        return _activation
    env = os.environ
    found: dict[int, str] = {}
    if "LISTEN_FDS" in env and "LISTEN_PID" in env:
        try:
            count, pid = int(env["LISTEN_FDS"]), int(env["LISTEN_PID"])
        except ValueError:
            log.warning("nsxpc: ignoring malformed LISTEN_FDS/LISTEN_PID from socket activation")
            count, pid = 0, -1
        if pid == os.getpid():
            names = env.get("LISTEN_FDNAMES", "").split(":")
            found = {3 + i: names[i] if i < len(names) else "" for i in range(max(count, 0))}
            for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
                env.pop(key, None)
    _activation = found
    return found


def _bound_path(fd: int) -> str | None:
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        name = probe.getsockname()
    except OSError:
        name = None
    finally:
        probe.close()
    return name if isinstance(name, str) and name else None


def _socket_from_systemd(name: str, path: str) -> socket.socket | None:
    """The listening socket socket activation passed for ``name``, or None if there is none.

    Raises:
        XPCError: the matching fd is not a listening Unix stream socket.
    """
    with _activation_lock:
        passed = _passed_sockets()
        if not passed:
            return None
        chosen = next((fd for fd, fd_name in passed.items() if fd_name == name), None)
        if chosen is None:
            chosen = next((fd for fd in passed if _bound_path(fd) == path), None)
        if chosen is None and len(passed) == 1:
            chosen = next(iter(passed))
        if chosen is None:
            log.warning(
                "nsxpc: socket activation passed fds %s but none is named %s or bound at %s; binding a new socket",
                sorted(passed),
                name,
                path,
            )
            return None
        del passed[chosen]
        return _adopt(chosen, f"socket activation for {name}")
