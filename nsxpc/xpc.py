"""nsxpc.xpc: the C-style XPC connection API for dictionaries (xpc(3), ``xpc_connection_*``).

The same message connections as ``nsxpc.XPCSession`` (nsxpc._session), so a
C-style connection and a session talk to each other, over the same transport,
limits and secure coding as NSXPC proxies. What differs is xpc(3)'s model:

- A connection is created suspended; ``connection_resume`` balances the initial
  suspension and each ``connection_suspend`` (an extra resume raises RuntimeError).
- One event handler receives the messages (dicts) and the error values
  :data:`ERROR_CONNECTION_INTERRUPTED` (a named service or a service launched on
  demand went away: the next message reconnects or relaunches it) and
  :data:`ERROR_CONNECTION_INVALID` (an endpoint's peer went away, or after
  ``connection_cancel``: the last event). The error values are singletons,
  compared with ``is``.
- Each reply handler is called exactly once, with the reply dict or an error value.
- A message is copied when sent: it is encoded before ``connection_send_message``
  returns, so changing the dict afterwards changes nothing.
- Every handler runs on the connection's own serial queue.
- A malformed message from a peer is dropped with a logged reason (sessions
  are cancelled instead); the connection stays up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._errors import ConnectionInvalid, DecodingError, EncodingError, XPCError
from ._limits import DEFAULT_LIMITS, Limits
from ._listener import Listener
from ._log import log
from ._session import MessageConnection, _prepare, answer
from ._values import ListenerEndpoint

__all__ = [
    "CONNECTION_MACH_SERVICE_LISTENER",
    "CONNECTION_MACH_SERVICE_PRIVILEGED",
    "ERROR_CONNECTION_INTERRUPTED",
    "ERROR_CONNECTION_INVALID",
    "ERROR_TERMINATION_IMMINENT",
    "Connection",
    "Dictionary",
    "ErrorValue",
    "connection_cancel",
    "connection_create",
    "connection_create_from_endpoint",
    "connection_create_mach_service",
    "connection_get_egid",
    "connection_get_euid",
    "connection_get_pid",
    "connection_resume",
    "connection_send_barrier",
    "connection_send_message",
    "connection_send_message_with_reply",
    "connection_send_message_with_reply_sync",
    "connection_set_event_handler",
    "connection_suspend",
    "dictionary_create_reply",
    "main",
]

#: ``XPC_CONNECTION_MACH_SERVICE_LISTENER``: make a listener for the name.
CONNECTION_MACH_SERVICE_LISTENER = 1 << 0
#: ``XPC_CONNECTION_MACH_SERVICE_PRIVILEGED``: accepted for compatibility; no effect.
CONNECTION_MACH_SERVICE_PRIVILEGED = 1 << 1


class ErrorValue:
    """One of xpc(3)'s error values (``XPC_ERROR_*``). Singletons: compare with ``is``."""

    __slots__ = ("description", "name")

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description

    def __repr__(self) -> str:
        return f"<nsxpc.xpc.{self.name}: {self.description}>"

    def __reduce__(self) -> str:
        return self.name  # pickling/copying keeps the singleton


#: The peer went away; the next message reconnects or relaunches (named services only).
ERROR_CONNECTION_INTERRUPTED = ErrorValue("ERROR_CONNECTION_INTERRUPTED", "Connection interrupted")
#: The connection is closed for good (cancelled, refused, or an endpoint's peer died).
ERROR_CONNECTION_INVALID = ErrorValue("ERROR_CONNECTION_INVALID", "Connection invalid")
#: The process is about to be terminated (defined for completeness; nsxpc does not send it).
ERROR_TERMINATION_IMMINENT = ErrorValue("ERROR_TERMINATION_IMMINENT", "Termination imminent")


def _error_value(error: XPCError) -> ErrorValue:
    # xpc(3) has no value for a dropped or undecodable reply: as with a reply port that
    # died, the reply handler sees an interruption (the connection itself stays up).
    if isinstance(error, ConnectionInvalid) or error.code in (4099, 4102):
        return ERROR_CONNECTION_INVALID
    return ERROR_CONNECTION_INTERRUPTED


class _ReplyContext:
    __slots__ = ("block", "conn", "created", "sent")

    def __init__(self, conn: Connection, block: Any) -> None:
        self.conn = conn
        self.block = block
        self.created = False
        self.sent = False


