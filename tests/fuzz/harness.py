"""The fuzz invariant, shared by the atheris target (tests/fuzz/fuzz_decoder.py),
its corpus replay and the Hypothesis properties (tests/unit/test_fuzz_core.py).

Invariant (DESIGN.md rule 9, reliability.md A1/A3): arbitrary bytes fed to the
sans-I/O core give events or a defined nsxpc error, nothing else:

- ``ConnectionCore.next_event`` never raises; a broken stream ends in exactly one
  terminal event (``Violation`` or ``BadHello`` carrying a ``ProtocolError``,
  or ``Refused`` carrying an ``XPCError``) and nothing follows it.
- A delivered call names a selector of the exported interface, and every node of
  every argument is of a class its slot allows (checked here by an independent
  walker, not by the library's own ``slot.check``).
- A pending call is resolved at most once, with reply values that pass their
  slots or with an ``XPCError``; an answer never resolves a call not made.
- The codec path (``_codec.unpack`` then ``decode_value``) raises only
  ``ProtocolError`` or ``DecodingError``.

The first two bytes of a fuzz input choose the mode and the read chunking, so
one byte string explores every entry point and every way the stream is split.
"""

from __future__ import annotations

from typing import Any

import nsxpc
from nsxpc import _codec, _messages
from nsxpc._coding import PLAIN_TYPES, Allowed, DecodeContext, decode_value
from nsxpc._errors import DecodingError, ProtocolError, XPCError
from nsxpc._framing import FrameDecoder
from nsxpc._interface import MethodSpec
from nsxpc._protocol import (
    BadHello,
    CallReceived,
    CallRejected,
    ConnectionCore,
    HelloReceived,
    PendingCall,
    Refused,
    Released,
    Resolved,
    Violation,
    Welcomed,
    encode_arguments,
)
from protocols.kitchen import Cookie, FrenchFry, Watermelon
from tests.helpers.lab import LabClient, lab_interface

SERVER_INTERFACE = lab_interface()
CLIENT_INTERFACE = nsxpc.Interface(LabClient)
TERMINAL = (Violation, BadHello, Refused)

#: Calls the client side has outstanding in the "client, open" mode: one per reply shape.
PENDING_SELECTORS = ("echo", "echo_list", "echo_fries", "echo_jar", "echo_maybe", "melon", "pair", "nothing", "add")

MODES = ("server-hello", "server-open", "client-welcome", "client-open", "codec", "frames")


class _Exported:
    """The exported object: never called (the core only decodes)."""


class InvariantBroken(AssertionError):
    """The core did something the fuzz invariant forbids."""


def method(iface: nsxpc.Interface, selector: str) -> MethodSpec:
    spec = iface.method(selector)
    assert spec is not None, selector
    return spec


def hello_frame() -> bytes:
    return ConnectionCore(client=True).hello()


def welcome_frame() -> bytes:
    return ConnectionCore(client=False).welcome()


def server_core(open_: bool = False) -> ConnectionCore:
    core = ConnectionCore(client=False, exports={_messages.ROOT_OBJECT: (_Exported(), SERVER_INTERFACE)})
    if open_:
        (event,) = core.receive(hello_frame())
        assert isinstance(event, HelloReceived)
        core.welcome()
    return core


SAMPLE_ARGS: dict[str, list[Any]] = {
    "echo": [{"k": [1, 2.5, None, b"x"]}],
    "echo_list": [[Cookie("oat", 2)]],
    "echo_fries": [[FrenchFry(length=3.0)]],
    "echo_jar": [{"a": Cookie("choc", 7)}],
    "echo_maybe": [None],
    "melon": [Watermelon(weight=2.0)],
    "pair": [1, "b"],
    "nothing": [],
    "add": [2, 3],
}


def client_core(open_: bool = False) -> tuple[ConnectionCore, dict[int, PendingCall]]:
    """A client core; when open, one call per reply shape is outstanding (seq 1..n)."""
    core = ConnectionCore(client=True, exports={_messages.ROOT_OBJECT: (_Exported(), CLIENT_INTERFACE)})
    core.hello()
    pending: dict[int, PendingCall] = {}
    if open_:
        (event,) = core.receive(welcome_frame())
        assert isinstance(event, Welcomed)
        for selector in PENDING_SELECTORS:
            spec = method(SERVER_INTERFACE, selector)
            args, fds = encode_arguments(spec.args, SAMPLE_ARGS[selector], selector, "argument", 32, None)
            call = PendingCall(spec)
            core.invoke(spec, args, len(fds), call, _messages.ROOT_OBJECT)
            pending[call.seq] = call
    return core, pending


# --------------------------------------------------------------------------- the independent allowlist walker


def within(value: object, classes: frozenset[type], depth: int = 0) -> bool:
    """Every node of ``value`` is of a class in ``classes`` (exact type; an XPCError
    subclass where an exception class is listed). Objects' own fields are checked by
    their class's coder, not here."""
    if depth > 64:
        return False
    t = type(value)
    if t not in classes and not (isinstance(value, XPCError) and any(issubclass(c, BaseException) for c in classes)):
        return False
    if t in (list, tuple, set, frozenset):
        return all(within(v, classes, depth + 1) for v in value)  # type: ignore[attr-defined]
    if t is dict:
        return all(within(k, classes, depth + 1) and within(v, classes, depth + 1) for k, v in value.items())  # type: ignore[attr-defined]
    return True


# --------------------------------------------------------------------------- driving


