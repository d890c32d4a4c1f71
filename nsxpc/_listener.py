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
import errno
import os
import socket
import threading
import weakref
from typing import Any

from ._connection import Connection
from ._errors import ErrorCode, XPCError
from ._limits import DEFAULT_LIMITS, Limits
from ._log import log
from ._state import Lifecycle
from ._transport import check_socket_path, connect_unix, runtime_dir, service_socket_path, try_flock
from ._values import ListenerEndpoint

__all__ = ["Listener"]

#: Large enough that 1,000 simultaneous connects all succeed (asyncio's 100 lost 899).
BACKLOG = 4096
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
        self._adopted: socket.socket | None = _socket_from_systemd(mach_service_name, self._path)

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
    def service(cls, *, limits: Limits = DEFAULT_LIMITS) -> Listener:
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
            self._init(limits)
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
                if self._life.invalid:
                    client.close()  # the wake-up connection of invalidate(), or one that lost the race
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