class Dictionary(dict[Any, Any]):
    """A received message or a reply made by :func:`dictionary_create_reply`: a dict
    that remembers the message it answers (``xpc_object_t`` of type dictionary)."""

    __slots__ = ("_xpc_reply", "_xpc_reply_to")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._xpc_reply: _ReplyContext | None = None  # set on a received message wanting a reply
        self._xpc_reply_to: _ReplyContext | None = None  # set on a reply


class Connection:
    """An ``xpc_connection_t``: a client connection, a peer connection accepted by a
    listener, or a listener (``CONNECTION_MACH_SERVICE_LISTENER``). Made by the
    ``connection_create*`` functions, never directly."""

    _conn: MessageConnection | None
    _listener: Listener | None
    _describe: str
    _handler: Callable[[Any], object] | None
    _cancelled: bool
    _accepting: bool
    _lock: threading.Lock

    def __init__(self) -> None:
        raise TypeError("use nsxpc.xpc.connection_create_mach_service() or connection_create_from_endpoint()")

    @classmethod
    def _wrap(cls, conn: MessageConnection | None, listener: Listener | None, describe: str) -> Connection:
        self = object.__new__(cls)
        self._conn = conn
        self._listener = listener
        self._describe = describe
        self._handler = None
        self._cancelled = False
        self._accepting = False  # inside the listener's event handler (a new peer)
        self._lock = threading.Lock()
        if conn is not None:
            conn._attach(self)
            if conn._interruptible:
                conn.interruption_handler = self._on_interrupted
            conn.invalidation_handler = self._on_invalidated
        return self

    def __repr__(self) -> str:
        kind = "listener" if self._listener is not None else "connection"
        state = "cancelled" if self._cancelled else ""
        return f"<nsxpc.xpc {kind} {self._describe} {state}>".replace(" >", ">")

    def _client(self) -> MessageConnection:
        if self._conn is None:
            raise TypeError("a listener connection cannot send messages")
        return self._conn

    # ------------------------------------------------------------------ on the queue

    def _event(self, event: object) -> None:
        handler = self._handler
        if handler is None:
            if isinstance(event, Dictionary):
                log.warning("nsxpc: %s received a message but has no event handler; dropped", self._describe)
            return
        handler(event)

    def _on_message(self, payload: object, reply: Any, sync: bool) -> None:
        if type(payload) is not dict:
            reason = "a C-style connection takes dictionaries only, not an encoded object"
            log.warning("nsxpc: dropped a message from %s: %s", self._describe, reason)
            if reply is not None:
                reply._fail(DecodingError(reason))
            return
        message = Dictionary(payload)
        if reply is not None:
            message._xpc_reply = _ReplyContext(self, reply)
        self._event(message)

    def _on_bad_message(self, error: XPCError) -> None:
        pass  # already dropped with a logged reason by the connection (xpc(3) drops it)

    def _on_interrupted(self) -> None:
        self._event(ERROR_CONNECTION_INTERRUPTED)

    def _on_invalidated(self) -> None:
        self._event(ERROR_CONNECTION_INVALID)
        self._handler = None


# --------------------------------------------------------------------------- creating


def connection_create_mach_service(name: str, flags: int = 0, *, limits: Limits = DEFAULT_LIMITS) -> Connection:
    """``xpc_connection_create_mach_service``: a connection to the service ``name``, or
    with ``CONNECTION_MACH_SERVICE_LISTENER`` a listener for it. Created suspended.

    Raises:
        ValueError: the name is invalid.
        TypeError: ``flags`` is not an int.
    """
    if type(flags) is not int:
        raise TypeError("flags must be an int")
    if flags & CONNECTION_MACH_SERVICE_LISTENER:
        listener = Listener(mach_service_name=name, limits=limits)
        return _make_listener(listener, f"listener {name}")
    conn = MessageConnection(mach_service_name=name, limits=limits)
    return Connection._wrap(conn, None, f"the service named {name}")


def connection_create(name: str, *, limits: Limits = DEFAULT_LIMITS) -> Connection:
    """``xpc_connection_create``: a connection to the service bundle ``name``, launched
    on demand by the first message (and relaunched after an interruption). Created suspended.

    Raises:
        ValueError: the name is invalid.
    """
    conn = MessageConnection(service_name=name, limits=limits)
    return Connection._wrap(conn, None, f"the service named {name}")


