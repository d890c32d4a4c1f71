"""L5: listeners (NSXPCListener): anonymous ones reached through their endpoint,
and named services bound at ``<runtime dir>/<name>.sock``.

A named listener holds an exclusive ``flock`` on ``<name>.lock`` for its whole
life. The kernel drops the lock when the process dies however it dies, so a
socket file left by a dead process is recognised as stale and replaced, while a
name served by a live process makes ``resume()`` fail with an error naming it.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import socket
import threading
import weakref
from typing import Any

from ._connection import Connection
from ._errors import ErrorCode, XPCError
from ._limits import DEFAULT_LIMITS, Limits
from ._state import Lifecycle
from ._transport import check_socket_path, runtime_dir, service_socket_path
from ._values import ListenerEndpoint

__all__ = ["Listener"]

log = logging.getLogger("nsxpc")
#: Large enough that 1,000 simultaneous connects all succeed (asyncio's 100 lost 899).
BACKLOG = 4096
_live: weakref.WeakSet[Listener] = weakref.WeakSet()


class Listener:
    """Accepts connections and asks its delegate about each one (NSXPCListener).

    Make one with ``Listener.anonymous()`` or ``Listener(mach_service_name=...)``.
    It starts suspended; set ``delegate`` and ``resume()``. The delegate's
    ``should_accept_new_connection(listener, connection)`` configures the new
    connection, resumes it and returns True, or returns False to refuse it.
    Without a delegate every connection is refused.

    Args:
        mach_service_name: the name clients pass to ``Connection(mach_service_name=...)``.
        loop: an asyncio event loop for accepted connections.
        limits: resource limits applied to every accepted connection.

    Raises:
        ValueError: the name is invalid or too long for a socket path.
    """

    def __init__(
        self, *, mach_service_name: str | None = None, loop: Any = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        if mach_service_name is None:
            raise TypeError("use Listener.anonymous() or Listener(mach_service_name=...)")
        if loop is not None:
            raise NotImplementedError("Listener(loop=...) is not available yet")
        self._init(limits)
        self.mach_service_name: str | None = mach_service_name
        self._path = service_socket_path(mach_service_name)

    def _init(self, limits: Limits) -> None:
        self._limits = limits
        self._life = Lifecycle()
        self._cond = threading.Condition(threading.RLock())
        self._delegate: Any = None
        self._delegate_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._lock_fd = -1
        self._token = b""
        self._thread: threading.Thread | None = None
        self._connections: set[Connection] = set()
        self.mach_service_name = None

    @classmethod
    def anonymous(cls, *, loop: Any = None, limits: Limits = DEFAULT_LIMITS) -> Listener:
        """A listener with no name, reachable only through its :attr:`endpoint`
        (``+[NSXPCListener anonymousListener]``)."""
        if loop is not None:
            raise NotImplementedError("Listener(loop=...) is not available yet")
        self = object.__new__(cls)
        self._init(limits)
        self._token = os.urandom(16)
        self._path = os.path.join(runtime_dir(), f"anon-{os.getpid()}-{os.urandom(6).hex()}.sock")
        check_socket_path(self._path)
        self._bind()
        return self

    @classmethod
    def service(cls) -> Listener:
        """The listener of a service launched on demand (``+[NSXPCListener serviceListener]``)."""
        raise NotImplementedError("services launched on demand are not available yet")

    def __repr__(self) -> str:
        name = self.mach_service_name or "anonymous"
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
                self._thread = threading.Thread(
                    target=self._accept_loop, name=f"nsxpc listener {self._path}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def activate(self) -> None:
        """Start an inactive listener; does nothing if it was already activated."""
        if not self._life.activated:
            self.resume()

    def suspend(self) -> None:
        """Stop accepting new connections until the matching ``resume()``."""
        with self._cond:
            self._life.suspend()

    def invalidate(self) -> None:
        """Stop accepting for good and remove the socket. Accepted connections stay up."""
        with self._cond:
            if not self._life.invalidate():
                return
            self._cond.notify_all()
            sock = self._sock
        if sock is not None:
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
        lock_path = self._path[: -len(".sock")] + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise XPCError(
                    f"the service name {self.mach_service_name} is already served by a live process",
                    code=ErrorCode.CONNECTION_INVALID,
                ) from None
            raise
        self._lock_fd = fd

    def _release_name(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                if os.path.exists(self._path):
                    os.unlink(self._path)
            except OSError:
                pass
            sock.close()
        self._release_name()

    # ------------------------------------------------------------------ accepting

    def _accept_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._life.running and not self._life.invalid:
                        self._cond.wait()
                    if self._life.invalid:
                        return
                    sock = self._sock
                assert sock is not None
                try:
                    client, _ = sock.accept()
                except OSError as exc:
                    if self._life.invalid:
                        return
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("nsxpc: listener %s cannot accept (%s); backing off", self._path, exc.strerror)
                        with self._cond:
                            self._cond.wait(0.1)
                        continue
                    if exc.errno in (errno.ECONNABORTED, errno.EINTR):
                        continue
                    log.error("nsxpc: listener %s stopped: %s", self._path, exc.strerror)
                    return
                try:
                    conn = Connection._accepted(self, client, self._limits)
                except OSError as exc:
                    log.warning("nsxpc: dropped a new connection at %s: %s", self._path, exc.strerror)
                    client.close()
                    continue
                with self._cond:
                    self._connections.add(conn)
        finally:
            with self._cond:
                self._close()

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
            self._connections.discard(conn)


@atexit.register
def _remove_sockets() -> None:
    for listener in list(_live):
        if listener._sock is not None and os.path.exists(listener._path):
            try:
                os.unlink(listener._path)
            except OSError:
                pass
