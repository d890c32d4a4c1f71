"""L4: NSXPCConnection: a connection's life cycle, its serial queue, and its link.

Threads (DESIGN.md "Runtime guidance"):
- Each connection has one thread, its *serial queue* (NSXPC H4): it reads
  the socket, decodes one frame at a time, and runs exported methods, reply
  blocks, error handlers and the interruption and invalidation handlers, one
  at a time, in order. Separate connections run concurrently (X3). When a
  queue ends, its thread waits up to 5 s for the next connection's queue
  before it exits (see "queue threads" below): a process that connects often
  does not start a thread per connection.
- A call is encoded and written on the calling thread (no hop on the way out);
  a synchronous caller is woken directly when its reply is decoded.
- Callbacks the user supplies never run while a library lock is held.

Locks:
- ``_send_lock`` orders everything that reaches the wire and guards the
  outbox and the link. A link is marked dead, and its pending calls taken,
  under this lock, so a call is either registered before the link dies (and
  failed by the teardown) or sees it dead (and is failed or queued): never lost.
"""

from __future__ import annotations

import _thread
import collections
import copy
import functools
import itertools
import os
import select
import socket
import struct
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic

from . import _codec, _messages, _transactions
from ._errors import (
    ConnectionInterrupted,
    ConnectionInvalid,
    EncodingError,
    LimitExceeded,
    PeerRequirementFailure,
    RemoteError,
    ReplyInvalid,
    TimedOut,
    XPCError,
    error_for_code,
)
from ._interface import Interface, MethodSpec, Remote
from ._limits import DEFAULT_LIMITS, Limits
from ._log import log
from ._protocol import (
    BadHello,
    CallReceived,
    CallRejected,
    ConnectionCore,
    ExportTable,
    HelloReceived,
    PendingCall,
    Refused,
    Released,
    Resolved,
    Violation,
    Welcomed,
    encode_arguments,
    interface_of,
)
from ._proxy import HANDLER, PLAIN, SYNC, RemoteProxy, RemoteRef
from ._requirements import PeerRequirement, check_peer, check_sound
from ._state import ConnectionState, Lifecycle
from ._transport import (
    RECV_SIZE,
    SLOW_CONSUMER,
    PeerCredentials,
    check_service_name,
    connect_unix,
    is_no_listener,
    limit_sending,
    peer_credentials,
    recv_chunk,
    send_frame,
    service_socket_path,
)
from ._values import ListenerEndpoint

if TYPE_CHECKING:
    from ._listener import Listener
    from ._timers import Timer

__all__ = ["Connection"]


class _ThreadState(threading.local):
    current: Connection | None = None  # Connection.current()
    queue: Connection | None = None  # the connection whose queue this thread is


_tls = _ThreadState()
_EPOLLIN = select.EPOLLIN | select.EPOLLRDHUP
# A connection with nothing to deliver but a hang-up (it exports nothing and makes only
# synchronous calls, whose callers read their own replies) watches for that alone, so
# its synchronous calls need not take the socket out of the poll set and put it back.
_EPOLLHUP_ONLY = select.EPOLLRDHUP
_TIMEVAL = struct.Struct("@ll")  # struct timeval, for SO_RCVTIMEO
#: How long a refused connect waits for a dying service instance to be reported gone.
_DYING_GRACE = 2.0


class _Link:
    """One transport: a connected socket and the protocol core that speaks over it."""

    __slots__ = (
        "buffer",
        "core",
        "corked",
        "creds",
        "dead",
        "fd",
        "on_close",
        "owed",
        "owed_lock",
        "paused",
        "ready",
        "recv_timeout",
        "service",
        "shared",
        "sock",
        "watched",
    )

    def __init__(self, sock: socket.socket, core: ConnectionCore, creds: PeerCredentials) -> None:
        self.sock = sock
        self.buffer = memoryview(bytearray(RECV_SIZE))
        self.fd = sock.fileno()
        self.core = core
        self.creds = creds
        self.dead = False
        # A client may pipeline calls right after HELLO; a listener's side may send
        # only after its WELCOME (a delegate that calls back while accepting queues).
        self.ready = core.client
        # A handshake frame held back to go in the same write as the next message: a
        # client's HELLO (Connection._connect), a listener side's WELCOME (_on_hello).
        self.corked: bytes | None = None
        self.watched = False
        self.shared = False  # watched by the process's _Watcher, not by a queue of its own
        self.on_close: Callable[[], object] | None = None
        self.service: Any = None  # the LaunchedService behind a service_name connection
        # Calls of the peer handed to our exported objects whose reply is still owed;
        # at Limits.max_calls_in_flight reading stops ("paused") until one is answered.
        # The keys of their reply blocks (see _ReplyBlock, _pause_input).
        self.owed: set[int] = set()
        self.owed_lock = threading.Lock()  # only around pausing and waking
        self.paused = False
        # For a synchronous caller that reads its own reply (see Connection._call).
        #: The receive timeout set on the socket (SO_RCVTIMEO) for callers that read
        #: their own replies; 0.0 while none is set.
        self.recv_timeout = 0.0


class _Call(PendingCall):
    """A call that expects a reply, with what must happen when it ends (exactly once)."""

    __slots__ = ("done", "handler", "link", "mode", "outcome", "reply", "timeout", "timer", "waiter")

    def __init__(
        self, method: MethodSpec, target: int, reply: Callable[..., object] | None, handler: Any, mode: str
    ) -> None:
        # PendingCall's fields set here, not through super().__init__: one frame less per call.
        self.method = method
        self.target = target
        self.seq = 0
        self.reply = reply
        self.handler = handler
        self.mode = mode
        self.link: _Link | None = None
        self.done = False
        self.outcome: tuple[list[Any] | None, XPCError | None] | None = None
        self.timer: Timer | None = None
        self.timeout: float | None = None  # bounds a wait for a slot (Limits.max_calls_in_flight)
        # A synchronous caller's lock, made only if it must wait for another thread to end
        # the call (most read their own reply): see Connection._wait and _complete.
        self.waiter: threading.Lock | None = None


class _Outgoing:
    """A message (or a send barrier) waiting for the connection to run."""

    __slots__ = ("args", "barrier", "call", "fds", "method", "origin", "target")

    def __init__(
        self,
        method: MethodSpec | None,
        args: Sequence[object],
        fds: list[int],
        call: _Call | None,
        target: int,
        barrier: Callable[[], object] | None = None,
        origin: _Link | None = None,
    ) -> None:
        self.method = method
        self.args = args
        self.fds = fds
        self.call = call
        self.target = target
        self.barrier = barrier
        #: For a call on an object passed by proxy: the only link it may go out on.
        self.origin = origin


class _ReplyBlock:
    """The ``reply`` callable an exported method receives. Call it at most once;
    if it is garbage-collected uncalled, the caller gets ``ReplyInvalid``."""

    __slots__ = ("__weakref__", "_conn", "_key", "_link", "_method", "_seq", "_transaction", "_used")

    def __init__(self, conn: Connection, link: _Link, seq: int, method: MethodSpec) -> None:
        self._conn = conn
        self._link = link
        self._seq = seq
        self._method = method
        self._used = False
        # A reply still owed keeps a launched service from exiting when idle (NSXPC M4).
        self._transaction = _transactions.implicit and _transactions.begin_implicit()
        # Counted among the replies owed to the peer (Limits.max_calls_in_flight); keyed
        # by a number of our own, never by the peer's sequence number.
        self._key = key = next(_reply_keys)
        link.owed.add(key)

    def __repr__(self) -> str:
        state = "used" if self._used else "pending"
        return f"<nsxpc reply block of {self._method.selector!r} ({state})>"

    def __call__(self, *values: object) -> None:
        if self._used:
            raise RuntimeError(f"the reply block of {self._method.selector!r} was already called")
        self._used = True
        if self._transaction:
            _transactions.end_transaction()
        link = self._link
        link.owed.discard(self._key)
        if link.paused:
            self._conn._answered(link, self._key)
        try:
            frame, fds = link.core.reply(self._seq, self._method, values)
        except EncodingError as exc:
            # The caller must still get exactly one answer: tell it the reply was bad.
            error = ReplyInvalid(f"the reply to {self._method.selector!r} could not be encoded: {exc.message}")
            self._conn._write(link, link.core.failure(self._seq, error))
            raise
        self._conn._write(link, frame, fds)

    def _fail(self, error: XPCError) -> None:
        if not self._used:
            self._used = True
            if self._transaction:
                _transactions.end_transaction()
            self._conn._answered(self._link, self._key)
            self._conn._write(self._link, self._link.core.failure(self._seq, error))

    def __del__(self) -> None:
        if self._used:
            return
        self._used = True
        try:
            if self._transaction:
                _transactions.end_transaction()
            error = ReplyInvalid(f"the reply block of {self._method.selector!r} was released without being called")
            conn, link, key, frame = self._conn, self._link, self._key, self._link.core.failure(self._seq, error)

            # Never write (nor take a lock) from a finalizer (it may run while this thread
            # holds the send lock): hand the failure to the connection's queue.
            def fail_later() -> None:
                conn._answered(link, key)
                conn._write(link, frame)

            conn._post(fail_later)
        except Exception:
            pass