def connection_create_from_endpoint(endpoint: ListenerEndpoint, *, limits: Limits = DEFAULT_LIMITS) -> Connection:
    """``xpc_connection_create_from_endpoint``: a connection to a listener's endpoint.
    Created suspended. Peer death makes it invalid (never interrupted).

    Raises:
        TypeError: ``endpoint`` is not an nsxpc.ListenerEndpoint.
    """
    conn = MessageConnection(listener_endpoint=endpoint, limits=limits)
    return Connection._wrap(conn, None, conn._describe)


class _PeerDelegate:
    """A listener's delegate: each new peer goes to the listener's event handler."""

    def __init__(self, owner: Connection) -> None:
        self.owner = owner

    def should_accept_new_connection(self, listener: Listener, connection: Any) -> bool:
        peer = Connection._wrap(connection, None, connection._describe)
        with peer._lock:
            peer._accepting = True
        handler = self.owner._handler
        if handler is None:
            connection._refusal_reason = "the listener has no event handler"
            return False
        try:
            handler(peer)
        except Exception:
            log.exception("nsxpc: the listener's event handler raised; refusing the peer")
            return False
        with peer._lock:
            peer._accepting = False
            if peer._cancelled:
                connection._refusal_reason = "the listener cancelled the connection"
                return False
        return True


def _make_listener(listener: Listener, describe: str) -> Connection:
    from ._session import MessageConnection as _MC

    listener._connection_class = _MC
    wrapper = Connection._wrap(None, listener, describe)
    listener.delegate = _PeerDelegate(wrapper)
    return wrapper


# --------------------------------------------------------------------------- life cycle


def _check(conn: object) -> Connection:
    if not isinstance(conn, Connection):
        raise TypeError(f"expected an nsxpc.xpc connection, not {type(conn).__name__}")
    return conn


def connection_set_event_handler(conn: Connection, handler: Callable[[Any], object]) -> None:
    """``xpc_connection_set_event_handler``: ``handler`` receives messages (dicts) and
    error values; on a listener, each new peer connection.

    Raises:
        TypeError: ``handler`` is not callable.
    """
    _check(conn)
    if not callable(handler):
        raise TypeError("the event handler must be callable")
    conn._handler = handler


def connection_resume(conn: Connection) -> None:
    """``xpc_connection_resume``: balance the initial suspension or a ``connection_suspend``.

    Raises:
        RuntimeError: resumed more times than suspended.
        XPCError: (a listener) the name is already served by a live process.
    """
    _check(conn)
    if conn._listener is not None:
        conn._listener.resume()
    else:
        conn._client().resume()


def connection_suspend(conn: Connection) -> None:
    """``xpc_connection_suspend``: stop delivering events until the matching resume."""
    _check(conn)
    if conn._listener is not None:
        conn._listener.suspend()
    else:
        conn._client().suspend()


def connection_cancel(conn: Connection) -> None:
    """``xpc_connection_cancel``: close for good; the event handler then receives
    ``ERROR_CONNECTION_INVALID``, last. Idempotent."""
    _check(conn)
    with conn._lock:
        if conn._cancelled:
            return
        conn._cancelled = True
        accepting = conn._accepting
    if accepting:
        return  # inside the listener's event handler: the peer is refused when it returns
    if conn._listener is not None:
        conn._listener.invalidate()
        handler, conn._handler = conn._handler, None
        if handler is not None:
            # A listener has no queue of its own: deliver the last event on a thread.
            threading.Thread(target=_run_logged, args=(handler, ERROR_CONNECTION_INVALID), daemon=True).start()
    else:
        conn._client()._invalidate(f"{conn._describe} was cancelled")


def _run_logged(handler: Callable[[Any], object], event: object) -> None:
    try:
        handler(event)
    except Exception:
        log.exception("nsxpc: an xpc event handler raised")


# --------------------------------------------------------------------------- sending


def _outgoing(msg: object) -> tuple[object, bool]:
    if not isinstance(msg, dict):
        raise TypeError(f"an XPC message must be a dict, not {type(msg).__name__}")
    return _prepare(dict(msg))


