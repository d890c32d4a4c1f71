"""L3: one connection's protocol core. Sans-I/O: bytes in, events out, bytes to send.

The runtime (L4) feeds received bytes to :meth:`ConnectionCore.receive` and
writes the frames the ``invoke``/``reply``/``failure`` builders return. The
core owns everything that decides *meaning*: the handshake, the pending-reply
table, and the decoding of arguments against the exported interface.

Invariants (the exactly-once contract, NSXPC H9):
- Every call that expects a reply is registered in ``pending`` under a fresh
  sequence number, and leaves it exactly once, through :meth:`resolve` or
  :meth:`resolve_all`. Every path that ends a call (reply, failure, reply
  that fails to decode, timeout, interruption, invalidation) goes through
  them, so a call can never be answered twice, and a reply for a call that
  already ended (a late reply after a timeout) is discarded.
- A reply or failure for a sequence number this side never issued is a
  protocol violation (dbus-broker: only expected replies are allowed).
- A well-framed INVOKE that names an unknown selector or object, has the
  wrong arity, or whose arguments fail their allowlist is refused alone
  (:class:`CallRejected`); the connection stays up. A malformed envelope or
  corrupt framing is a :class:`Violation`: nothing after it is read.
- Objects by proxy (NSXPC X6): :class:`ExportTable` maps ids to exported
  objects. The root object is id 1; every other id is allocated once per
  connection and never reused, so a stale id can never reach a newer object.
  An object exported again (same object, same interface) keeps its id and
  gains a count; each RELEASE takes one count, and the entry goes at zero.
  An INVOKE naming an id the table does not hold is refused alone
  (ProtocolError code, the id in the message); the connection stays up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

from . import _codec, _messages
from ._coding import DecodeContext, EncodeContext, SlotType, decode_value, encode_value
from ._errors import DecodingError, EncodingError, ProtocolError, ReplyInvalid, XPCError, error_for_code
from ._fdvalues import NEVER, SCM_MAX_FD, MessageFds, close_fds, forget
from ._framing import FrameDecoder, encode_frame
from ._interface import Interface, MethodSpec
from ._limits import DEFAULT_LIMITS, Limits

__all__ = [
    "BadHello",
    "CallReceived",
    "CallRejected",
    "ConnectionCore",
    "Event",
    "ExportTable",
    "HelloReceived",
    "PendingCall",
    "Refused",
    "Released",
    "Resolved",
    "Violation",
    "Welcomed",
    "encode_arguments",
    "interface_of",
]


# Scalars need no conversion either way; the slot check alone decides.
_FAST = frozenset({type(None), bool, int, float, str, bytes})
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def encode_arguments(
    slots: Sequence[SlotType],
    values: Sequence[object],
    selector: str,
    what: str,
    max_depth: int,
    export_object: ObjectExporter | None,
    limits: Limits | None = None,
    plain: tuple[type, ...] | None = None,
) -> tuple[Sequence[object], list[int]]:
    """Check and encode the arguments of a call or reply against their slots.

    Returns the wire trees and the fds they carry: duplicates the message owns,
    which the caller closes once the frame is written or dropped. Without
    ``limits`` no ``bytes`` is promoted to shared memory. Values of exactly the
    ``plain`` types (``MethodSpec.arg_types``) go as they are; an integer beyond
    64 bits among them is then caught when the message is packed (see
    :func:`_pack_message`).

    Raises:
        EncodingError: a value fails its slot's allowlist or annotation, or cannot
            be carried, or the message would carry more fds than ``limits.max_fds``.
    """
    threshold = None if limits is None else limits.shared_memory_threshold
    if (
        plain is not None
        and tuple(map(type, values)) == plain
        and (threshold is None or bytes not in plain or all(len(v) <= threshold for v in values if type(v) is bytes))
    ):
        return values, []
    if len(values) != len(slots):
        raise EncodingError(f"{selector}: expected {len(slots)} {what}s, got {len(values)}")
    promote = NEVER if threshold is None else threshold
    fds: list[int] = []
    ctx: EncodeContext | None = None
    out: list[object] = []
    try:
        for index in range(len(slots)):
            slot = slots[index]
            value = values[index]
            if not slot.check(value):
                raise EncodingError(f"{selector} {what} {index}: {slot.explain(value)}")
            t = type(value)
            if t in _FAST and slot.interface is None and (t is not bytes or len(value) <= promote):  # type: ignore[arg-type]
                if t is int and not _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
                    raise EncodingError(f"{selector} {what} {index}: integer {value} does not fit in 64 bits")
                out.append(value)
                continue
            if slot.as_is is not None and slot.as_is(value, max_depth):
                out.append(value)  # packing finds an integer beyond 64 bits (see _pack_message)
                continue
            try:
                if ctx is None:
                    ctx = EncodeContext(max_depth, fds, export_object, threshold)
                if slot.interface is not None:
                    if export_object is None:
                        raise EncodingError("objects by proxy need a connection that exports them")
                    out.append(_codec.ExtType(_codec.EXT_PROXY, _codec.pack(export_object(value, slot))))
                else:
                    out.append(encode_value(value, ctx))
            except EncodingError as exc:
                raise EncodingError(f"{selector} {what} {index}: {exc.message}") from None
    except BaseException:
        close_fds(fds)  # a half-encoded message owns the fds it made so far
        raise
    if not fds:
        return out, fds
    max_fds = SCM_MAX_FD if limits is None else min(limits.max_fds, SCM_MAX_FD)
    if len(fds) > max_fds:
        close_fds(fds)
        raise EncodingError(
            f"{selector}: the message would carry {len(fds)} file descriptors, more than "
            f"the cap of {max_fds} (nsxpc.Limits.max_fds)"
        )
    return out, MessageFds(fds)


def _pack_message(msg: list[Any], slots: Sequence[SlotType], plain: tuple[type, ...] | None, selector: str,
                  what: str = "argument") -> bytes:  # fmt: skip
    """Pack a call or reply whose arguments are the message's last element. Arguments
    that went as they are (``plain``) and fail to pack hold an integer beyond 64 bits:
    encoding them slot by slot says which."""
    try:
        return _codec.pack(msg)
    except EncodingError as exc:
        if plain is not None and tuple(map(type, msg[-1])) == plain:
            encode_arguments(slots, msg[-1], selector, what, DEFAULT_LIMITS.max_depth, None)
        raise EncodingError(f"{selector}: {exc.message}") from None


class PendingCall:
    """A call that expects a reply. The runtime subclasses it with its handlers."""

    __slots__ = ("method", "seq", "target")

    def __init__(self, method: MethodSpec, target: int = _messages.ROOT_OBJECT) -> None:
        self.method = method
        self.target = target
        self.seq = 0


class _Event:
    """Base of the core's events: plain slotted records, compared by value.

    Not attrs classes: attrs compiles methods for each class when the module is
    imported, and every launched service pays for ``import nsxpc``. Treat events
    as immutable.
    """

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({fields})"


class HelloReceived(_Event):
    """Server side: a client opened with a valid handshake."""

    __slots__ = ("info", "kind", "token")

    def __init__(self, kind: str, token: bytes, info: dict[str, Any]) -> None:
        self.kind = kind
        self.token = token
        self.info = info


class BadHello(_Event):
    """Server side: the first frame was not an acceptable HELLO; refuse with ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error