def drive(
    core: ConnectionCore,
    data: bytes,
    chunk: int = 0,
    pending: dict[int, PendingCall] | None = None,
    interface: nsxpc.Interface = SERVER_INTERFACE,
) -> list[Any]:
    """Feed ``data`` in chunks of ``chunk`` bytes (0: at once), draining events after
    each, and check every event against the invariant. Returns the events."""
    events: list[Any] = []
    resolved: set[int] = set()
    step = chunk if chunk > 0 else max(len(data), 1)
    for start in range(0, max(len(data), 1), step):
        core.feed(data[start : start + step])
        while (event := core.next_event()) is not None:
            check_event(event, events, resolved, pending, interface)
            events.append(event)
    return events


def check_event(
    event: Any,
    before: list[Any],
    resolved: set[int],
    pending: dict[int, PendingCall] | None,
    interface: nsxpc.Interface,
) -> None:
    if before and isinstance(before[-1], TERMINAL):
        raise InvariantBroken(f"{event!r} after the terminal {before[-1]!r}")
    if isinstance(event, (Violation, BadHello)):
        if not isinstance(event.error, ProtocolError):
            raise InvariantBroken(f"{event!r} does not carry a ProtocolError")
    elif isinstance(event, Refused):
        if not isinstance(event.error, XPCError):
            raise InvariantBroken(f"{event!r} does not carry an XPCError")
    elif isinstance(event, CallRejected):
        if not isinstance(event.error, XPCError) or type(event.seq) is not int or event.seq < 0:
            raise InvariantBroken(f"bad rejection {event!r}")
    elif isinstance(event, CallReceived):
        spec = interface.method(event.method.selector)
        if spec is None or spec is not event.method:
            raise InvariantBroken(f"call to {event.method.selector!r}, not in the exported interface")
        if len(event.args) != len(spec.args):
            raise InvariantBroken(f"{spec.selector}: {len(event.args)} arguments for {len(spec.args)} slots")
        for slot, value in zip(spec.args, event.args, strict=True):
            if not within(value, slot.classes):
                raise InvariantBroken(f"{spec.selector}: {value!r} is outside its slot {slot!r}")
        if (event.seq != 0) != spec.wants_reply:
            raise InvariantBroken(f"{spec.selector}: reply expectation does not match seq {event.seq}")
    elif isinstance(event, Resolved):
        seq = event.call.seq
        if pending is None or pending.get(seq) is not event.call:
            raise InvariantBroken(f"resolved a call never made: {event!r}")
        if seq in resolved:
            raise InvariantBroken(f"call {seq} resolved twice")
        resolved.add(seq)
        if (event.values is None) == (event.error is None):
            raise InvariantBroken(f"{event!r} has both or neither of values and error")
        if event.error is not None and not isinstance(event.error, XPCError):
            raise InvariantBroken(f"{event!r} ended with a foreign error")
        if event.values is not None:
            slots = event.call.method.reply or ()
            if len(event.values) != len(slots):
                raise InvariantBroken(f"{event!r}: wrong number of reply values")
            for slot, value in zip(slots, event.values, strict=True):
                if not within(value, slot.classes):
                    raise InvariantBroken(f"reply value {value!r} is outside its slot {slot!r}")
    elif isinstance(event, (HelloReceived, Welcomed, Released)):
        pass
    else:
        raise InvariantBroken(f"unknown event {event!r}")


def check_codec(data: bytes) -> None:
    """Unpack then decode with the plain allowlist: a plain value, or ProtocolError/DecodingError."""
    try:
        raw = _codec.unpack(data, 65_536, 65_536)
        value = decode_value(raw, Allowed.of(PLAIN_TYPES), DecodeContext())
    except (ProtocolError, DecodingError):
        return
    if not within(value, PLAIN_TYPES):
        raise InvariantBroken(f"{value!r} is not a plain value")


def check_frames(data: bytes, chunk: int) -> None:
    """The frame decoder alone: frames, or ProtocolError and a dead decoder."""
    decoder = FrameDecoder()
    step = chunk if chunk > 0 else max(len(data), 1)
    total = 0
    try:
        for start in range(0, max(len(data), 1), step):
            decoder.feed(data[start : start + step])
            while (frame := decoder.next_frame()) is not None:
                total += 8 + len(frame.body)
    except ProtocolError:
        try:
            decoder.next_frame()
        except ProtocolError:
            return
        raise InvariantBroken("the frame decoder is still alive after a framing error") from None
    if total + decoder.buffered != len(data):
        raise InvariantBroken("frame decoder lost or invented bytes")


def run_one(data: bytes) -> None:
    """One fuzz input: byte 0 picks the mode, byte 1 the chunking, the rest is the stream."""
    if len(data) < 2:
        return
    mode = MODES[data[0] % len(MODES)]
    chunk = data[1] % 17  # 0 = all at once, 1 = byte at a time, ...
    body = data[2:]
    if mode == "server-hello":
        drive(server_core(False), body, chunk)
    elif mode == "server-open":
        drive(server_core(True), body, chunk)
    elif mode == "client-welcome":
        core, pending = client_core(False)
        drive(core, body, chunk, pending, CLIENT_INTERFACE)
    elif mode == "client-open":
        core, pending = client_core(True)
        drive(core, body, chunk, pending, CLIENT_INTERFACE)
    elif mode == "codec":
        check_codec(body)
    else:
        check_frames(body, chunk)


def fuzz_input(mode: str, stream: bytes, chunk: int = 0) -> bytes:
    """The fuzz input that replays ``stream`` in ``mode`` (for seeds and the corpus)."""
    return bytes([MODES.index(mode), chunk]) + stream