def connection_send_message(conn: Connection, message: dict[Any, Any]) -> None:
    """``xpc_connection_send_message``: send a message, FIFO, with no delivery indication.
    A reply made by :func:`dictionary_create_reply` is sent as that reply.

    Raises:
        TypeError: not a dict, or not an xpc connection.
        EncodingError: a value is outside the plain types (nothing is sent).
        RuntimeError: a reply sent twice.
    """
    _check(conn)
    ctx = message._xpc_reply_to if isinstance(message, Dictionary) else None
    if ctx is not None:
        if ctx.conn is not conn:
            raise ValueError("send a reply on the connection its message arrived on")
        if ctx.sent:
            raise RuntimeError("this reply was already sent")
        payload = _outgoing(message)
        ctx.sent = True
        answer(ctx.block, payload)
        return
    conn._client().send_one_way(_outgoing(message))


def connection_send_message_with_reply(
    conn: Connection, message: dict[Any, Any], handler: Callable[[Any], object]
) -> None:
    """``xpc_connection_send_message_with_reply``: ``handler`` is called exactly once,
    on the connection's queue, with the reply dict or an error value.

    Raises:
        TypeError: not a dict, or ``handler`` is not callable.
        EncodingError: a value is outside the plain types (nothing is sent).
    """
    _check(conn)
    if not callable(handler):
        raise TypeError("the reply handler must be callable")
    payload = _outgoing(message)
    describe = conn._describe

    def on_reply(reply: object) -> None:
        if type(reply) is dict:
            handler(Dictionary(reply))
        else:
            log.warning("nsxpc: %s replied with an encoded object, which a C-style connection cannot take", describe)
            handler(ERROR_CONNECTION_INTERRUPTED)

    def on_error(error: XPCError) -> None:
        handler(_error_value(error))

    conn._client().send_with_reply(payload, on_reply, on_error)


def connection_send_message_with_reply_sync(
    conn: Connection, message: dict[Any, Any], timeout: float | None = None
) -> Dictionary | ErrorValue:
    """``xpc_connection_send_message_with_reply_sync``: the reply dict or an error value.

    Do not call it from the connection's own queue (it would deadlock: RuntimeError).

    Raises:
        TypeError: not a dict.
        EncodingError: a value is outside the plain types (nothing is sent).
        RuntimeError: called on the connection's own queue.
    """
    _check(conn)
    payload = _outgoing(message)
    try:
        reply = conn._client().send_sync(payload, timeout)
    except EncodingError:
        raise  # local misuse: nothing was sent
    except XPCError as exc:
        return _error_value(exc)
    if type(reply) is not dict:
        log.warning("nsxpc: %s replied with an encoded object, which a C-style connection cannot take", conn._describe)
        return ERROR_CONNECTION_INTERRUPTED
    return Dictionary(reply)


def connection_send_barrier(conn: Connection, barrier: Callable[[], object]) -> None:
    """``xpc_connection_send_barrier``: run ``barrier`` on the connection's queue once
    every message sent before it has been written."""
    _check(conn)
    conn._client().schedule_send_barrier(barrier)


def dictionary_create_reply(message: dict[Any, Any]) -> Dictionary | None:
    """``xpc_dictionary_create_reply``: an empty reply dict bound to ``message``, or None
    if the message wants no reply. Fill it, then ``connection_send_message`` it.

    Raises:
        RuntimeError: a reply was already created for this message.
    """
    ctx = message._xpc_reply if isinstance(message, Dictionary) else None
    if ctx is None:
        return None
    if ctx.created:
        raise RuntimeError("a reply was already created for this message")
    ctx.created = True
    reply = Dictionary()
    reply._xpc_reply_to = ctx
    return reply


def connection_get_pid(conn: Connection) -> int:
    """``xpc_connection_get_pid``: the peer's pid (0 before connecting)."""
    return _check(conn)._client().process_identifier


def connection_get_euid(conn: Connection) -> int:
    """``xpc_connection_get_euid``: the peer's effective uid (-1 before connecting)."""
    return _check(conn)._client().effective_user_identifier


def connection_get_egid(conn: Connection) -> int:
    """``xpc_connection_get_egid``: the peer's effective gid (-1 before connecting)."""
    return _check(conn)._client().effective_group_identifier


def main(event_handler: Callable[[Connection], object]) -> None:
    """``xpc_main``: run this launched service forever; ``event_handler`` receives each
    new peer connection, to be given an event handler and resumed (or cancelled).

    Raises:
        XPCError: the process was not launched as a service.
    """
    from ._service import main as service_main

    listener = Listener.service()
    owner = _make_listener(listener, f"service {listener.service_name}")
    owner._handler = event_handler
    service_main(listener.delegate)