class Welcomed(_Event):
    """Client side: the listener accepted the connection."""

    __slots__ = ("info",)

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info


class Refused(_Event):
    """Client side: the listener refused the connection (it closes next)."""

    __slots__ = ("error",)

    def __init__(self, error: XPCError) -> None:
        self.error = error


class CallReceived(tuple[int, int, object, MethodSpec, list[Any]]):
    """A well-formed call whose arguments passed their slots. ``seq`` 0 means one-way.

    This and :class:`Resolved`, the two events of every call, are tuples (see
    :class:`~nsxpc._framing.Frame`) that the core builds with ``tuple.__new__``
    (:data:`_new_event`): a slotted record's ``__init__`` costs a Python call per
    message on each side. The runtime unpacks them."""

    __slots__ = ()

    def __new__(cls, seq: int, target: int, obj: object, method: MethodSpec, args: list[Any]) -> CallReceived:
        return tuple.__new__(cls, (seq, target, obj, method, args))

    seq = property(itemgetter(0))
    target = property(itemgetter(1))
    obj = property(itemgetter(2))
    method = property(itemgetter(3))
    args = property(itemgetter(4))


class CallRejected(_Event):
    """A call that cannot be delivered. If ``seq`` is not 0 the caller must get ``error``."""

    __slots__ = ("error", "selector", "seq")

    def __init__(self, seq: int, selector: str, error: XPCError) -> None:
        self.seq = seq
        self.selector = selector
        self.error = error


