"""L4/L5: message-level XPC: XPCSession, XPCListener, XPCReceivedMessage, XPCRichError.

Sessions (and the C-style ``nsxpc.xpc`` API built on the same class) are not a
second implementation: they are ``nsxpc.Connection`` with another handshake
kind and a fixed *message port* as their exported interface, so framing,
limits, secure coding, credentials, the socket directory, name locking and
services launched on demand are the proxies' own (docs/MESSAGES.md).

The wire (docs/MESSAGES.md, docs/PROTOCOL.md section 11):

- HELLO kind ``"xpc"``; a listener serves one kind and refuses the other with a
  reason that names both.
- A message is an INVOKE on object 1 with one argument, under one of three
  reserved selectors: ``message`` (one-way, seq 0), ``message_with_reply`` and
  ``message_sync`` (both expect a REPLY with one value; the second tells the
  receiver that the sender is blocked, ``XPCReceivedMessage.is_sync``).
- The value is a dict of plain values (API section 3) or one encoded
  ``@nsxpc.secure_coding`` object (extension 7). The receiver decodes the dict
  at once through the normal allowlist walk (plain types only), but keeps an
  encoded object *unbuilt* (its wire fields) until ``decode(as_=Cls)`` names the
  class: a class name from the wire is never looked up anywhere else. A value
  of any other shape (a bare int, a list, a coded object nested in a dict) is a
  malformed message: the core refuses it as for a bad proxy argument, and a
  session is cancelled (the C-style API drops it with a logged reason).

Invariants:
- A session never reconnects or relaunches: its connection is not interruptible,
  so peer death invalidates it; pending replies end with XPCRichError and the
  cancellation handler runs once, last (the connection's invalidation handler).
- Replies go through the connection's reply blocks: at most once, a dropped
  reply reaches the sender as ReplyInvalid, a handler that raises as RemoteError.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from . import _codec, _messages
from ._coding import (
    PLAIN_TYPES,
    Allowed,
    Coder,
    DecodeContext,
    EncodeContext,
    SlotType,
    compile_slot,
    decode_value,
    encode_value,
    is_secure_coding,
    wire_name,
)
from ._connection import Connection
from ._errors import ConnectionInvalid, DecodingError, EncodingError, ErrorCode, ReplyInvalid, XPCError
from ._interface import Interface, MethodSpec, protocol
from ._limits import DEFAULT_LIMITS, Limits
from ._listener import Listener
from ._log import log
from ._proxy import HANDLER, PLAIN, SYNC
from ._transport import service_socket_path
from ._values import ListenerEndpoint

__all__ = [
    "MessageConnection",
    "XPCListener",
    "XPCReceivedMessage",
    "XPCRichError",
    "XPCSession",
    "check_message",
    "serve_sessions",
]

SEL_SEND = "message"
SEL_REPLY = "message_with_reply"
SEL_SYNC = "message_sync"
_ROOT = _messages.ROOT_OBJECT


# --------------------------------------------------------------------------- errors


class XPCRichError(XPCError):
    """An error of a session (Swift's ``XPCRichError``): ``code`` is the matching
    :class:`ErrorCode` (4097, 4099, 4102...), ``can_retry`` True only for transient
    failures (an interruption, a timeout)."""

    def __init__(self, message: str = "", *, code: ErrorCode | None = None, can_retry: bool = False) -> None:
        super().__init__(message, code=code)
        self.can_retry = can_retry

    @classmethod
    def of(cls, error: XPCError) -> XPCRichError:
        """The rich form of any XPCError (itself if it already is one)."""
        if isinstance(error, XPCRichError):
            return error
        return cls(error.message, code=error.code, can_retry=error.can_retry)


# --------------------------------------------------------------------------- the message slot


class _Deferred:
    """An encoded secure-coding object received as a message: its wire name and raw
    fields, built only when ``decode(as_=Cls)`` names its class."""

    __slots__ = ("fields", "name")

    name: str
    fields: dict[str, Any]

    @classmethod
    def init_with_coder(cls, coder: Coder) -> _Deferred:
        obj = cls()
        obj.name = _tls.name
        obj.fields = coder._fields
        return obj

    def __repr__(self) -> str:
        return f"<encoded {self.name}>"


class _State(threading.local):
    name = ""  # wire name of the object being deferred (get() then init_with_coder())
    deferred = 0  # how many objects were deferred since the last shape check


_tls = _State()


class _DeferAnyName(Mapping[str, type]):
    """The ``names`` of the message slot's allowlist: every wire name maps to
    :class:`_Deferred`, which keeps the fields and builds nothing."""

    def get(self, key: str, default: Any = None) -> Any:
        _tls.name = key
        _tls.deferred += 1
        return _Deferred

    def __getitem__(self, key: str) -> type:
        return _Deferred

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _contains_deferred(value: object, depth: int = 0) -> bool:
    t = type(value)
    if t is _Deferred:
        return True
    if depth > 64:
        return False
    if t is dict:
        return any(_contains_deferred(v, depth + 1) for v in value.values())  # type: ignore[attr-defined]
    if t in (list, tuple, set, frozenset):
        return any(_contains_deferred(v, depth + 1) for v in value)  # type: ignore[attr-defined]
    return False


def _shape_ok(value: object) -> bool:
    """The message slot's check: a dict with no coded object inside, an encoded
    object (received), or a secure-coding instance (sent, already checked)."""
    t = type(value)
    if t is dict:
        if _tls.deferred:
            # Something was deferred on this thread since the last check: look (the
            # count is only a hint, so a stale one costs a walk, never a refusal).
            _tls.deferred = 0
            return not _contains_deferred(value)
        return True
    if t is _Deferred:
        _tls.deferred = 0
        return True
    if t is bytes:
        return True  # a packed plain dict from a peer; unpacked and checked by unpack_payload
    return is_secure_coding(t)


_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_STR = frozenset({str})


def _plain(value: object, depth: int, max_depth: int) -> bool:
    """True for a tree of str-keyed dicts, lists and scalars within ``max_depth``:
    what msgpack carries as is (integers beyond 64 bits aside: packing finds those)."""
    if depth >= max_depth:
        return False
    t = type(value)
    if t is dict:
        d: dict[Any, Any] = value  # type: ignore[assignment]
        if not _STR.issuperset(map(type, d)):
            return False
        items: Any = d.values()
    elif t is list:
        items = value
    else:
        return False
    # A flat container (most messages) is checked in one pass in C; nested ones by walking.
    return _SCALARS.issuperset(map(type, items)) or all(
        type(v) in _SCALARS or _plain(v, depth + 1, max_depth) for v in items
    )


def _plain_dict(value: object, max_depth: int) -> bool:
    """The message slot's shortcut: a dict of JSON-like values (``_plain``) goes on the
    wire as a map as it is, and one received is delivered as msgpack built it. A flat
    dict (most messages) is decided here, without a call: a loop over its items costs
    less than ``issuperset(map(type, ...))``, whose ``type()`` per element is dearer than
    a loop's step, for any size of message."""
    if type(value) is not dict:
        return False
    for k, v in value.items():
        if type(k) is not str or type(v) not in _SCALARS:
            return _plain(value, 0, min(max_depth, _MAX_PLAIN_DEPTH))
    return max_depth > 0


#: How deep a dictionary sent as it is may nest (deeper ones go through the encoder).
_MAX_PLAIN_DEPTH = 32


class _MessageSlot(SlotType):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(Any, PLAIN_TYPES, _shape_ok)
        self.allowed = Allowed(PLAIN_TYPES, _DeferAnyName())
        self.as_is = _plain_dict  # such a dict goes, and arrives, as it is (no conversion)

    def explain(self, value: object) -> str | None:
        if self.check(value):
            return None
        if type(value) is dict:
            return "a dictionary message may hold only plain values, not an encoded object"
        return f"a message must be a dictionary or one encoded object, not {type(value).__qualname__}"


@protocol
class _MessagePort(Protocol):
    def message(self, message: Any) -> None: ...
    def message_with_reply(self, message: Any, reply: Callable[[Any], None]) -> None: ...
    def message_sync(self, message: Any, reply: Callable[[Any], None]) -> None: ...


class _CheckedSlot(_MessageSlot):
    """The slot of a message this side sends once :func:`_prepare` found it plain: the
    dict goes as it is without another look (``plain``), since the fast path of
    ``encode_arguments`` takes a value of exactly the ``plain`` type. Only for
    sending: received messages always meet :class:`_MessageSlot`'s check."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        self.plain = dict


_MESSAGE_SLOT = _MessageSlot()
_CHECKED_SLOT = _CheckedSlot()


def _port_interface() -> Interface:
    iface = Interface(_MessagePort)
    slot = _MESSAGE_SLOT
    for sel in (SEL_SEND, SEL_REPLY, SEL_SYNC):
        iface._replace(sel, 0, False, slot)
        if sel != SEL_SEND:
            iface._replace(sel, 0, True, slot)
    return iface


PORT = _port_interface()
_M_SEND = PORT.method(SEL_SEND)
_M_REPLY = PORT.method(SEL_REPLY)
_M_SYNC = PORT.method(SEL_SYNC)
assert _M_SEND is not None and _M_REPLY is not None and _M_SYNC is not None


def _checked(method: MethodSpec, *, answer: bool = False) -> MethodSpec:
    """``method`` for sending a message (``answer``: a reply) that :func:`_prepare` found
    plain. Replies to what it sends are still decoded with the message slot."""
    if answer:
        return MethodSpec(method.selector, method.params, method.args, method.reply_name, (_CHECKED_SLOT,))
    return MethodSpec(method.selector, method.params, (_CHECKED_SLOT,), method.reply_name, method.reply)


_M_SEND_CHECKED = _checked(_M_SEND)
_M_REPLY_CHECKED = _checked(_M_REPLY)
_M_SYNC_CHECKED = _checked(_M_SYNC)
_ANSWER_CHECKED = {m.selector: _checked(m, answer=True) for m in (_M_REPLY, _M_SYNC)}
_PLAIN_DICT = compile_slot(dict, "message")


def check_message(value: object, what: str = "message") -> object:
    """Check a message (or reply) before it is sent.

    Raises:
        TypeError: not a dict nor an ``@nsxpc.secure_coding`` object.
        EncodingError: the dict holds a value outside API section 3's plain types.
    """
    t = type(value)
    if t is dict:
        if not _PLAIN_DICT.check(value):
            raise EncodingError(f"{what}: {_PLAIN_DICT.explain(value)}")
        return value
    if isinstance(value, dict):
        return check_message(dict(value), what)
    if is_secure_coding(t):
        return value
    raise TypeError(f"a {what} must be a dict of plain values or an @nsxpc.secure_coding object, not {t.__qualname__}")


def _prepare(message: object, what: str = "message") -> tuple[object, bool]:
    """What goes on the wire for ``message``, and whether it goes as it is: a dict of
    JSON-like values does (True: send it with the ``_checked`` methods; packing finds
    an integer beyond 64 bits); anything else is checked and left to the connection's
    encoder (False).

    Raises:
        TypeError, EncodingError: see :func:`check_message`.
    """
    if _plain_dict(message, _MAX_PLAIN_DEPTH):
        return message, True
    return check_message(message, what), False


def answer(reply: Any, prepared: tuple[object, bool]) -> None:
    """Call the reply block ``reply`` with a reply :func:`_prepare` made."""
    wire, as_is = prepared
    if as_is:
        # Same selector and wire form; the reply slot takes the checked dict as it is.
        reply._method = _ANSWER_CHECKED[reply._method.selector]
    reply(wire)


def unpack_payload(value: object, limits: Limits) -> object:
    """A received message or reply: a packed blob is unpacked under the connection's
    limits and checked against the plain allowlist (values that need it, such as
    tuples or UUIDs, go through the secure decoder); other values came decoded.

    Raises:
        DecodingError: the blob is malformed, holds a value outside the plain types,
            or is not a dictionary.
    """
    if type(value) is not bytes:
        return value
    try:
        raw = _codec.unpack(value, limits.max_nodes, limits.max_nodes)
    except XPCError as exc:
        raise DecodingError(f"malformed message: {exc.message}") from None
    if type(raw) is not dict:
        raise DecodingError(f"a message must be a dictionary, not {type(raw).__qualname__}")
    if _plain(raw, 0, limits.max_depth):
        return raw  # built by msgpack from str keys and plain values only: nothing to convert
    ctx = DecodeContext((), limits.max_depth, limits.max_nodes, limits.max_nodes)
    _tls.deferred = 0
    decoded = decode_value(raw, _MESSAGE_SLOT.allowed, ctx)
    if not _shape_ok(decoded) or type(decoded) is not dict:
        raise DecodingError("a dictionary message may hold only plain values, not an encoded object")
    return decoded


# --------------------------------------------------------------------------- the connection


class _Inbox:
    """The exported object of a message connection: hands each message to its owner."""

    __slots__ = ("limits", "owner")

    def __init__(self, limits: Limits) -> None:
        self.owner: Any = None
        self.limits = limits

    # Each kind hands the common case (a dict, or an object decoded) to its owner at
    # once; the rest goes through _deliver. One call less per message.

    def message(self, message: Any) -> None:
        owner = self.owner
        if owner is not None and type(message) is not bytes:
            owner._on_message(message, None, False)
        else:
            self._deliver(message, None, False)

    def message_with_reply(self, message: Any, reply: Any) -> None:
        owner = self.owner
        if owner is not None and type(message) is not bytes:
            owner._on_message(message, reply, False)
        else:
            self._deliver(message, reply, False)

    def message_sync(self, message: Any, reply: Any) -> None:
        owner = self.owner
        if owner is not None and type(message) is not bytes:
            owner._on_message(message, reply, True)
        else:
            self._deliver(message, reply, True)

    def _deliver(self, message: Any, reply: Any, sync: bool) -> None:
        owner = self.owner
        if owner is not None:
            try:
                message = unpack_payload(message, self.limits)
            except DecodingError as exc:
                log.warning("nsxpc: dropped a message: %s", exc.message)
                if reply is not None:
                    reply._fail(exc)
                owner._on_bad_message(exc)
                return
        if owner is None:
            log.warning("nsxpc: dropped a message: nothing handles messages on this connection yet")
            if reply is not None:
                reply._fail(DecodingError("the peer has no message handler"))
            return
        owner._on_message(message, reply, sync)


class MessageConnection(Connection):
    """A Connection of handshake kind "xpc" whose exported object is the message port."""

    _kind = _messages.KIND_XPC

    def _init_common(self, limits: Limits) -> None:
        super()._init_common(limits)
        self._inbox = _Inbox(limits)
        self._final_error: XPCError | None = None
        self._early_error: XPCError | None = None
        # The port is exported without the setters: those make the queue thread read
        # everything (_want_input), which costs a synchronous caller two epoll calls
        # per round trip. A client that nobody sends to (a session without an
        # incoming message handler) keeps the proxies' fast path; see _attach.
        self._remote_interface = PORT
        self._exported_interface = PORT
        self._exported_object = self._inbox
        self._exports[_ROOT] = (self._inbox, PORT)

    def _attach(self, owner: Any, wants_messages: bool = True) -> None:
        self._inbox.owner = owner
        if wants_messages:
            self._want_input()

    def _handle(self, link: Any, event: object) -> None:
        super()._handle(link, event)
        from ._protocol import CallRejected

        if type(event) is CallRejected:
            owner = self._inbox.owner
            if owner is not None:
                owner._on_bad_message(event.error)

    def _teardown(self, error: XPCError) -> None:
        self._final_error = error
        super()._teardown(error)

    # The error that ends the connection is known when it is invalidated, before the
    # teardown runs on the queue: a send in between must raise that error, not a generic one.
    def _invalidate(self, reason: str, error: XPCError | None = None) -> None:
        if error is not None and not self._life.invalid:
            self._early_error = error
        super()._invalidate(reason, error)

    def _life_invalidate_later(self, reason: str, error: XPCError | None = None) -> None:
        if error is not None and not self._life.invalid:
            self._early_error = error
        super()._life_invalidate_later(reason, error)

    # Sending: the proxies' own path (_call), with the port's three methods.

    # ``prepared`` comes from _prepare: a plain dict (True), or a checked dict or object.

    def send_one_way(self, prepared: tuple[object, bool]) -> None:
        message, as_is = prepared
        self._call(_ROOT, _M_SEND_CHECKED if as_is else _M_SEND, [message], None, PLAIN, None, None)  # type: ignore[arg-type]

    def send_with_reply(
        self, prepared: tuple[object, bool], reply: Callable[[Any], object], error: Callable[[XPCError], object]
    ) -> None:
        limits = self._limits

        def on_reply(payload: object) -> None:
            try:
                payload = unpack_payload(payload, limits)
            except DecodingError as exc:
                error(ReplyInvalid(f"the reply could not be decoded: {exc.message}"))
                return
            reply(payload)

        message, as_is = prepared
        method = _M_REPLY_CHECKED if as_is else _M_REPLY
        self._call(_ROOT, method, [message], on_reply, HANDLER, error, None)  # type: ignore[arg-type]

    def send_sync(self, prepared: tuple[object, bool], timeout: float | None = None) -> Any:
        """Raises: XPCError."""
        message, as_is = prepared
        payload = self._call(_ROOT, _M_SYNC_CHECKED if as_is else _M_SYNC, [message], None, SYNC, None, timeout)  # type: ignore[arg-type]
        if type(payload) is not bytes:
            return payload  # decoded already (what unpack_payload returns as it is), without the call
        try:
            return unpack_payload(payload, self._limits)
        except DecodingError as exc:
            raise ReplyInvalid(f"the reply could not be decoded: {exc.message}") from None

    @property
    def invalid(self) -> bool:
        return self._life.invalid

    def final_error(self) -> XPCError:
        return self._final_error or self._early_error or ConnectionInvalid(self._invalid_message())


# --------------------------------------------------------------------------- received messages


def _decode_as(value: object, cls: type, limits: Limits) -> Any:
    if not is_secure_coding(cls):
        raise TypeError(f"decode(as_=...) needs an nsxpc.SecureCoding or @nsxpc.secure_coding class, not {cls!r}")
    ctx = DecodeContext((), limits.max_depth, limits.max_nodes, limits.max_nodes)
    if type(value) is _Deferred:
        if value.name != wire_name(cls):
            raise DecodingError(f"the message is an encoded {value.name}, not {wire_name(cls)}")
        fields = value.fields
    elif type(value) is dict:
        if any(type(k) is not str for k in value):
            raise DecodingError(f"cannot decode a dictionary with non-string keys as {cls.__qualname__}")
        # The dict's values back to wire form, so that the class's own secure decoder
        # (each field against its annotation) runs exactly as for an encoded object.
        try:
            wire = encode_value(value, EncodeContext(limits.max_depth))
        except EncodingError as exc:
            raise DecodingError(f"cannot decode the message as {cls.__qualname__}: {exc.message}") from None
        fields = _codec.unpack(_codec.pack(wire), limits.max_nodes, limits.max_nodes)
    else:
        raise DecodingError(f"cannot decode {type(value).__qualname__} as {cls.__qualname__}")
    try:
        obj = cls.init_with_coder(Coder._for_decoding(fields, ctx, 1))  # type: ignore[attr-defined]
    except XPCError as exc:
        raise DecodingError(f"{cls.__qualname__}: {exc.message}") from None
    except Exception as exc:
        raise DecodingError(f"{cls.__qualname__}.init_with_coder failed: {type(exc).__name__}: {exc}") from exc
    if type(obj) is not cls:
        raise DecodingError(f"{cls.__qualname__}.init_with_coder returned {type(obj).__qualname__}")
    return obj


class XPCReceivedMessage:
    """A message (or a reply) received on a session (Swift's ``XPCReceivedMessage``).

    Attributes:
        expects_reply: the sender waits for a reply (``reply(value)`` or the handler's
            return value).
        is_sync: the sender is blocked in ``send_sync`` until the reply arrives.
    """

    __slots__ = ("_limits", "_payload", "_replied", "_reply", "expects_reply", "is_sync")

    def __init__(self, payload: object, reply: Any, is_sync: bool, limits: Limits = DEFAULT_LIMITS) -> None:
        self._payload = payload
        self._reply = reply
        self._replied = False
        self.expects_reply = reply is not None  # read-only; an attribute, as a handler reads it per message
        self.is_sync = is_sync
        self._limits = limits

    def __repr__(self) -> str:
        what = self._payload if type(self._payload) is _Deferred else f"{len(self._payload)} keys"  # type: ignore[arg-type]
        state = "" if self._reply is None else (" replied" if self._replied else " awaiting reply")
        return f"<nsxpc.XPCReceivedMessage {what}{' sync' if self.is_sync else ''}{state}>"

    def decode(self, as_: type | None = None) -> Any:
        """The payload: plain values (a dict) by default; with ``as_=Cls`` an instance
        of that ``@nsxpc.secure_coding`` class, built from a dict of its fields or an
        encoded Cls and checked against its annotations.

        Raises:
            DecodingError: the payload does not match (an encoded object decoded
                without ``as_``, another class, a field missing or of the wrong type).
            TypeError: ``as_`` is not a secure-coding class.
        """
        payload = self._payload
        if as_ is None:
            if type(payload) is _Deferred:
                raise DecodingError(f"the message is an encoded {payload.name}: decode it with as_=<that class>")
            return payload
        return _decode_as(payload, as_, self._limits)

    def reply(self, value: object) -> None:
        """Answer the message, at most once (``reply(_:)``).

        Raises:
            RuntimeError: the message expects no reply, or was already answered.
            TypeError, EncodingError: ``value`` is not a valid message (nothing is sent).
        """
        if self._reply is None:
            raise RuntimeError("this message expects no reply: it was sent without a reply handler")
        if self._replied:
            raise RuntimeError("this message was already replied to")
        prepared = _prepare(value, "reply")
        self._replied = True
        answer(self._reply, prepared)


# --------------------------------------------------------------------------- sessions


class XPCSession:
    """A session with a service or listener (``XPCSession`` / ``xpc_session_t``).

    Exactly one of ``mach_service``, ``xpc_service`` (a bundle launched on
    demand) or ``endpoint`` names the peer. A session never reconnects: when the
    peer goes away it is cancelled, its pending replies end with
    :class:`XPCRichError` and ``cancellation_handler`` runs once.

    Args:
        incoming_message_handler: ``(XPCReceivedMessage) -> value | None``, run on
            the session's queue; a returned value is the reply.
        cancellation_handler: ``(XPCRichError) -> None``, run once, last.
        inactive: create it inactive; call ``activate()`` before sending.

    Raises:
        XPCRichError: the named service does not exist, or the peer cannot be reached.
        TypeError: not exactly one peer is named.
    """

    def __init__(
        self,
        *,
        mach_service: str | None = None,
        xpc_service: str | None = None,
        endpoint: ListenerEndpoint | None = None,
        incoming_message_handler: Callable[[XPCReceivedMessage], object] | None = None,
        cancellation_handler: Callable[[XPCRichError], object] | None = None,
        inactive: bool = False,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        named = [v for v in (mach_service, xpc_service, endpoint) if v is not None]
        if len(named) != 1:
            raise TypeError("XPCSession needs exactly one of mach_service=, xpc_service=, endpoint=")
        if xpc_service is not None:
            from ._bundle import find_service

            try:
                find_service(xpc_service)
            except XPCError as exc:
                raise XPCRichError(exc.message, code=ErrorCode.CONNECTION_INVALID) from None
        if mach_service is not None and not os.path.exists(service_socket_path(mach_service)):
            raise XPCRichError(f"no service named {mach_service} is listening", code=ErrorCode.CONNECTION_INVALID)
        conn = MessageConnection(
            mach_service_name=mach_service, service_name=xpc_service, listener_endpoint=endpoint, limits=limits
        )
        conn._interruptible = False  # sessions never reconnect or relaunch
        self._setup(conn, incoming_message_handler, cancellation_handler)
        self._describe = conn._describe
        if not inactive:
            self.activate()
        with self._lock:
            # A peer that cannot be reached at all raises here (the cancellation
            # handler then never runs: there is no session to cancel). A peer that was
            # reached and refused cancels the session instead, as any later failure.
            if conn.invalid and not conn._ever_connected and conn._invalid_message().startswith("no listener"):
                raise XPCRichError.of(conn.final_error())
            self._constructed = True
            missed = self._missed
        if missed:
            conn._post(self._on_invalidated)  # the teardown ran before the session existed

    def _setup(
        self,
        conn: MessageConnection,
        incoming: Callable[[XPCReceivedMessage], object] | None,
        cancellation: Callable[[XPCRichError], object] | None,
    ) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._incoming = incoming
        self._cancellation = cancellation
        self._activated = False
        self._constructed = False
        self._missed = False
        conn._attach(self, incoming is not None)
        conn.invalidation_handler = self._on_invalidated

    @classmethod
    def _for_peer(
        cls,
        conn: MessageConnection,
        incoming: Callable[[XPCReceivedMessage], object] | None,
        cancellation: Callable[[XPCRichError], object] | None,
    ) -> XPCSession:
        self = object.__new__(cls)
        self._setup(conn, incoming, cancellation)
        self._describe = conn._describe
        self._constructed = True
        self._activated = True
        conn.resume()
        return self

    def __repr__(self) -> str:
        state = "cancelled" if self._conn.invalid else ("active" if self._activated else "inactive")
        return f"<nsxpc.XPCSession to {self._describe} {state}>"

    @property
    def peer_credentials(self) -> Any:
        """The peer's identity from the kernel at connect (nsxpc.PeerCredentials), or None."""
        return self._conn.peer_credentials

    def activate(self) -> None:
        """Start an inactive session; does nothing if it is already active (``activate()``).

        Raises:
            RuntimeError: the session was cancelled.
        """
        if self._activated:
            return
        if self._conn.invalid:
            raise RuntimeError("the session was cancelled")
        self._activated = True
        self._conn.activate()

    def set_peer_requirement(self, requirement: Any) -> None:
        """Require the peer to satisfy ``requirement`` (an nsxpc.PeerRequirement), before activation.

        Raises:
            RuntimeError: the session is already active, or has a requirement.
        """
        if self._activated:
            raise RuntimeError("set_peer_requirement() must be called before the session is activated")
        setter = getattr(self._conn, "set_peer_requirement", None)
        if setter is None:
            raise NotImplementedError("peer requirements are not available in this build")
        setter(requirement)

    def _check_can_send(self) -> None:
        if not self._activated:
            raise RuntimeError("send on an inactive session: call activate() first")

    def send(
        self, message: object, reply_handler: Callable[[XPCReceivedMessage | XPCRichError], object] | None = None
    ) -> None:
        """Send a message, FIFO (``send(_:)`` / ``send(_:replyHandler:)``).

        With ``reply_handler`` it is called once, on the session's queue, with the
        reply (an XPCReceivedMessage) or an XPCRichError.

        Raises:
            RuntimeError: the session is inactive.
            XPCRichError: the session is cancelled (without ``reply_handler``; with
                one, the handler gets the error).
            TypeError, EncodingError: the message is not a dict of plain values or a
                secure-coding object (nothing is sent).
        """
        self._check_can_send()
        prepared = _prepare(message)
        conn = self._conn
        if conn.invalid:
            error = XPCRichError.of(conn.final_error())
            if reply_handler is None:
                raise error
            # A reply handler learns it the way it would have a moment later: on the queue.
            conn._post(lambda: reply_handler(error))
            return
        if reply_handler is None:
            conn.send_one_way(prepared)
            return
        limits = conn._limits

        def on_reply(payload: object) -> None:
            reply_handler(XPCReceivedMessage(payload, None, False, limits))

        def on_error(error: XPCError) -> None:
            reply_handler(XPCRichError.of(error))

        conn.send_with_reply(prepared, on_reply, on_error)

    def send_sync(self, message: object, timeout: float | None = None) -> XPCReceivedMessage:
        """Send a message and wait for its reply (``sendSync(_:)``).

        Raises:
            RuntimeError: the session is inactive, or this is its own queue.
            XPCRichError: the session is or gets cancelled, the peer failed to
                reply, or ``timeout`` seconds passed.
            TypeError, EncodingError: the message is invalid (nothing is sent).
        """
        self._check_can_send()
        prepared = _prepare(message)
        conn = self._conn
        if conn.invalid:
            raise XPCRichError.of(conn.final_error())
        try:
            payload = conn.send_sync(prepared, timeout)
        except EncodingError:
            raise  # local misuse: nothing was sent
        except XPCError as exc:
            raise XPCRichError.of(exc) from None
        return XPCReceivedMessage(payload, None, False, conn._limits)

    def cancel(self, reason: str = "") -> None:
        """Cancel the session for good (``cancel(reason:)``); idempotent. Pending replies
        end with XPCRichError; the cancellation handler runs once."""
        why = f": {reason}" if reason else ""
        self._conn._invalidate(f"the session with {self._describe} was cancelled{why}")

    # ------------------------------------------------------------------ on the queue

    def _on_message(self, payload: object, reply: Any, sync: bool) -> None:
        message = XPCReceivedMessage(payload, reply, sync, self._conn._limits)
        handler = self._incoming
        if handler is None:
            log.warning("nsxpc: %s sent a message, but the session has no incoming message handler", self._describe)
            if reply is not None:
                reply._fail(DecodingError("the session has no incoming message handler"))
            return
        result = handler(message)
        if result is not None:
            if reply is not None and not message._replied:
                message.reply(result)
            elif reply is None:
                log.debug("nsxpc: a message handler returned a value for a message that wants no reply")

    def _on_bad_message(self, error: XPCError) -> None:
        log.warning("nsxpc: cancelling the session with %s: malformed message: %s", self._describe, error.message)
        self._conn._invalidate(f"{self._describe} sent a malformed message: {error.message}")

    def _on_invalidated(self) -> None:
        with self._lock:
            constructed = self._constructed
            if not constructed:
                self._missed = True
                return
        handler, self._cancellation, self._incoming = self._cancellation, None, None
        if handler is not None:
            handler(XPCRichError.of(self._conn.final_error()))


# --------------------------------------------------------------------------- listeners


class XPCIncomingSessionRequest:
    """A client asking for a session (``XPCListener.IncomingSessionRequest``): answer
    with ``accept(handler)`` or ``reject(reason=...)``, and return what they return."""

    __slots__ = ("_conn", "_decided", "session")

    def __init__(self, conn: MessageConnection) -> None:
        self._conn = conn
        self._decided = False
        self.session: XPCSession | None = None

    def __repr__(self) -> str:
        return f"<nsxpc.XPCIncomingSessionRequest from pid {self._conn.process_identifier}>"

    @property
    def peer_credentials(self) -> Any:
        """The client's identity (nsxpc.PeerCredentials)."""
        return self._conn.peer_credentials

    def accept(
        self,
        incoming_message_handler: Callable[[XPCReceivedMessage], object] | None = None,
        cancellation_handler: Callable[[XPCRichError], object] | None = None,
    ) -> XPCSession:
        """Accept the session; returns the server side's XPCSession.

        Raises:
            RuntimeError: the request was already accepted or rejected.
        """
        if self._decided:
            raise RuntimeError("this session request was already answered")
        self._decided = True
        self.session = XPCSession._for_peer(self._conn, incoming_message_handler, cancellation_handler)
        return self.session

    def reject(self, reason: str = "") -> None:
        """Refuse the session; the client's session is cancelled with ``reason`` in its error.

        Raises:
            RuntimeError: the request was already accepted or rejected.
        """
        if self._decided:
            raise RuntimeError("this session request was already answered")
        self._decided = True
        self._conn._refusal_reason = f"the listener rejected the session: {reason or 'no reason given'}"
        return None


class _SessionDelegate:
    def __init__(self, handler: Callable[[XPCIncomingSessionRequest], object]) -> None:
        self.handler = handler

    def should_accept_new_connection(self, listener: Listener, connection: Connection) -> bool:
        assert isinstance(connection, MessageConnection)
        request = XPCIncomingSessionRequest(connection)
        try:
            self.handler(request)
        except Exception:
            log.exception("nsxpc: the incoming session handler raised; rejecting the session")
            if request.session is None:
                connection._refusal_reason = "the listener's incoming session handler failed"
            return request.session is not None
        if not request._decided:
            connection._refusal_reason = "the listener neither accepted nor rejected the session"
        return request.session is not None


def serve_sessions(listener: Listener, handler: Callable[[XPCIncomingSessionRequest], object]) -> None:
    """Make ``listener`` (not yet resumed) accept XPC message sessions through ``handler``."""
    if not callable(handler):
        raise TypeError("incoming_session_handler must be callable")
    listener._connection_class = MessageConnection
    listener.delegate = _SessionDelegate(handler)


class XPCListener:
    """Accepts sessions (Swift's ``XPCListener``): ``incoming_session_handler(request)``
    answers each with ``request.accept(handler)`` or ``request.reject(reason=...)``.

    Args:
        mach_service: the name clients use; None makes an anonymous listener reached
            through :attr:`endpoint`.
        inactive: create it inactive (then ``activate()``); else it listens at once.

    Raises:
        XPCError: the name is already served by a live process.
        ValueError: the name is invalid.
    """

    def __init__(
        self,
        *,
        mach_service: str | None = None,
        incoming_session_handler: Callable[[XPCIncomingSessionRequest], object],
        inactive: bool = False,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if mach_service is None:
            self._listener = Listener.anonymous(limits=limits)
        else:
            self._listener = Listener(mach_service_name=mach_service, limits=limits)
        serve_sessions(self._listener, incoming_session_handler)
        self.mach_service = mach_service
        if not inactive:
            self.activate()

    def __repr__(self) -> str:
        return f"<nsxpc.XPCListener {self.mach_service or 'anonymous'} {self._listener._life.state.name}>"

    @property
    def endpoint(self) -> ListenerEndpoint:
        """The value that lets a process open a session with this listener."""
        return self._listener.endpoint

    def activate(self) -> None:
        """Start listening; does nothing if already active.

        Raises:
            XPCError: the name is already served by a live process.
        """
        self._listener.activate()

    def cancel(self) -> None:
        """Stop accepting sessions and remove the socket; accepted sessions stay up."""
        self._listener.invalidate()

    def set_peer_requirement(self, requirement: Any) -> None:
        """Require every client to satisfy ``requirement``, before activation.

        Raises:
            RuntimeError: already active, or a requirement was set.
        """
        setter = getattr(self._listener, "set_connection_peer_requirement", None)
        if setter is None:
            raise NotImplementedError("peer requirements are not available in this build")
        setter(requirement)