class Connection(Generic[Remote]):
    """A connection to a service, a listener endpoint, or (on a listener) a client (NSXPCConnection).

    Exactly one of the keyword arguments names the peer:

    Args:
        mach_service_name: a named service served by a ``Listener(mach_service_name=...)``.
        service_name: a service bundle launched on demand.
        listener_endpoint: a ``ListenerEndpoint``, e.g. of an anonymous listener.
        loop: an asyncio event loop: handlers, reply blocks and exported calls
            (``async def`` methods included) then run on it (docs/ASYNCIO.md).

    A connection starts suspended: configure it, then ``resume()``. Calls made
    before that are queued and sent in order.

    Raises:
        TypeError: not exactly one peer is named, or ``loop`` is not an asyncio loop.
        ValueError: ``loop`` is closed.
    """

    #: The handshake kind this class speaks: "nsxpc" (proxies); nsxpc._session's
    #: message connections speak "xpc" (docs/MESSAGES.md).
    _kind = "nsxpc"
    _refusal_reason: str | None = None

    # Defaults of the state an instance replaces when it changes (set here once, not per
    # connection: a listener makes one for every peer). Mutable state is per instance
    # (_init_common).
    mach_service_name: str | None = None
    service_name: str | None = None
    endpoint: ListenerEndpoint | None = None
    _interruptible = False
    _loop: Any = None  # the asyncio loop of a connection made with loop= (nsxpc._aio)
    _link: _Link | None = None
    _creds: PeerCredentials | None = None
    _ever_connected = False
    _thread = False  # whether the queue thread was started (or never will be: see _invalidate)
    _wake_fd = -1
    _epoll: select.epoll | None = None
    _finished = False
    _queue_closed = False
    _wants_input = False
    _remote_interface: Interface | None = None
    _exported_interface: Interface | None = None
    _exported_object: object = None
    _interruption_handler: Callable[[], object] | None = None
    _invalidation_handler: Callable[[], object] | None = None
    _listener: Listener | None = None
    _handshake_deadline: float | None = None
    _invalid_reason = ""
    _requirement: PeerRequirement | None = None
    # Callers waiting for a call slot (Limits.max_calls_in_flight) wait on the send lock,
    # with a condition made by the first of them (_take_slot).
    _slot_cond: threading.Condition | None = None
    _slot_waiters = 0

    def __init__(
        self,
        *,
        mach_service_name: str | None = None,
        service_name: str | None = None,
        listener_endpoint: ListenerEndpoint | None = None,
        loop: Any = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        named = [v for v in (mach_service_name, service_name, listener_endpoint) if v is not None]
        if len(named) != 1:
            raise TypeError("Connection needs exactly one of mach_service_name=, service_name=, listener_endpoint=")
        if listener_endpoint is not None and not isinstance(listener_endpoint, ListenerEndpoint):
            raise TypeError(
                f"listener_endpoint must be an nsxpc.ListenerEndpoint, not {type(listener_endpoint).__name__}"
            )
        self._init_common(limits)
        if loop is not None:
            from ._aio import bind_loop  # asyncio is imported only by programs that use it

            bind_loop(self, loop)
        self.mach_service_name = mach_service_name
        self.service_name = service_name
        self.endpoint = listener_endpoint
        if mach_service_name is not None:
            self._path = service_socket_path(mach_service_name)
            self._token = b""
            self._interruptible = True
            self._describe = f"the service named {mach_service_name}"
        elif service_name is not None:
            check_service_name(service_name)
            self._path = ""  # known once the service is launched (first message)
            self._token = b""
            self._interruptible = True
            self._describe = f"the service named {service_name}"
        else:
            assert listener_endpoint is not None
            self._path = listener_endpoint.path
            self._token = listener_endpoint.token
            self._interruptible = False
            self._describe = "the listener endpoint" if listener_endpoint.token else f"the listener at {self._path}"

    def _init_common(self, limits: Limits) -> None:
        self._limits = limits
        self._life = Lifecycle()
        self._send_lock = _thread.RLock()
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._queue: collections.deque[Callable[[], object]] = collections.deque()
        self._queue_lock = _thread.allocate_lock()
        # Whoever holds _read_lock reads the socket and decodes frames: the queue thread,
        # or a synchronous caller reading its own reply.
        self._read_lock = _thread.RLock()
        self._watch_lock = _thread.allocate_lock()
        self._exports = ExportTable()
        # (link, id) of proxies the peer passed us that were garbage-collected: RELEASEs
        # to send. Appended by finalizers without a lock (deque.append is atomic).
        self._releases: collections.deque[tuple[Any, int]] = collections.deque()

    @classmethod
    def _accepted(
        cls,
        listener: Listener,
        sock: socket.socket,
        limits: Limits,
        creds: PeerCredentials | None = None,
        data: bytes = b"",
        fds: tuple[int, ...] = (),
    ) -> Connection:
        """A listener's side of a new connection. The listener passes the peer's identity
        and, once it has read a whole first frame (the handshake), those bytes: then no
        thread waited for a silent peer. Without them this queue reads the handshake."""
        self = object.__new__(cls)
        self._init_common(limits)
        if getattr(listener, "_loop", None) is not None:
            from ._aio import bind_accepted

            bind_accepted(self, listener._loop)  # accepted connections run on the listener's loop
        self._listener = listener
        if creds is None:
            creds = peer_credentials(sock)
        self._creds = creds
        # A peer that reads nothing can make us hold only this much, this long (slow consumer).
        limit_sending(sock, limits.max_outgoing_buffer, limits.send_timeout)
        self._describe = f"the connection from pid {creds.pid}"
        core = ConnectionCore(client=False, exports=self._exports, limits=limits, kind=self._kind)
        self._wants_input = True  # a listener's side always has messages to deliver
        self._link = _Link(sock, core, creds)
        self._hook_core(core)
        self._ever_connected = True
        if data or fds:
            core.feed(data, fds)
        else:
            self._handshake_deadline = time.monotonic() + limits.handshake_timeout
        if data:
            self._post(self._deliver_buffered)  # before the queue thread starts: no wake-up to send
        self._start_queue()
        return self

    # ------------------------------------------------------------------ configuration

    def __repr__(self) -> str:
        peer = f" pid={self._creds.pid}" if self._creds else ""
        return f"<nsxpc.Connection to {self._describe} {self.state.name}{peer}>"

    @property
    def state(self) -> ConnectionState:
        """Where the connection is in its life cycle."""
        return self._life.state

    @property
    def remote_object_interface(self) -> Interface[Remote] | None:
        """The interface of the object on the other side (required to send messages)."""
        return self._remote_interface

    @remote_object_interface.setter
    def remote_object_interface(self, value: Interface[Remote] | None) -> None:
        if value is not None and not isinstance(value, Interface):
            raise TypeError(f"remote_object_interface must be an nsxpc.Interface, not {type(value).__name__}")
        self._remote_interface = value

    @property
    def exported_interface(self) -> Interface | None:
        """The interface of ``exported_object`` (required if an object is exported)."""
        return self._exported_interface

    @exported_interface.setter
    def exported_interface(self, value: Interface | None) -> None:
        if value is not None and not isinstance(value, Interface):
            raise TypeError(f"exported_interface must be an nsxpc.Interface, not {type(value).__name__}")
        self._exported_interface = value
        self._update_exports()

    @property
    def exported_object(self) -> object:
        """The object whose methods the peer may call (held strongly until invalidation)."""
        return self._exported_object

    @exported_object.setter
    def exported_object(self, value: object) -> None:
        self._exported_object = value
        self._update_exports()

    def _update_exports(self) -> None:
        if self._exported_object is not None and self._exported_interface is not None and not self._life.invalid:
            if self._loop is None:
                _refuse_coroutines(self._exported_object, self._exported_interface)
            self._exports[_messages.ROOT_OBJECT] = (self._exported_object, self._exported_interface)
            self._want_input()
        else:
            self._exports.pop(_messages.ROOT_OBJECT, None)

    @property
    def interruption_handler(self) -> Callable[[], object] | None:
        """Called on the connection's queue when the peer went away but may come back."""
        return self._interruption_handler

    @interruption_handler.setter
    def interruption_handler(self, value: Callable[[], object] | None) -> None:
        self._interruption_handler = value

    @property
    def invalidation_handler(self) -> Callable[[], object] | None:
        """Called once, last of all the connection's callbacks, when it becomes invalid."""
        return self._invalidation_handler

    @invalidation_handler.setter
    def invalidation_handler(self, value: Callable[[], object] | None) -> None:
        self._invalidation_handler = value

    @property
    def peer_credentials(self) -> PeerCredentials | None:
        """The peer's identity as the kernel gave it at connect, or None before connecting."""
        return self._creds

    def set_peer_requirement(self, requirement: PeerRequirement) -> None:
        """Require the peer to satisfy ``requirement`` (``-[NSXPCConnection
        setCodeSigningRequirement:]``): checked once, against its identity at connect,
        before anything is sent to it or any of its messages is handled. A peer that
        fails invalidates the connection; outstanding calls end with
        ``PeerRequirementFailure``. A service this connection relaunches is checked again.

        Raises:
            TypeError: ``requirement`` is not an ``nsxpc.PeerRequirement``.
            ValueError: it can be met by an executable alone (docs/SECURITY.md).
            RuntimeError: a requirement was already set, or the connection was resumed.
        """
        req = check_sound(requirement)
        with self._send_lock:
            if self._requirement is not None:
                raise RuntimeError(f"{self!r} already has a peer requirement ({self._requirement!r})")
            if self._life.activated or self._life.invalid:
                raise RuntimeError("set_peer_requirement() must be called before resume()")
            self._requirement = req

    @property
    def process_identifier(self) -> int:
        """The peer's pid at connect (SO_PEERCRED), 0 before connecting."""
        return self._creds.pid if self._creds else 0

    @property
    def effective_user_identifier(self) -> int:
        """The peer's effective uid at connect, -1 before connecting."""
        return self._creds.uid if self._creds else -1

    @property
    def effective_group_identifier(self) -> int:
        """The peer's effective gid at connect, -1 before connecting."""
        return self._creds.gid if self._creds else -1

    @staticmethod
    def current() -> Connection | None:
        """The connection whose message (or reply) is being handled on this thread, else None
        (``+[NSXPCConnection currentConnection]``), also inside an exported ``async def`` method."""
        current = _tls.current
        if current is None and "nsxpc._aio" in sys.modules:
            from ._aio import current_connection

            return current_connection()
        return current

    # ------------------------------------------------------------------ proxies

    @property
    def remote_object_proxy(self) -> Remote:
        """A proxy without error handling: failures are logged and reply blocks released uncalled.

        Typed as the remote protocol on a ``Connection[P]`` (docs/ASYNCIO.md "Typing")."""
        return RemoteProxy(self, _messages.ROOT_OBJECT, PLAIN)  # type: ignore[return-value]

    def remote_object_proxy_with_error_handler(
        self, handler: Callable[[Exception], object], timeout: float | None = None
    ) -> Remote:
        """A proxy whose calls end in exactly one of the reply block or ``handler(error)``.

        Args:
            handler: called on the connection's queue with the ``XPCError``.
            timeout: seconds to wait for each reply before ``TimedOut``; None waits
                until the connection fails.
        """
        return RemoteProxy(self, _messages.ROOT_OBJECT, HANDLER, handler, timeout)  # type: ignore[return-value]

    def synchronous_remote_object_proxy_with_error_handler(
        self, handler: Callable[[Exception], object], timeout: float | None = None
    ) -> Any:
        """A proxy whose calls wait for their reply; with the reply block omitted a call
        returns the reply's value (a tuple for several) and raises the error instead.

        Do not use it from this connection's own queue (Apple: it would deadlock).
        """
        return RemoteProxy(self, _messages.ROOT_OBJECT, SYNC, handler, timeout)

    def async_remote_object_proxy(self, timeout: float | None = None) -> Any:
        """A proxy whose methods are coroutines: ``await proxy.m(args)`` returns the reply's
        value (None, the value, or a tuple for several) and raises the ``XPCError``
        (the asyncio form of ``remoteObjectProxyWithErrorHandler:``; docs/ASYNCIO.md).

        Raises:
            ValueError: ``timeout`` is not a positive number of seconds.
        """
        from ._aio import AsyncRemoteProxy  # asyncio is imported only by programs that use it

        return AsyncRemoteProxy(self, _messages.ROOT_OBJECT, timeout)

    def _method_for(self, target: int, name: str) -> MethodSpec:
        iface = self._remote_interface
        if iface is None:
            raise RuntimeError("set remote_object_interface before calling through a remote object proxy")
        method = iface.method(name)
        if method is None:
            raise AttributeError(f"{iface.protocol.__qualname__} has no method {name!r}")
        return method

    def _selectors_for(self, target: int) -> frozenset[str]:
        iface = self._remote_interface
        return iface.selectors if iface is not None else frozenset()

    # ------------------------------------------------------------------ life cycle

    def resume(self) -> None:
        """Balance one ``suspend()`` (or the initial suspension): messages flow when none is left.

        Raises:
            RuntimeError: resumed more times than suspended.
        """
        with self._send_lock:
            running = self._life.resume()
        if running:
            self._on_running()

    def activate(self) -> None:
        """Start an inactive connection; does nothing if it was already activated."""
        with self._send_lock:
            running = self._life.activate()
        if running:
            self._on_running()

    def suspend(self) -> None:
        """Stop delivering messages and queue outgoing ones until the matching ``resume()``."""
        with self._send_lock:
            self._life.suspend()
            link = self._link
        if link is not None:
            self._watch(link, False)

    def _watch(self, link: _Link, on: bool) -> None:
        """Watch ``link``'s socket for input, or stop. A suspended connection takes its
        socket out of the poll set entirely: epoll reports hang-ups even for a socket
        registered with no events, which would spin on a dead peer. A client whose queue
        has not started (nothing has needed it) is watched by the process's _Watcher,
        which starts the queue when the socket has something to say."""
        if link.watched == on and not (link.shared and self._epoll is not None):
            return
        with self._watch_lock:
            if link.dead:
                return
            epoll = self._epoll
            if link.shared and (not on or epoll is not None):
                _watcher.discard(link)  # stopped, or handed to the queue started meanwhile
                link.shared = link.watched = False
            if link.watched == on:
                return
            if epoll is None:
                if on and not self._thread:  # (a queue that has ended watches nothing)
                    _watcher.add(self, link)
                    link.shared = link.watched = True
                return
            try:
                if on:
                    epoll.register(link.fd, _EPOLLIN if self._wants_input else _EPOLLHUP_ONLY)
                else:
                    epoll.unregister(link.fd)
                link.watched = on
            except (OSError, ValueError):
                pass

    def _want_input(self) -> None:
        """From now on the queue thread reads everything that arrives (sticky): the
        connection exports an object, or has replies to deliver on its queue."""
        if self._wants_input:
            return
        with self._watch_lock:
            self._wants_input = True
            link, epoll = self._link, self._epoll
            if link is not None and link.watched and not link.dead and epoll is not None:
                try:
                    epoll.modify(link.fd, _EPOLLIN)
                except OSError:
                    pass
        if not self._thread and self._life.running:
            self._start_queue()  # only a queue of its own reads everything

    def _on_running(self) -> None:
        if self._wants_input or self._listener is not None or self._loop is not None:
            # Otherwise (a client whose callers read their own replies) the queue starts
            # when something needs it: a callback to run, or news from the socket.
            self._start_queue()
        link = self._link
        if link is not None:
            self._watch(link, True)
        with self._send_lock:
            # A named service or endpoint is looked up at resume (L1/L2); a service
            # launched on demand is launched by the first message, not by resume().
            self._flush(eager=not self._ever_connected and self.service_name is None)
            link = self._link
        if link is not None and link.core.decoder.buffered:
            self._post(self._deliver_buffered)  # frames that arrived while suspended

    def invalidate(self) -> None:
        """Close the connection for good. Outstanding calls end with ``ConnectionInvalid``;
        the invalidation handler runs once, after every other callback. Idempotent."""
        self._invalidate(f"{self._describe} was invalidated from this process")

    def _invalidate(self, reason: str, error: XPCError | None = None) -> None:
        with self._send_lock:
            if not self._life.invalidate():
                return
            self._invalid_reason = reason
            link = self._link
            inline = not (
                self._thread
                or self._loop is not None
                or self._outbox
                or self._interruption_handler
                or self._invalidation_handler
            )
            if inline:
                self._thread = True  # no queue starts from now on
        if inline:
            # Nothing ever needed the queue and nothing is left to run on it (no handler,
            # nothing queued; calls in flight are synchronous callers, woken wherever
            # they are ended): end here, without starting a thread to do it (the link is
            # shut down and closed by _take_link). What is posted from now on runs on the
            # shared late queue, as after a queue's end.
            with self._queue_lock:
                self._queue_closed = True
            self._teardown(error or ConnectionInvalid(reason))
            return
        if link is not None:
            _shutdown(link.sock)
        self._start_queue()
        self._post(lambda: self._teardown(error or ConnectionInvalid(reason)))

    def schedule_send_barrier(self, block: Callable[[], object]) -> None:
        """Run ``block`` on the connection's queue once every message sent before it has
        been written (``scheduleSendBarrierBlock:``). On an invalid connection it runs at once."""
        with self._send_lock:
            invalid = self._life.invalid
            if not invalid:
                if self._outbox:
                    self._outbox.append(_Outgoing(None, [], [], None, 0, barrier=block))
                else:
                    self._start_queue()
                    self._post(block)
        if invalid:
            block()

    # ------------------------------------------------------------------ the serial queue

    def _start_queue(self) -> None:
        with self._send_lock:
            if self._thread:
                return
            self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._epoll = select.epoll()
            self._epoll.register(self._wake_fd, select.EPOLLIN)
            link = self._link
            if link is not None:
                self._watch(link, True)
            _run_on_worker(self._run)
            self._thread = True

    def _post(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the connection's queue (or, once that queue has ended after
        invalidation, on the shared queue for late work, still one at a time)."""
        with self._queue_lock:
            if self._queue_closed:
                _late_work(fn)
                return
            self._queue.append(fn)
            fd = self._wake_fd
        if fd >= 0 and _tls.queue is not self:  # the queue's own thread runs it before it polls again
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass
        elif not self._thread:
            self._start_queue()  # a client's queue starts when first needed (see _on_running)

    def _run(self) -> None:
        _tls.queue = self  # reset at the end: the thread may serve another queue next
        epoll = self._epoll
        assert epoll is not None
        wake = self._wake_fd
        queue = self._queue
        try:
            while True:
                while queue:
                    self._run_item(queue.popleft())
                if self._releases:
                    self._send_releases()
                if self._finished:
                    break
                deadline = self._handshake_deadline
                events = epoll.poll(-1.0 if deadline is None else max(0.0, deadline - time.monotonic()))
                if not events and deadline is not None:
                    self._handshake_expired()
                for fd, _mask in events:
                    if fd == wake:
                        try:
                            os.eventfd_read(wake)
                        except BlockingIOError:
                            pass
                    else:
                        self._on_readable()
        finally:
            _tls.queue = None
            with self._queue_lock:
                self._queue_closed = True
                self._epoll = None
                self._wake_fd = -1
                leftovers = list(queue)
                queue.clear()
            epoll.close()
            os.close(wake)
            # Work posted after the last drain (a call on the invalid connection, a late
            # reply-block finalizer) still runs, in order, on the shared late queue.
            for item in leftovers:
                _late_work(item)

    def _run_item(self, item: Callable[[], object]) -> None:
        try:
            item()
        except Exception:
            log.exception("nsxpc: a callback on the queue of %s raised", self._describe)

    def _on_readable(self) -> None:
        """The socket is readable: read what is there and deliver it, unless a
        synchronous caller is reading (it hands over what is not its own)."""
        if not self._read_lock.acquire(False):
            return
        try:
            link = self._link
            if link is None or link.dead:
                return
            if link.paused or not (self._life.running or link.core.phase == "hello"):
                # Paused by Limits.max_calls_in_flight (re-watched by _resume_input once a
                # reply is sent), or suspended (or accepted but not yet resumed by the
                # delegate): leave the bytes in the kernel, which pushes back on the peer.
                self._watch(link, False)
                return
            received = self._receive(link)
            if received is True:
                self._deliver(link)
            elif received is not False:
                received()
        finally:
            self._read_lock.release()

    def _receive(self, link: _Link, block: bool = False) -> bool | Callable[[], object]:
        """Read once from ``link`` into its core (the caller holds the read lock).

        Returns True when bytes arrived, False when none were ready, or the action
        that ends the link (end of stream, a failure), which must run on the queue.
        """
        try:
            chunk = recv_chunk(link.sock, link.buffer, block)
        except ConnectionInvalid as exc:
            return functools.partial(self._invalidate, exc.message)
        except OSError as exc:
            return functools.partial(self._lose_link, link, f"the connection failed: {exc.strerror}")
        if chunk is None:
            return False
        data, fds = chunk
        if not data:
            for fd in fds:
                os.close(fd)
            # Everything the peer sent before it closed was read: nothing to drain.
            return functools.partial(self._lose_link, link, "the peer closed the connection", drained=True)
        link.core.feed(data, fds)
        return True

    def _deliver_buffered(self) -> None:
        link = self._link
        if link is None or link.dead or not self._read_lock.acquire(False):
            return
        try:
            self._deliver(link)
        finally:
            self._read_lock.release()

    def _deliver(self, link: _Link) -> None:
        core = link.core
        decoder = core.decoder
        life = self._life
        cap = self._limits.max_calls_in_flight
        while link is self._link and not link.dead:
            if not (life.running or core.phase == "hello"):
                return
            if len(link.owed) >= cap and self._pause_input(link):
                return
            if not decoder.buf:
                return  # everything received was delivered (the common case: no call to find out)
            event = core.next_event()
            if event is None:
                return
            if type(event) is CallReceived:  # the hot kind, without the dispatch below
                self._invoke_exported(link, event)
            else:
                self._handle(link, event)

    def _handle(self, link: _Link, event: object) -> None:
        t = type(event)
        if t is Resolved:
            ev_r: Resolved = event  # type: ignore[assignment]
            self._complete(ev_r.call, ev_r.values, ev_r.error)
        elif t is CallReceived:
            self._invoke_exported(link, event)  # type: ignore[arg-type]
        elif t is CallRejected:
            ev_x: CallRejected = event  # type: ignore[assignment]
            log.warning("nsxpc: dropped a message from %s: %s", self._describe, ev_x.error.message)
            if ev_x.seq:
                self._write(link, link.core.failure(ev_x.seq, ev_x.error))
        elif t is Welcomed:
            pass
        elif t is HelloReceived:
            self._on_hello(link, event)  # type: ignore[arg-type]
        elif t is BadHello:
            ev_b: BadHello = event  # type: ignore[assignment]
            self._refuse(link, ConnectionInvalid(ev_b.error.message))
        elif t is Refused:
            ev_f: Refused = event  # type: ignore[assignment]
            log.warning("nsxpc: %s refused the connection: %s", self._describe, ev_f.error.message)
            self._invalidate(f"{self._describe} refused the connection: {ev_f.error.message}")
        elif t is Violation:
            ev_v: Violation = event  # type: ignore[assignment]
            log.error("nsxpc: invalidating %s: %s", self._describe, ev_v.error.message)
            self._invalidate(f"{self._describe} broke the protocol: {ev_v.error.message}")
        elif t is Released:
            self._on_released(event.target)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ objects by proxy

    def _hook_core(self, core: ConnectionCore) -> None:
        # Replies are encoded, and proxies decoded, for one link: bound to its core.
        core.export_object = functools.partial(self._export, core=core)
        core.import_proxy = functools.partial(self._import_proxy, core=core)

    def _export(self, value: object, slot: Any, core: ConnectionCore | None = None) -> int:
        """Encoder hook: export ``value`` for a by-proxy slot; returns its id. With
        ``core`` (a reply), only while that core's link is the current one."""
        iface = interface_of(slot)
        self._want_input()  # the peer may call the object at any time: read what arrives
        with self._send_lock:
            link = self._link
            if self._life.invalid or (core is not None and (link is None or link.core is not core)):
                return 0  # never sent: the call fails with ConnectionInvalid, the reply is dropped
            return self._exports.export(value, iface)

    def _import_proxy(self, ident: int, slot: Any, core: ConnectionCore | None = None) -> object:
        """Decoder hook: a proxy for the object ``ident`` that the peer passed by proxy.

        Each one received is one reference the peer counted; it is released when the
        proxy (and every proxy made from it) is garbage-collected. A proxy decoded
        from a link that is already gone is stale from the start."""
        link = self._link
        if link is not None and link.core is not core:
            link = None
        ref = RemoteRef(self, link, ident, interface_of(slot))
        return RemoteProxy(self, ident, PLAIN, ref=ref)

    def _export_any(self, value: object, slot: Any) -> int:
        return self._export(value, slot)

    def _release_later(self, link: Any, ident: int) -> None:
        """From a RemoteRef's finalizer, on any thread: queue a RELEASE and wake the queue.

        Never waits for a lock: the finalizer may run while this thread holds
        ``_queue_lock`` (in ``_post``). If another holder has it, that holder is
        posting (and wakes the queue after this append) or closing the queue."""
        if link is None or link.dead:
            return
        self._releases.append((link, ident))
        lock = self._queue_lock
        if lock.acquire(False):
            try:
                fd = self._wake_fd
                if fd >= 0 and not self._queue_closed:
                    os.eventfd_write(fd, 1)
            finally:
                lock.release()

    def _send_releases(self, link: _Link | None = None) -> None:
        """Write the queued RELEASEs of ``link`` (default: the current link) in one frame
        batch; those of links that are gone are dropped with them."""
        with self._send_lock:
            current = self._link if link is None else link
            frames = []
            releases = self._releases
            while releases:
                owner, ident = releases.popleft()
                if current is not None and owner is current and not current.dead:
                    frames.append(current.core.release(ident))
            if not frames or current is None:
                return
            if current.corked is not None:
                frames.insert(0, self._take_corked(current))
            try:
                send_frame(current.sock, b"".join(frames))
                return
            except OSError as exc:
                reason = f"writing failed: {exc.strerror}"
        self._post(functools.partial(self._lose_link, current, reason))

    def _on_released(self, ident: int) -> None:
        """The peer dropped one proxy of our object ``ident``."""
        with self._send_lock:
            known, entry = self._exports.release(ident)
        if not known:
            log.warning("nsxpc: %s released object %d, which this side did not pass it", self._describe, ident)
        del entry  # the exporter's last reference goes here, outside the lock

    def _stale_call(self, method: MethodSpec, call: _Call | None, by_proxy: bool) -> None:
        """Fail a call that can no longer reach its object (called with _send_lock held)."""
        if by_proxy:
            error: XPCError = ConnectionInvalid(_stale_message(self._describe))
        else:
            error = ConnectionInterrupted(
                f"{self._describe} was interrupted while {method.selector!r}, which passes an object "
                "by proxy, was being sent"
            )
        if call is not None:
            self._fail(call, error)
        else:
            log.warning("nsxpc: %s was not sent: %s", method.selector, error.message)

    @property
    def _exported_object_count(self) -> int:
        """How many objects passed by proxy this side holds for the peer (tests, debugging)."""
        return self._exports.exported_count

    # ------------------------------------------------------------------ listener side

    def _on_hello(self, link: _Link, event: HelloReceived) -> None:
        self._handshake_deadline = None
        listener = self._listener
        assert listener is not None
        if listener._token and not _same_secret(event.token, listener._token):
            self._refuse(link, ConnectionInvalid("the endpoint does not match this listener"))
            return
        if not listener._offer(self):
            # An XPCListener's request.reject(reason=...) gives its own reason (nsxpc._session).
            reason = self._refusal_reason or "the listener's delegate refused the connection"
            self._refuse(link, ConnectionInvalid(reason))
            return
        if self._requirement is not None and self._creds is not None:
            # Set by the delegate: checked now, before WELCOME and any message of the peer.
            try:
                check_peer(self._requirement, self._creds, f"the peer of {self._describe}")
            except PeerRequirementFailure as exc:
                self._refuse(link, exc)
                return
        with self._send_lock:
            welcome = link.core.welcome()
            if not (link.core.decoder.buffered and self._life.running and not self._outbox):
                self._write(link, welcome)
                link.ready = True
                self._flush(eager=False)
                return
            # Calls pipelined behind the HELLO are here already (the usual first call):
            # deliver them now, and the WELCOME goes out with the first thing written
            # (their reply, most often): one write, and one wake-up of the peer, not two.
            # Until then nothing else is sent (the link is not ready).
            link.corked = welcome
        self._deliver(link)
        with self._send_lock:
            if link.corked is not None and not link.dead:
                self._write(link, b"")  # nothing was written: the WELCOME alone
            self._flush(eager=False)

    def _take_corked(self, link: _Link) -> bytes:
        """With the send lock held: the handshake frame ``link`` holds back (a client's
        HELLO, see _connect; a listener side's WELCOME, see _on_hello), to be written in
        front of anything else; the link is ready from now on."""
        frame, link.corked = link.corked, None
        link.ready = True
        return frame or b""

    def _refuse(self, link: _Link, error: XPCError) -> None:
        log.info("nsxpc: refusing %s: %s", self._describe, error.message)
        self._write(link, link.core.refuse(error))
        reason = f"{self._describe} was refused: {error.message}"
        # This side's own calls end with the requirement failure itself (API section 9).
        self._invalidate(reason, PeerRequirementFailure(reason) if isinstance(error, PeerRequirementFailure) else None)

    def _handshake_expired(self) -> None:
        if self._handshake_deadline is not None and time.monotonic() >= self._handshake_deadline:
            self._handshake_deadline = None
            log.warning("nsxpc: %s did not complete the handshake in time; closing it", self._describe)
            self._invalidate(f"{self._describe} did not complete the handshake in time")

    # ------------------------------------------------------------------ sending

    def _write(self, link: _Link, frame: bytes, fds: list[int] | tuple[int, ...] = ()) -> bool:
        lock = self._send_lock
        lock.acquire()  # not `with`: on the hot path, its two method calls cost as much again
        try:
            if link.dead:
                return False
            if self._releases:
                self._send_releases(link)  # proxies dropped before this reply: released first
            if link.corked is not None:
                frame = self._take_corked(link) + frame
            try:
                send_frame(link.sock, frame, fds)
                return True
            except OSError as exc:
                reason = f"writing failed: {exc.strerror}"
                if reason.endswith(SLOW_CONSUMER):
                    _shutdown(link.sock)  # a slow consumer: no more writes that wait send_timeout
        finally:
            lock.release()
        self._post(lambda: self._lose_link(link, reason))
        return False

    def _call(
        self,
        target: int,
        method: MethodSpec,
        values: list[Any],
        reply: Callable[..., object] | None,
        mode: str,
        handler: Any,
        timeout: float | None,
        ref: RemoteRef | None = None,
    ) -> Any:
        """Send one proxy call; see RemoteProxy for the three modes. ``ref`` is set for a
        call on an object the peer passed by proxy."""
        if not method.wants_reply:
            self._send_call(target, method, values, None, ref)
            return None
        if mode != SYNC and reply is None:
            raise TypeError(f"{method.selector}() needs its reply block {method.reply_name!r}")
        call = _Call(method, target, reply, handler, mode)
        call.timeout = timeout
        if mode == SYNC:
            if _tls.queue is self:
                raise RuntimeError(
                    "a synchronous call from the connection's own queue would deadlock: "
                    "use remote_object_proxy_with_error_handler there"
                )
            deadline = None if timeout is None else time.monotonic() + timeout
            link = self._link
            # Not connected yet (a service launched by its first message) or interrupted:
            # sending connects, and this caller reads its reply too, unless the queue
            # thread reads everything anyway (it would find the new socket readable first).
            if link is None or link.dead:
                fresh, direct = True, ref is None and not self._wants_input
            else:
                fresh = False
                direct = (
                    link.ready
                    and (ref is None or ref.link is link)
                    and len(link.core.pending) < self._limits.max_calls_in_flight  # _calls_in_flight(): no outbox
                )
            if direct and self._life.running and not self._outbox and self._read_lock.acquire(False):
                # The caller reads its own reply: no hand-over from the queue thread. The read
                # lock is taken before the call is sent, so no other reader can take the reply.
                self._send_and_read(None if fresh else link, call, deadline, (target, method, values, ref))
            else:
                self._want_input()  # the queue thread will read this reply
                self._send_call(target, method, values, call, ref)
            return self._wait(call, timeout, deadline, reply is None)
        self._want_input()
        if timeout is not None:
            from ._timers import schedule  # loaded on first use: most programs never time out a call

            call.timer = schedule(timeout, lambda: self._expire_async(call, timeout))
        self._send_call(target, method, values, call, ref)
        return None

    def _send_and_read(
        self,
        link: _Link | None,
        call: _Call,
        deadline: float | None,
        send: tuple[int, MethodSpec, list[Any], RemoteRef | None],
    ) -> None:
        """With the read lock taken: send the call (``send``: ``_send_call``'s arguments)
        on ``link`` (None: on the link that sending makes), read until its reply, and
        release the lock."""
        unwatch = link if link is not None and self._wants_input else None
        read: _Link | None = None
        try:
            if unwatch is not None:
                self._watch(unwatch, False)
            try:
                self._send_call(send[0], send[1], send[2], call, send[3])
                read = call.link
                if read is not None and (link is None or read is link):
                    self._read_reply(read, call, deadline)
            finally:
                if unwatch is not None:
                    self._watch(unwatch, True)
        finally:
            self._read_lock.release()
        # Frames read past this call's reply (another caller's, a callback) are handed to
        # the queue, after the lock is released: posted while holding it, the queue thread
        # could find it taken, give up, and nobody would read them (every later holder of
        # the lock does the same on leaving).
        if read is not None and read.core.decoder.buffered and not read.dead:
            self._post(self._deliver_buffered)
        if not call.done and (read is None or (link is not None and read is not link)):
            # Queued (not connected after all), or sent on a newer link than the one
            # expected (it died meanwhile): not read here, so the queue thread reads it.
            self._want_input()

    def _send_call(
        self, target: int, method: MethodSpec, values: list[Any], call: _Call | None, ref: RemoteRef | None = None
    ) -> None:
        exports = self._exports
        generation = exports.generation
        args, fds = encode_arguments(
            method.args, values, method.selector, "argument", self._limits.max_depth, self._export_any, self._limits,
            method.arg_types,
        )  # fmt: skip
        lock = self._send_lock
        lock.acquire()  # not `with`: see _write
        try:
            link = self._link
            if (  # the common case, in one test: a live link to write to, nothing in the way
                link is not None
                and link.ready
                and not link.dead
                and self._life.running
                and not self._outbox
                and not self._releases
                and ref is None
                and exports.generation == generation
                and (call is None or len(link.core.pending) < self._limits.max_calls_in_flight)
            ):
                pass
            elif not self._admit_call(method, args, call, ref, generation):
                return
            elif not (self._life.running and (link := self._link) is not None and link.ready and not link.dead
                      and not self._outbox):  # fmt: skip
                # Queued: what is sent must be what the caller passed now (a message is copied
                # when it is sent), not what a dict a slot took as it is holds later.
                args = [copy.deepcopy(a) if type(a) is dict else a for a in args]
                self._outbox.append(_Outgoing(method, args, fds, call, target, origin=ref.link if ref else None))
                if self._life.running:
                    self._flush(eager=False)
                return
            frame = link.core.invoke(method, args, len(fds), call, target)
            if call is not None:
                call.link = link
            try:
                send_frame(link.sock, frame, fds)
                return
            except OSError as exc:
                reason = f"writing failed: {exc.strerror}"
        finally:
            lock.release()
        self._post(lambda: self._lose_link(link, reason))

    def _admit_call(
        self, method: MethodSpec, args: Sequence[object], call: _Call | None,
        ref: RemoteRef | None, generation: int,
    ) -> bool:  # fmt: skip
        """With ``_send_lock`` held, for a call that is not the common case: wait for a
        slot under Limits.max_calls_in_flight, fail it on an invalid connection or a stale
        proxy, and send the pending releases first. False if the call was ended here."""
        if (
            call is not None
            and self._calls_in_flight() >= self._limits.max_calls_in_flight
            and not self._life.invalid
            and not self._take_slot(call)
        ):
            return False
        if self._life.invalid:
            if call is not None:
                self._fail(call, ConnectionInvalid(self._invalid_message()))
            return False
        link = self._link
        if (ref is not None and (ref.link is not link or link is None or link.dead)) or (
            self._exports.generation != generation and _carries_proxy(args)
        ):
            self._stale_call(method, call, ref is not None)
            return False
        if self._releases:
            self._send_releases(link)  # before this message: the peer sees them first
        return True

    def _flush(self, *, eager: bool) -> None:
        """Connect if needed and write the outbox. Called with ``_send_lock`` held. A
        handshake frame the link holds back (``_take_corked``) goes in front of the first
        write (``_write``), or alone when there is nothing to write."""
        if not self._life.running:
            return
        link = self._link
        fresh = link is None or link.dead
        if link is None or link.dead:
            if not self._outbox and not eager:
                return
            try:
                link = self._connect()
            except XPCError as err:
                self._connect_failed(err)
                return
        if not link.ready and link.corked is None:
            return  # a listener's side before its WELCOME
        if self._releases:
            self._send_releases(link)
        while self._outbox:
            item = self._outbox.popleft()
            if item.barrier is not None:
                self._post(item.barrier)
                continue
            assert item.method is not None
            if item.origin is not None and item.origin is not link:
                self._stale_call(item.method, item.call, True)
                continue
            frame = link.core.invoke(item.method, item.args, len(item.fds), item.call, item.target)
            if item.call is not None:
                item.call.link = link
            if not self._write(link, frame, item.fds):
                return
        if link.corked is not None:
            self._write(link, b"")  # nothing was queued: the handshake frame alone
        if fresh and self._life.running:
            self._watch(link, True)  # after the first write: the HELLO and call go out first

    def _connect(self) -> _Link:
        """Connect to the peer; its HELLO is held back to go in the same write as the
        first message (``_flush``): the listener reads both at once, and can answer
        with its WELCOME and the reply in one write (see _on_hello). Called with
        ``_send_lock`` held.

        Raises:
            XPCError: nobody listens, or the connection failed.
        """
        service = None
        if self.service_name is not None:
            from ._launcher import launch_service  # imported on first use: most processes launch nothing

            service = launch_service(self.service_name)  # raises XPCError naming the service
            self._path = service.socket_path
        try:
            try:
                sock = connect_unix(self._path)
            except OSError as exc:
                if service is None or not is_no_listener(exc) or not service.wait_for_exit(_DYING_GRACE):
                    raise
                # The instance was dying: its socket closed before its exit was reported.
                assert self.service_name is not None
                service = launch_service(self.service_name)
                self._path = service.socket_path
                sock = connect_unix(self._path)
        except OSError as exc:
            if is_no_listener(exc):
                raise ConnectionInvalid(f"no listener for {self._describe}") from exc
            raise ConnectionInvalid(f"cannot connect to {self._describe}: {exc.strerror}") from exc
        try:
            creds = _service_credentials(sock, service)
            # Before anything is sent: an untrusted peer gets not even our HELLO.
            check_peer(self._requirement, creds, self._describe.capitalize())
        except PeerRequirementFailure:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise ConnectionInvalid(f"cannot connect to {self._describe}: {exc.strerror}") from exc
        core = ConnectionCore(client=True, exports=self._exports, limits=self._limits, kind=self._kind)
        link = _Link(sock, core, creds)
        self._hook_core(core)
        # A listener at one of its caps refuses before reading the HELLO: the write then
        # fails, and the REFUSE it sent is delivered before the link is dropped (_lose_link).
        link.corked = core.hello(self._token)
        self._creds = creds
        self._link = link
        self._ever_connected = True
        if service is not None:
            # The launcher sees the service die through its pidfd, even when a leaked
            # copy of the socket keeps end-of-stream from arriving (research 5.4).
            def exited(reason: str, link: _Link = link) -> None:
                self._post(functools.partial(self._lose_link, link, reason))

            service.add_exit_callback(exited)
            link.on_close = functools.partial(service.remove_exit_callback, exited)
            link.service = service
        return link

    def _connect_failed(self, err: XPCError) -> None:
        """Called with ``_send_lock`` held."""
        if isinstance(err, PeerRequirementFailure):
            log.warning("nsxpc: %s", err.message)
            self._life_invalidate_later(err.message, err)
            return
        if (not self._ever_connected or not self._interruptible) and not err.can_retry:
            # The first attempt (or an endpoint): the connection can never be formed.
            log.warning("nsxpc: %s", err.message)
            self._life_invalidate_later(err.message)
            return
        # The service went away earlier and is still not back: fail these messages only.
        items = list(self._outbox)
        self._outbox.clear()
        for item in items:
            if item.barrier is not None:
                self._post(item.barrier)
            elif item.call is not None:
                self._fail(item.call, ConnectionInterrupted(f"{self._describe} is not available: {err.message}"))

    def _life_invalidate_later(self, reason: str, error: XPCError | None = None) -> None:
        if self._life.invalidate():
            self._invalid_reason = reason
            self._start_queue()
            self._post(lambda: self._teardown(error or ConnectionInvalid(reason)))

    def _invalid_message(self) -> str:
        return self._invalid_reason or f"{self._describe} is invalid"

    # ------------------------------------------------------------------ ending calls

    def _fail(self, call: _Call, error: XPCError) -> None:
        """End ``call`` with ``error`` from any thread (on the queue, or waking its waiter)."""
        if call.mode == SYNC:
            self._complete(call, None, error)
        else:
            self._start_queue()
            self._post(lambda: self._complete(call, None, error))

    def _complete(self, call: _Call, values: list[Any] | None, error: XPCError | None) -> None:
        """Run the end of a call: exactly once, whatever path got here."""
        if call.done:
            return
        call.done = True
        if self._slot_waiters:
            self._slot_freed()
        if call.timer is not None:
            call.timer.cancel()
        if call.mode == SYNC:
            call.outcome = (values, error)
            waiter = call.waiter  # read after the outcome is set: see _wait
            if waiter is not None:
                waiter.release()
            return
        previous = _tls.current
        _tls.current = self
        try:
            if error is None:
                assert call.reply is not None and values is not None
                call.reply(*values)
            elif call.mode == HANDLER:
                call.handler(error)
            else:
                log.warning(
                    "nsxpc: %s failed: %s (no error handler: the reply block is released uncalled)",
                    call.method.selector,
                    error.message,
                )
        except Exception:
            log.exception("nsxpc: the reply block or error handler of %r raised", call.method.selector)
        finally:
            _tls.current = previous

    def _expire(self, call: _Call) -> bool:
        """Take a call whose deadline passed; False if it is already ending another way."""
        with self._send_lock:
            for item in self._outbox:
                if item.call is call:
                    self._outbox.remove(item)
                    return True
            link = call.link
            return link is not None and link.core.resolve(call.seq) is call

    def _expire_async(self, call: _Call, timeout: float) -> None:
        if self._expire(call):
            self._post(lambda: self._complete(call, None, _timed_out(call, timeout)))

    def _read_reply(self, link: _Link, call: _Call, deadline: float | None) -> None:
        """Read frames until ``call`` ends, the deadline passes, or the link fails.

        Called with the read lock held and the socket out of the queue's poll set.
        Every other event is handed to the queue in order; if any was, the call's
        own ending is queued after them too (a progress callback sent before a
        reply is delivered before it). A failing link is left to the queue thread,
        which ends this call with the other pending ones.
        """
        core = link.core
        decoder = core.decoder
        handed = False
        while not call.done:
            event = core.next_event() if decoder.buf else None  # empty: no call to find that out
            if event is None:
                remaining = None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                _bound_recv(link, remaining)
                received = self._receive(link, True)
                if received is not True and received is not False:
                    self._post(received)  # the queue thread ends the link, and with it this call
                    return
                continue
            if type(event) is Resolved and event[0] is call:
                _, values, error = event
                if handed:
                    self._post(functools.partial(self._complete, call, values, error))
                else:
                    self._complete(call, values, error)
                return
            if type(event) is Welcomed:
                continue  # nothing to do (see _handle): the first call's reply is read here too
            handed = True
            self._post(functools.partial(self._handle, link, event))

    def _wait(self, call: _Call, timeout: float | None, deadline: float | None, returns_value: bool) -> Any:
        if call.outcome is None:
            # Publish a lock, then look again: _complete sets the outcome before it reads
            # call.waiter, so either it sees this lock and releases it, or the outcome is
            # seen here.
            waiter = threading.Lock()
            waiter.acquire()
            call.waiter = waiter
        if call.outcome is not None:
            pass  # ended already (the caller read its own reply): nothing to wait for
        elif not waiter.acquire(timeout=-1.0 if deadline is None else max(0.0, deadline - time.monotonic())):
            if self._expire(call):
                call.done = True
                call.outcome = (None, _timed_out(call, timeout))
            else:
                waiter.acquire()  # it is ending right now, through another path
        assert call.outcome is not None
        values, error = call.outcome
        if returns_value:
            if error is not None:
                raise error
            assert values is not None
            if not values:
                return None
            return values[0] if len(values) == 1 else tuple(values)
        previous = _tls.current
        _tls.current = self
        try:
            if error is not None:
                call.handler(error)
            else:
                assert call.reply is not None and values is not None
                call.reply(*values)
        finally:
            _tls.current = previous
        return None

    # ------------------------------------------------------------------ limits

    def _calls_in_flight(self) -> int:
        """Calls awaiting a reply: registered on the link, or queued to be sent."""
        link = self._link
        count = len(link.core.pending) if link is not None and not link.dead else 0
        if self._outbox:
            count += sum(1 for item in self._outbox if item.call is not None)
        return count

    def _take_slot(self, call: _Call) -> bool:
        """With ``_send_lock`` held: admit ``call`` under Limits.max_calls_in_flight.

        At the cap the caller waits (back-pressure, as a full socket makes a write
        wait), bounded by the call's timeout; where waiting could never end it fails
        the call with ``LimitExceeded`` instead: on this connection's own queue or an
        event loop (which deliver the replies that free slots), or while the
        connection is not running. A caller that reads its own replies (it holds the
        read lock) is admitted: at most one call over the cap. Returns False if the
        call was ended here."""
        cap = self._limits.max_calls_in_flight
        if self._calls_in_flight() < cap:
            return True
        if _tls.queue is self or not self._life.running or _on_event_loop():
            where = "from its own queue" if _tls.queue is self else (
                "while it is not running" if not self._life.running else "from an event loop")  # fmt: skip
            self._fail(call, LimitExceeded(
                f"{call.method.selector}: {cap} calls to {self._describe} already await a reply "
                f"(nsxpc.Limits.max_calls_in_flight); a call made {where} cannot wait for one to end"))  # fmt: skip
            return False
        if self._read_lock._is_owned():  # type: ignore[attr-defined]
            return True  # a synchronous caller reading its own replies: one over the cap
        deadline = None if call.timeout is None else time.monotonic() + call.timeout
        if self._slot_cond is None:
            self._slot_cond = threading.Condition(self._send_lock)
        self._slot_waiters += 1
        try:
            while self._calls_in_flight() >= cap and not self._life.invalid:
                remaining = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if remaining <= 0:
                    self._fail(call, _timed_out(call, call.timeout))
                    return False
                # Woken when a call ends; the short bound covers ends that cannot notify
                # (the send lock was busy) and invalidation.
                self._slot_cond.wait(remaining)
        finally:
            self._slot_waiters -= 1
        return True

    def _slot_freed(self) -> None:
        # Never wait for the send lock here (a writer may hold it while the peer waits
        # for us to read): a busy lock means the waiter's next poll sees the slot.
        cond = self._slot_cond
        if cond is not None and self._send_lock.acquire(False):
            try:
                cond.notify()
            finally:
                self._send_lock.release()

    def _pause_input(self, link: _Link) -> bool:
        """The peer has Limits.max_calls_in_flight calls unanswered here: stop reading it
        (the kernel then pushes back on its writes) until a reply is sent.

        ``link.owed`` is a set (add and discard are atomic), so answering takes no lock
        unless the link is paused. A reply sent while this runs either sees ``paused``
        set (and wakes the link) or is seen by the second count here."""
        cap = self._limits.max_calls_in_flight
        with link.owed_lock:
            if len(link.owed) < cap:
                return False
            link.paused = True
            if len(link.owed) < cap:
                link.paused = False
                return False
        self._watch(link, False)
        return True

    def _answered(self, link: _Link, key: int) -> None:
        """A call of the peer got its reply (or failure): resume reading if it was paused."""
        link.owed.discard(key)
        if not link.paused:
            return
        with link.owed_lock:
            wake = link.paused and len(link.owed) < self._limits.max_calls_in_flight
            if wake:
                link.paused = False
        if wake:
            self._post(functools.partial(self._resume_input, link))

    def _resume_input(self, link: _Link) -> None:
        if link.dead or link is not self._link:
            return
        if self._life.running:
            self._watch(link, True)
        self._deliver_buffered()

    # ------------------------------------------------------------------ incoming calls

    def _invoke_exported(self, link: _Link, event: CallReceived) -> None:
        seq, _, obj, method, args = event
        fn = getattr(obj, method.selector, None)
        reply = _ReplyBlock(self, link, seq, method) if seq else None
        if not callable(fn):
            error = RemoteError(f"AttributeError: the exported object has no method {method.selector!r}")
            log.warning("nsxpc: %s", error.message)
            if reply is not None:
                reply._fail(error)
            return
        previous = _tls.current
        _tls.current = self
        # The service is busy while a message is handled (M3); a call with a reply block
        # is covered by the reply's own transaction until it is answered.
        transaction = reply is None and _transactions.begin_implicit()
        try:
            result = fn(*args) if reply is None else fn(*args, reply)
            if result is not None and type(result) is types.CoroutineType:
                self._start_coroutine(result, reply, method)
        except Exception as exc:
            log.warning(
                "nsxpc: exported method %r raised %s: %s", method.selector, type(exc).__name__, exc, exc_info=True
            )
            if reply is not None:
                # The caller learns the exception's type and message, never its traceback.
                reply._fail(RemoteError(f"{type(exc).__name__}: {exc}"))
        finally:
            _tls.current = previous
            if transaction:
                _transactions.end_transaction()

    def _start_coroutine(self, coro: types.CoroutineType[Any, Any, Any], reply: Any, method: MethodSpec) -> None:
        """An exported ``async def`` method was called: run it on the connection's loop."""
        if self._loop is None:
            coro.close()  # an object passed by proxy: never run, never "never awaited"
            raise TypeError(f"{method.selector} is async def, but the connection has no loop= to run it on")
        from ._aio import start_exported

        start_exported(self, coro, reply, method)

    # ------------------------------------------------------------------ losing the peer

    def _take_link(self, link: _Link) -> list[PendingCall]:
        """Mark ``link`` dead and take its pending calls (under the send lock)."""
        self._watch(link, False)  # first: the shutdown would wake whoever watches it, for nothing
        _shutdown(link.sock)
        with self._send_lock:
            if link.dead:
                return []
            link.dead = True
            calls = link.core.resolve_all()
            dropped = None
            if self._link is link:
                self._link = None
                # The peer that held proxies of our objects is gone (NSXPC X6).
                dropped = self._exports.drop_exported()
        del dropped  # their last references go here, outside the lock
        # A synchronous caller may be reading this socket: the shutdown above woke it,
        # and it lets go of the read lock at once. Close only then (never under a caller).
        with self._read_lock:
            for fd in link.core.decoder.take_fds():
                os.close(fd)
            link.sock.close()
        if link.on_close is not None:
            link.on_close()
        return calls

    def _lose_link(self, link: _Link, reason: str, handed_over: bool = False, drained: bool = False) -> None:
        """On the queue: the peer went away (EOF, reset, write failure). ``drained``: the
        socket was read to its end already."""
        if link.dead or link is not self._link:
            return
        # What the peer said before it went (a REFUSE racing our write, the last
        # replies) is delivered first: a broken pipe must not hide the reason. Not
        # for a slow consumer: it is dropped for what it did not read.
        with self._read_lock:
            if self._queue and not handed_over:
                # A synchronous caller that read while we waited for the lock may have
                # handed events over (the REFUSE itself): they run first, then this.
                self._post(functools.partial(self._lose_link, link, reason, True, drained))
                return
            for _ in range(0 if drained or SLOW_CONSUMER in reason else 64):
                if link.dead or link is not self._link or self._receive(link) is not True:
                    break
                self._deliver(link)
        if link.dead or link is not self._link:
            return
        if link.service is not None and link.service.exit_reason:
            reason = f"{reason} ({link.service.exit_reason})"
        unread = link.core.decoder.buffered
        if unread and link.core.phase != "closed":
            log.warning("nsxpc: %s closed in the middle of a frame (%d bytes unread)", self._describe, unread)
            reason = f"{reason} in the middle of a frame"
        calls = self._take_link(link)
        if self._life.invalid:
            for call in calls:
                self._complete(call, None, ConnectionInvalid(self._invalid_message()))  # type: ignore[arg-type]
            return
        if not self._interruptible:
            # Endpoints and the listener's side: peer death invalidates (H1). A peer that
            # stopped reading (our write timed out) is dropped with the limit it broke.
            kind = LimitExceeded if SLOW_CONSUMER in reason else ConnectionInvalid
            message = f"{self._describe} went away: {reason}"
            if kind is LimitExceeded:
                limits = self._limits
                message = (
                    f"{self._describe} read nothing for {limits.send_timeout} s with its outgoing buffer full "
                    f"(slow consumer: nsxpc.Limits.send_timeout, max_outgoing_buffer={limits.max_outgoing_buffer})"
                )
                log.warning("nsxpc: dropping %s", message)
            self._invalidate(message, kind(message) if kind is LimitExceeded else None)
            for call in calls:
                self._complete(call, None, kind(self._invalid_message()))  # type: ignore[arg-type]
            return
        log.info("nsxpc: %s was interrupted: %s", self._describe, reason)
        for call in calls:
            if call.target != _messages.ROOT_OBJECT:
                # A call on an object passed by proxy: that object is gone for good (H5).
                self._complete(call, None, ConnectionInvalid(_stale_message(self._describe)))  # type: ignore[arg-type]
                continue
            self._complete(call, None, ConnectionInterrupted(f"{self._describe} was interrupted: {reason}"))  # type: ignore[arg-type]
        handler = self._interruption_handler
        if handler is not None:
            self._run_handler(handler, "interruption")

    def _run_handler(self, handler: Callable[[], object], what: str) -> None:
        try:
            handler()
        except Exception:
            log.exception("nsxpc: the %s handler of %s raised", what, self._describe)

    def _teardown(self, error: XPCError) -> None:
        """On the queue, once: end every call, run barriers, then the invalidation handler."""
        link = self._link
        calls = self._take_link(link) if link is not None else []
        with self._send_lock:
            items = list(self._outbox)
            self._outbox.clear()
        for call in calls:
            self._complete(call, None, error_for_code(error.code, error.message))  # type: ignore[arg-type]
        for item in items:
            if item.call is not None:
                self._complete(item.call, None, error_for_code(error.code, error.message))
            elif item.barrier is not None:
                self._run_handler(item.barrier, "send barrier")
        # Let queued work (send barriers, late reply failures) run before the last callback.
        while self._queue:
            self._run_item(self._queue.popleft())
        handler = self._invalidation_handler
        # After invalidation the connection drops its handlers and exported object (L10).
        self._interruption_handler = None
        self._invalidation_handler = None
        self._exported_object = None
        self._exports.clear()
        self._finished = True
        if self._listener is not None:
            self._listener._forget(self)
        if handler is not None:
            self._run_handler(handler, "invalidation")


class _Watcher:
    """One thread per process that watches the sockets of client connections with no
    queue thread yet. A client whose callers read their own replies needs no thread of
    its own until the peer goes away or sends what nobody reads; then the watcher starts
    the connection's queue, which takes the socket over (Connection._watch). Registering
    a socket here wakes nobody: a new connection costs one epoll_ctl, not a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoll: select.epoll | None = None
        self._links: dict[int, tuple[Connection, _Link]] = {}

    def add(self, conn: Connection, link: _Link) -> None:
        with self._lock:
            if self._epoll is None:
                self._epoll = select.epoll()
                threading.Thread(target=self._run, args=(self._epoll,), name="nsxpc watcher", daemon=True).start()
            self._links[link.fd] = (conn, link)
            self._epoll.register(link.fd, _EPOLLHUP_ONLY)

    def discard(self, link: _Link) -> None:
        with self._lock:
            entry = self._links.get(link.fd)
            if entry is not None and entry[1] is link and self._epoll is not None:
                del self._links[link.fd]
                try:
                    self._epoll.unregister(link.fd)
                except (OSError, ValueError):
                    pass

    def _run(self, epoll: select.epoll) -> None:
        while True:
            for fd, _mask in epoll.poll():
                with self._lock:
                    entry = self._links.pop(fd, None)
                    if entry is not None:
                        try:
                            epoll.unregister(fd)  # the queue's own poll set reports it again
                        except (OSError, ValueError):
                            pass
                if entry is not None:
                    # Its queue takes the socket over and reads what happened. Started from a
                    # worker: this thread never waits for a connection's lock.
                    _run_on_worker(entry[0]._start_queue)

    def forget(self) -> None:
        # In a child made by fork() the thread is not there: start afresh when needed.
        self._lock = threading.Lock()
        self._epoll = None
        self._links = {}


_watcher = _Watcher()
os.register_at_fork(after_in_child=_watcher.forget)

_late_queue: collections.deque[Callable[[], object]] = collections.deque()
_late_cond = threading.Condition(threading.Lock())
_late_thread: threading.Thread | None = None


def _bound_recv(link: _Link, remaining: float | None) -> None:
    """Make a blocking read of ``link`` give up after about ``remaining`` seconds (None:
    never), with SO_RCVTIMEO, so that a caller with a deadline waits in one system call,
    not a poll and a read. Only callers reading their own replies block in a read (the
    queue thread reads with MSG_DONTWAIT). The timeout set stays while it neither
    overshoots the deadline by more than a tenth (and 10 ms) nor wakes the reader more
    often than every half second (or half of ``remaining``) for nothing."""
    current = link.recv_timeout
    if remaining is None:
        if current == 0.0 or current >= 0.5:
            return
        want = 0.0
    else:
        if min(remaining, 1.0) / 2 <= current <= remaining * 1.1 + 0.01:
            return
        want = max(remaining, 0.001)
    seconds = int(want)
    link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(seconds, int((want - seconds) * 1e6)))
    link.recv_timeout = want


# ---------------------------------------------------------------------- queue threads
# A connection's queue runs on a thread of its own. When the queue ends, its thread waits
# a while for the next connection's queue instead of exiting: waking a parked thread costs
# a fraction of starting one, and a process that connects often (or a listener accepting
# clients one after another) pays that on every connection.

#: How long a queue thread with nothing to run waits for another queue before it exits.
_WORKER_IDLE_SECONDS = 5.0


class _Worker:
    """A parked queue thread: ``wake`` is released to hand it ``task``."""

    __slots__ = ("task", "wake")

    def __init__(self) -> None:
        self.task: Callable[[], object] | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


_idle_workers: list[_Worker] = []  # most recently parked last
_idle_lock = threading.Lock()


def _run_on_worker(task: Callable[[], object]) -> None:
    """Run ``task`` (a queue's loop) on a parked thread, or on a new one."""
    with _idle_lock:
        worker = _idle_workers.pop() if _idle_workers else None
    if worker is None:
        # _thread.start_new_thread does not wait for the thread to be scheduled, as
        # Thread.start() does: half the cost.
        _thread.start_new_thread(_work, (task,))
    else:
        worker.task = task
        worker.wake.release()


def _work(task: Callable[[], object] | None) -> None:
    worker: _Worker | None = None
    while task is not None:
        task()  # Connection._run: catches what its callbacks raise
        if worker is None:
            worker = _Worker()
        with _idle_lock:
            _idle_workers.append(worker)
        if not worker.wake.acquire(timeout=_WORKER_IDLE_SECONDS):
            with _idle_lock:
                if worker in _idle_workers:
                    _idle_workers.remove(worker)
                    return  # nobody needed it
            worker.wake.acquire()  # taken just as the wait ended: its task is on the way
        task, worker.task = worker.task, None


def _forget_workers() -> None:
    # In a child made by fork() only the forking thread exists: parked workers are not there.
    global _idle_lock
    _idle_workers.clear()
    _idle_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_workers)

#: Keys of reply blocks among a link's owed replies (``next`` on a count is atomic).
_reply_keys = itertools.count(1)


def _late_work(fn: Callable[[], object]) -> None:
    """Run ``fn`` on the one thread shared by connections whose own queue has ended."""
    global _late_thread
    with _late_cond:
        _late_queue.append(fn)
        if _late_thread is None:
            _late_thread = threading.Thread(target=_run_late_work, name="nsxpc late work", daemon=True)
            _late_thread.start()
        _late_cond.notify()


def _run_late_work() -> None:
    while True:
        with _late_cond:
            while not _late_queue:
                _late_cond.wait()
            fn = _late_queue.popleft()
        try:
            fn()
        except Exception:
            log.exception("nsxpc: a late callback raised")


def _on_event_loop() -> bool:
    """True on a thread running an asyncio event loop (never blocked by a call)."""
    aio = sys.modules.get("asyncio")
    return aio is not None and aio.events._get_running_loop() is not None


def _service_credentials(sock: socket.socket, service: Any) -> PeerCredentials:
    """Who serves a new connection. A service this process launched is known by the
    pidfd of its spawn: SO_PEERCRED names whoever last called listen() on the socket
    (the launcher, systemd), not necessarily the process behind it (research 2.1)."""
    if service is None or service.pid is None:
        return peer_credentials(sock)
    return service.credentials()  # type: ignore[no-any-return]


def _same_secret(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of an endpoint token (hmac imported on first use:
    it pulls in hashlib, which most processes never need)."""
    import hmac

    return hmac.compare_digest(a, b)


def _stale_message(describe: str) -> str:
    return (
        f"{describe} was interrupted, but the message was sent over an additional proxy "
        "and therefore this proxy has become invalid"
    )


def _carries_proxy(args: Sequence[object]) -> bool:
    return any(type(a) is _codec.ExtType and a.code == _codec.EXT_PROXY for a in args)  # type: ignore[attr-defined]


def _refuse_coroutines(obj: object, iface: Interface) -> None:
    """Exported ``async def`` methods need a loop to run on (docs/ASYNCIO.md).

    Raises:
        TypeError: ``obj`` has ``async def`` methods and the connection has no ``loop=``.
    """
    cls: Any = type(obj)
    names = _async_methods(cls, iface.selectors)
    own = getattr(obj, "__dict__", None)
    if own:  # methods set on the instance itself
        names = sorted({*names, *(s for s in iface.selectors if _is_async(own.get(s)))})
    if names:
        raise TypeError(
            f"the exported object's methods {', '.join(names)} are async def: make the connection "
            "(or its listener) with loop=asyncio.get_running_loop() so they run on that loop"
        )


@functools.lru_cache(maxsize=256)
def _async_methods(cls: Any, selectors: frozenset[str]) -> list[str]:
    """The ``selectors`` that ``cls`` defines ``async def`` (looked up once per class and
    set of selectors: a listener asks for every connection it accepts, often with an
    Interface made anew for each)."""
    # getattr_static: looking the methods up must not run the class's own __getattr__.
    import inspect  # already loaded by nsxpc._interface

    return sorted(s for s in selectors if _is_async(inspect.getattr_static(cls, s, None)))


def _is_async(fn: object) -> bool:
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return code is not None and bool(code.co_flags & 0x80)  # CO_COROUTINE: async def


def _timed_out(call: _Call, timeout: float | None) -> TimedOut:
    return TimedOut(f"no reply to {call.method.selector!r} within {timeout} seconds")


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