class Resolved(tuple[PendingCall, "list[Any] | None", "XPCError | None"]):
    """A pending call ended: with ``values`` (the reply's arguments) or with ``error``;
    the tuple ``(call, values, error)`` (see :class:`CallReceived`)."""

    __slots__ = ()

    def __new__(cls, call: PendingCall, values: list[Any] | None = None, error: XPCError | None = None) -> Resolved:
        return tuple.__new__(cls, (call, values, error))

    call = property(itemgetter(0))
    values = property(itemgetter(1))
    error = property(itemgetter(2))


_new_event = tuple.__new__


class Released(_Event):
    """The peer dropped its proxy to one of our exported objects."""

    __slots__ = ("target",)

    def __init__(self, target: int) -> None:
        self.target = target


class Violation(_Event):
    """The peer broke the protocol; the connection must be invalidated."""

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error


ProxyImporter = Callable[[int, Any], object]
ObjectExporter = Callable[[object, Any], int]
Event = BadHello | HelloReceived | Welcomed | Refused | CallReceived | CallRejected | Resolved | Released | Violation
Exports = dict[int, tuple[object, Interface]]

_DEFAULT_INTERFACES: dict[type, Interface] = {}


def interface_of(slot: SlotType) -> Interface:
    """The Interface a by-proxy slot carries: the one given to ``set_interface`` (or
    returned by ``interface_for``), else the default interface of its annotation."""
    iface = slot.interface
    if isinstance(iface, Interface):
        return iface
    found = _DEFAULT_INTERFACES.get(iface)
    if found is None:
        found = _DEFAULT_INTERFACES[iface] = Interface(iface)
    return found


class ExportTable(dict[int, tuple[object, Interface]]):
    """A connection's exported objects by id: the root object (id 1) and the objects
    passed by proxy, each with the number of references the peer holds.

    A dict of ``id -> (object, interface)`` (the core looks targets up in it) with the
    counts beside it. Not thread-safe: the runtime serialises its calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[int, int] = {}
        # (id(object), id(interface)) -> object id; the entry's strong references keep
        # both alive, so neither id() can be reused while the key exists.
        self._ids: dict[tuple[int, int], int] = {}
        self._next = _messages.ROOT_OBJECT + 1
        #: Bumped whenever objects passed by proxy are dropped wholesale (interruption).
        self.generation = 0

    def export(self, obj: object, iface: Interface) -> int:
        """Export ``obj`` (once more) and return its id."""
        key = (id(obj), id(iface))
        ident = self._ids.get(key)
        if ident is not None:
            self._counts[ident] += 1
            return ident
        ident = self._next
        self._next = ident + 1
        self._ids[key] = ident
        self._counts[ident] = 1
        self[ident] = (obj, iface)
        return ident

    def release(self, ident: int) -> tuple[bool, tuple[object, Interface] | None]:
        """Take one reference to ``ident``. Returns whether the id was known, and the
        entry if that was its last reference (for the caller to drop outside its locks).
        The root object is never released by the peer."""
        count = self._counts.get(ident)
        if count is None:
            return ident == _messages.ROOT_OBJECT and ident in self, None
        if count > 1:
            self._counts[ident] = count - 1
            return True, None
        del self._counts[ident]
        entry = self.pop(ident)
        del self._ids[(id(entry[0]), id(entry[1]))]
        return True, entry

    def drop_exported(self) -> list[tuple[object, Interface]]:
        """Forget every object passed by proxy (the peer that held them is gone); keep
        the root object. Returns the entries, for the caller to drop outside its locks."""
        dropped = [self.pop(ident) for ident in self._counts]
        self._counts.clear()
        self._ids.clear()
        self.generation += 1
        return dropped

    def clear(self) -> None:
        self.drop_exported()
        super().clear()

    @property
    def exported_count(self) -> int:
        """How many objects passed by proxy the table holds (the root object excluded)."""
        return len(self._counts)

    def references(self, ident: int) -> int:
        """How many references the peer holds to ``ident`` (0 if unknown)."""
        return self._counts.get(ident, 0)


class ConnectionCore:
    """The protocol state of one transport link (one socket, one handshake).

    Args:
        client: True on the connecting side.
        exports: the exported-object table, shared with the connection so that an
            exported object set after resume is seen.
        limits: resource limits for what the peer sends.
        kind: the connection flavour announced in HELLO ("nsxpc" for proxies).
    """

    def __init__(
        self,
        *,
        client: bool,
        exports: Exports | None = None,
        limits: Limits = DEFAULT_LIMITS,
        kind: str = "nsxpc",
    ) -> None:
        self.client = client
        self.kind = kind
        self.limits = limits
        self.exports: Exports = exports if exports is not None else ExportTable()
        self.decoder = FrameDecoder(limits.max_frame_size, limits.max_fds)
        self._max_nodes = limits.max_nodes
        #: "hello" (server waits for HELLO), "welcome" (client waits), "open", or "closed".
        self.phase = "welcome" if client else "hello"
        #: Calls awaiting their answer, by sequence number (read-only outside this class:
        #: the hot path counts them with len() instead of through a property).
        self.pending: dict[int, PendingCall] = {}
        self._last_seq = 0
        #: fds of the current frame that a decoded value took ownership of.
        self.claimed_fds: set[int] = set()
        #: values that adopted an fd of the frame being decoded (see _fdvalues).
        self._frame_owned: list[tuple[int, object]] | None = None
        self.import_proxy: ProxyImporter | None = None
        self.export_object: ObjectExporter | None = None

    # ------------------------------------------------------------------ handshake

    def hello(self, token: bytes = b"", info: dict[str, Any] | None = None) -> bytes:
        """The client's first frame."""
        msg = [_messages.HELLO, _messages.MAGIC, _messages.VERSION, self.kind, token, info or {}]
        return encode_frame(_codec.pack(msg))

    def welcome(self, info: dict[str, Any] | None = None) -> bytes:
        """The server's acceptance."""
        self.phase = "open"
        return encode_frame(_codec.pack([_messages.WELCOME, _messages.MAGIC, _messages.VERSION, info or {}]))

    def refuse(self, error: XPCError) -> bytes:
        """The server's refusal; the connection closes after it."""
        self.phase = "closed"
        return encode_frame(_codec.pack([_messages.REFUSE, int(error.code), error.message]))

    # ------------------------------------------------------------------ outgoing

    def invoke(
        self, method: MethodSpec, args: Sequence[object], nfds: int, call: PendingCall | None, target: int
    ) -> bytes:
        """Frame a call whose arguments :func:`encode_arguments` already encoded, and
        register ``call`` (if a reply is expected) under a new sequence number."""
        seq = 0
        if call is not None:
            seq = self._last_seq + 1
        body = _pack_message(
            [_messages.INVOKE, seq, target, method.selector, args], method.args, method.arg_types, method.selector
        )
        frame = self._frame(body, nfds, method)
        if call is not None:
            self._last_seq = call.seq = seq
            self.pending[seq] = call
        return frame

    def reply(self, seq: int, method: MethodSpec, values: Sequence[object]) -> tuple[bytes, list[int]]:
        """Encode the reply to call ``seq``.

        Raises:
            EncodingError: a reply argument fails its slot.
        """
        slots = method.reply
        assert slots is not None
        args, fds = encode_arguments(
            slots, values, method.selector, "reply argument", self.limits.max_depth, self.export_object,
            self.limits, method.reply_types,
        )  # fmt: skip
        body = _pack_message([_messages.REPLY, seq, args], slots, method.reply_types, method.selector, "reply argument")
        return self._frame(body, len(fds), method), fds

    def _frame(self, body: bytes, nfds: int, method: MethodSpec) -> bytes:
        if len(body) > self.limits.max_frame_size:
            raise EncodingError(
                f"{method.selector}: the message is {len(body)} bytes, over the "
                f"{self.limits.max_frame_size}-byte frame cap (nsxpc.Limits.max_frame_size)"
            )
        return encode_frame(body, nfds)

    def failure(self, seq: int, error: XPCError) -> bytes:
        """Encode the error answer to call ``seq``."""
        return encode_frame(_codec.pack([_messages.FAILURE, seq, int(error.code), error.message]))

    def release(self, target: int) -> bytes:
        return encode_frame(_codec.pack([_messages.RELEASE, target]))

    # ------------------------------------------------------------------ pending calls

    def resolve(self, seq: int) -> PendingCall | None:
        """Take call ``seq`` out of the pending table: the one place a call ends."""
        return self.pending.pop(seq, None)

    def resolve_all(self) -> list[PendingCall]:
        """Take every pending call out, in the order they were made."""
        calls = [self.pending[s] for s in sorted(self.pending)]
        self.pending.clear()
        return calls

    # ------------------------------------------------------------------ incoming

    def feed(self, data: bytes | memoryview, fds: Sequence[int] = ()) -> None:
        """Buffer received bytes and the fds that came with them."""
        if self.phase != "closed":
            self.decoder.feed(data, fds)

    def next_event(self) -> Event | None:
        """Decode the next complete frame into an event, or None if more bytes are needed.

        Frames are decoded one at a time, when asked for: a frame is decoded
        against the exported interface as it is *then* (so a listener's delegate
        that sets the interface while handling HELLO governs the frames after it).
        After a :class:`Violation` the core is closed and returns None.
        """
        decoder = self.decoder
        while self.phase != "closed":
            if not decoder.buf:
                return None  # nothing buffered: the common case after each message
            try:
                frame = decoder.next_frame()
                if frame is None:
                    return None
                body, fds = frame
                if decoder._fds and not decoder.buf:
                    # fds come with their frame's first byte: with every byte received
                    # consumed, these belong to no frame. Held, they would pile up.
                    close_fds(fds)
                    stray = decoder.take_fds()
                    close_fds(stray)
                    raise ProtocolError(
                        f"corrupt framing: {len(stray)} file descriptors arrived that no frame announced"
                    )
                event = self._on_frame_with_fds(body, fds) if fds else self._on_frame(body, fds)
            except ProtocolError as exc:
                self.phase = "closed"
                return Violation(exc)
            if event is not None:
                return event
        return None

    def receive(self, data: bytes, fds: Sequence[int] = ()) -> list[Event]:
        """Feed bytes and return every event they complete (for tests and simple drivers)."""
        self.feed(data, fds)
        events: list[Event] = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events

    def _on_frame_with_fds(self, body: bytes, fds: tuple[int, ...]) -> Event | None:
        """Decode a frame that carried fds; close every fd no decoded value took,
        whatever happened to the message (refused, malformed, or delivered).

        Values that adopted an fd while decoding own it only if the message is
        delivered (a call received, a reply with values); otherwise they give it
        up and it is closed here with the rest, exactly once."""
        self.claimed_fds = set()
        owned: list[tuple[int, object]] = []
        self._frame_owned = owned
        event: Event | None = None
        try:
            event = self._on_frame(body, fds)
            return event
        finally:
            self._frame_owned = None
            if owned:
                if type(event) is CallReceived or (type(event) is Resolved and event.error is None):
                    self.claimed_fds = {fds[index] for index, _ in owned}
                else:
                    for _, value in owned:
                        forget(value)
            for fd in fds:
                if fd not in self.claimed_fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def _on_frame(self, body: bytes, fds: tuple[int, ...]) -> Event | None:
        if self.phase == "hello":
            try:
                msg = _codec.unpack(body, self._max_nodes, self._max_nodes)
                _messages.check_hello_version(msg)
                _, _, _, kind, token, info = _messages.check_envelope(msg)
                if kind != self.kind:
                    raise ProtocolError(_messages.kind_mismatch(kind, self.kind))
            except ProtocolError as exc:
                # Tell the peer why before closing: the handshake is where versions meet.
                self.phase = "closed"
                return BadHello(exc)
            self.phase = "open"
            return HelloReceived(kind, token, info)
        msg = _codec.unpack(body, self._max_nodes, self._max_nodes)
        if type(msg) is list and msg:
            # The two hot kinds are checked inline; everything else through check_envelope.
            kind_ = msg[0]
            if kind_ == _messages.INVOKE and self.phase == "open":
                if len(msg) != 5 or type(msg[1]) is not int or type(msg[2]) is not int \
                        or type(msg[3]) is not str or type(msg[4]) is not list:  # fmt: skip
                    raise ProtocolError("malformed INVOKE message")
                return self._on_invoke(msg, fds)
            if kind_ == _messages.REPLY and self.phase == "open":
                if len(msg) != 3 or type(msg[1]) is not int or type(msg[2]) is not list:
                    raise ProtocolError("malformed REPLY message")
                return self._on_answer(msg, fds)
        else:
            kind_ = None
        if self.phase == "welcome":
            if kind_ == _messages.REFUSE:
                _, code, reason = _messages.check_envelope(msg)
                self.phase = "closed"
                return Refused(error_for_code(code, reason))
            if kind_ == _messages.WELCOME:
                if type(msg) is list and len(msg) >= 3 and msg[2] != _messages.VERSION:
                    raise ProtocolError(
                        f"protocol version mismatch: listener speaks nsxpc wire version {msg[2]!r}, "
                        f"this side speaks version {_messages.VERSION}"
                    )
                _, _, _, info = _messages.check_envelope(msg)
                self.phase = "open"
                return Welcomed(info)
            raise ProtocolError("listener did not answer the handshake")
        msg = _messages.check_envelope(msg)
        if kind_ == _messages.INVOKE:
            return self._on_invoke(msg, fds)
        if kind_ == _messages.REPLY or kind_ == _messages.FAILURE:
            return self._on_answer(msg, fds)
        if kind_ == _messages.RELEASE:
            return Released(msg[1])
        raise ProtocolError(f"unexpected message kind {kind_} after the handshake")

    def _on_invoke(self, msg: list[Any], fds: tuple[int, ...]) -> Event:
        _, seq, target, selector, raw_args = msg
        if seq < 0:
            raise ProtocolError("negative sequence number")
        entry = self.exports.get(target)
        if entry is None:
            if target == _messages.ROOT_OBJECT:
                return CallRejected(seq, selector, DecodingError(
                    f"{selector}: no exported object to receive the message"))  # fmt: skip
            # A proxy id this side never exported, or whose last reference was released:
            # the peer is confused (or hostile), but the stream itself is intact.
            return CallRejected(seq, selector, ProtocolError(
                f"{selector}: no exported object with id {target} (never exported, or already released)"))  # fmt: skip
        obj, iface = entry
        method = iface.method(selector)
        if method is None:
            return CallRejected(seq, selector, DecodingError(
                f"selector {selector!r} is not in protocol {iface.protocol.__qualname__}"))  # fmt: skip
        if method.wants_reply != (seq != 0):
            want = "expects a reply" if method.wants_reply else "is one-way"
            return CallRejected(seq, selector, DecodingError(
                f"{selector}: incompatible reply block signature (the method {want})"))  # fmt: skip
        try:
            args = self._decode(method.args, raw_args, fds, selector, "argument", method.arg_types)
        except DecodingError as exc:
            return CallRejected(seq, selector, exc)
        return _new_event(CallReceived, (seq, target, obj, method, args))

    def _on_answer(self, msg: list[Any], fds: tuple[int, ...]) -> Event | None:
        seq = msg[1]
        if seq <= 0 or seq > self._last_seq:
            raise ProtocolError(f"answer to call {seq}, which was never made")
        call = self.resolve(seq)
        if call is None:
            return None  # a late answer to a call that already ended (timeout): discarded
        if msg[0] == _messages.FAILURE:
            return Resolved(call, error=error_for_code(msg[2], msg[3]))
        method = call.method
        assert method.reply is not None
        try:
            values = self._decode(method.reply, msg[2], fds, method.selector, "reply argument", method.reply_types)
        except DecodingError as exc:
            return Resolved(
                call, error=ReplyInvalid(f"reply to {call.method.selector!r} could not be decoded: {exc.message}")
            )
        return _new_event(Resolved, (call, values, None))

    def _decode(
        self,
        slots: Sequence[SlotType],
        raw: list[Any],
        fds: tuple[int, ...],
        selector: str,
        what: str,
        plain: tuple[type, ...] | None = None,
    ) -> list[Any]:
        if plain is not None and tuple(map(type, raw)) == plain:
            return raw  # scalars of exactly the slots' types: nothing to convert or check
        if (
            len(raw) == 1 == len(slots)
            and (as_is := slots[0].as_is) is not None
            and as_is(raw[0], self.limits.max_depth)
        ):
            return raw  # one value its slot's own shortcut takes (the message port's dicts)
        if len(raw) != len(slots):
            raise DecodingError(f"{selector}: expected {len(slots)} {what}s, got {len(raw)}")
        ctx: DecodeContext | None = None
        out: list[Any] = []
        for index in range(len(slots)):
            slot = slots[index]
            value = raw[index]
            if type(value) in _FAST and slot.interface is None:
                # A scalar needs no conversion: the slot's check alone decides.
                if slot.check(value):
                    out.append(value)
                    continue
                raise DecodingError(f"{selector} {what} {index}: {slot.explain(value)}")
            try:
                if ctx is None:
                    limits = self.limits
                    ctx = DecodeContext(fds, limits.max_depth, limits.max_nodes, limits.max_nodes, self.import_proxy,
                                        owned=self._frame_owned, shm_left=limits.max_shared_memory)  # fmt: skip
                value = self._decode_one(slot, value, ctx)
                if not slot.check(value):
                    raise DecodingError(str(slot.explain(value)))
            except DecodingError as exc:
                raise DecodingError(f"{selector} {what} {index}: {exc.message}") from None
            out.append(value)
        return out

    @staticmethod
    def _decode_one(slot: SlotType, value: object, ctx: DecodeContext) -> object:
        if slot.interface is not None:
            if type(value) is not _codec.Ext or value.code != _codec.EXT_PROXY:
                raise DecodingError("this argument travels by proxy, but a value was sent by copy")
            if ctx.import_proxy is None:
                raise DecodingError("objects by proxy are not supported on this connection")
            ident = ctx.unpack(value.data)
            if type(ident) is not int or ident < _messages.ROOT_OBJECT:
                raise DecodingError("malformed proxy reference")
            return ctx.import_proxy(ident, slot)
        return decode_value(value, slot.allowed, ctx)
