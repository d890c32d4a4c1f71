"""The sans-I/O protocol core: handshake, calls, answers, and the exactly-once contract.

Two ConnectionCore objects talk through in-memory byte queues: no sockets, no threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import nsxpc
from nsxpc import _codec, _messages
from nsxpc._framing import encode_frame
from nsxpc._protocol import (
    BadHello,
    CallReceived,
    CallRejected,
    ConnectionCore,
    HelloReceived,
    PendingCall,
    Refused,
    Resolved,
    Violation,
    Welcomed,
    encode_arguments,
)


@nsxpc.protocol
class Adder(Protocol):
    def add(self, a: int, b: int, reply: Callable[[int], None]) -> None: ...
    def note(self, text: str) -> None: ...


class Impl:
    pass


def make_pair() -> tuple[ConnectionCore, ConnectionCore, nsxpc.Interface]:
    iface = nsxpc.Interface(Adder)
    client = ConnectionCore(client=True)
    server = ConnectionCore(client=False, exports={_messages.ROOT_OBJECT: (Impl(), iface)})
    (hello,) = server.receive(client.hello())
    assert isinstance(hello, HelloReceived)
    assert hello.kind == "nsxpc"
    (welcomed,) = client.receive(server.welcome())
    assert isinstance(welcomed, Welcomed)
    return client, server, iface


def call_frame(client: ConnectionCore, iface: nsxpc.Interface, a: object, b: object, call: PendingCall | None) -> bytes:
    method = iface.method("add")
    assert method is not None
    args, fds = encode_arguments(method.args, [a, b], "add", "argument", 32, None)
    return client.invoke(method, args, len(fds), call, _messages.ROOT_OBJECT)


def test_call_and_reply_round_trip() -> None:
    client, server, iface = make_pair()
    call = PendingCall(iface.method("add"))  # type: ignore[arg-type]
    (received,) = server.receive(call_frame(client, iface, 2, 3, call))
    assert isinstance(received, CallReceived)
    assert (received.seq, received.args) == (call.seq, [2, 3])
    frame, _ = server.reply(received.seq, received.method, [5])
    (resolved,) = client.receive(frame)
    assert isinstance(resolved, Resolved)
    assert resolved.call is call
    assert resolved.values == [5]
    assert len(client.pending) == 0


def test_one_way_call_has_sequence_zero_and_registers_nothing() -> None:
    client, server, iface = make_pair()
    method = iface.method("note")
    assert method is not None
    frame = client.invoke(method, ["hi"], 0, None, _messages.ROOT_OBJECT)
    (received,) = server.receive(frame)
    assert isinstance(received, CallReceived)
    assert received.seq == 0
    assert len(client.pending) == 0


def test_failure_answer_resolves_with_the_error() -> None:
    client, server, iface = make_pair()
    call = PendingCall(iface.method("add"))  # type: ignore[arg-type]
    (received,) = server.receive(call_frame(client, iface, 1, 1, call))
    (resolved,) = client.receive(server.failure(received.seq, nsxpc.RemoteError("ValueError: no")))  # type: ignore[union-attr]
    assert isinstance(resolved, Resolved)
    assert isinstance(resolved.error, nsxpc.RemoteError)
    assert resolved.error.message == "ValueError: no"


def test_a_late_reply_after_the_call_ended_is_discarded() -> None:
    client, server, iface = make_pair()
    call = PendingCall(iface.method("add"))  # type: ignore[arg-type]
    (received,) = server.receive(call_frame(client, iface, 1, 1, call))
    assert client.resolve(call.seq) is call  # the timeout took it
    frame, _ = server.reply(received.seq, received.method, [2])  # type: ignore[union-attr]
    assert client.receive(frame) == []


def test_an_answer_to_a_call_never_made_is_a_violation() -> None:
    client, _server, _ = make_pair()
    frame = encode_frame(_codec.pack([_messages.REPLY, 99, [1]]))
    (event,) = client.receive(frame)
    assert isinstance(event, Violation)
    assert "never made" in event.error.message
    assert client.receive(frame) == []  # closed: nothing more is read


def test_a_reply_failing_its_slot_ends_the_call_with_reply_invalid() -> None:
    client, server, iface = make_pair()
    call = PendingCall(iface.method("add"))  # type: ignore[arg-type]
    server.receive(call_frame(client, iface, 1, 1, call))
    frame = encode_frame(_codec.pack([_messages.REPLY, call.seq, ["not an int"]]))
    (resolved,) = client.receive(frame)
    assert isinstance(resolved, Resolved)
    assert isinstance(resolved.error, nsxpc.ReplyInvalid)
    assert "add" in resolved.error.message


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ([_messages.INVOKE, 1, 1, "subtract", [1, 2]], "not in protocol"),
        ([_messages.INVOKE, 1, 1, "add", [1]], "expected 2 arguments"),
        ([_messages.INVOKE, 1, 1, "add", [1, "two"]], "argument 1"),
        ([_messages.INVOKE, 0, 1, "add", [1, 2]], "reply block"),
        ([_messages.INVOKE, 1, 7, "add", [1, 2]], "no exported object with id 7"),
        ([_messages.INVOKE, 1, 1, "add", [True, 2]], "argument 0"),
    ],
)
def test_a_well_framed_bad_call_is_rejected_alone(message: list[object], fragment: str) -> None:
    _, server, _ = make_pair()
    events = server.receive(encode_frame(_codec.pack(message)))
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, CallRejected)
    # An unknown object id is the peer's protocol error (docs/PROXIES.md); the rest are decoding errors.
    assert isinstance(event.error, nsxpc.ProtocolError if "object with id" in fragment else nsxpc.DecodingError)
    assert fragment in event.error.message
    # The connection stays up: a good call after it is delivered.
    good = server.receive(encode_frame(_codec.pack([_messages.INVOKE, 2, 1, "add", [1, 2]])))
    assert isinstance(good[0], CallReceived)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # reserved msgpack byte
        _codec.pack({"not": "an array"}),
        _codec.pack([42, 1]),  # unknown kind
        _codec.pack([_messages.INVOKE, 1, 1, "add"]),  # wrong arity of the envelope
        _codec.pack([_messages.INVOKE, "1", 1, "add", []]),  # wrong field type
    ],
)
def test_a_malformed_envelope_is_a_violation(body: bytes) -> None:
    _, server, _ = make_pair()
    (event,) = server.receive(encode_frame(body))
    assert isinstance(event, Violation)


def test_a_peer_with_another_version_is_refused_with_the_reason() -> None:
    server = ConnectionCore(client=False)
    hello = encode_frame(_codec.pack([_messages.HELLO, "nsxpc", 99, "nsxpc", b"", {}]))
    (event,) = server.receive(hello)
    assert isinstance(event, BadHello)
    assert "version mismatch" in event.error.message and "99" in event.error.message
    (refused,) = ConnectionCore(client=True).receive(server.refuse(nsxpc.ConnectionInvalid(event.error.message)))
    assert isinstance(refused, Refused)
    assert "version mismatch" in refused.error.message


def test_the_client_reads_a_refusal() -> None:
    client = ConnectionCore(client=True)
    server = ConnectionCore(client=False)
    server.receive(client.hello())
    (event,) = client.receive(server.refuse(nsxpc.ConnectionInvalid("go away")))
    assert isinstance(event, Refused)
    assert event.error.message == "go away"


def test_frames_are_decoded_one_at_a_time_against_the_current_exports() -> None:
    # A listener's delegate sets the exported interface while handling HELLO:
    # a call pipelined in the same read must be decoded after that.
    iface = nsxpc.Interface(Adder)
    client = ConnectionCore(client=True)
    server = ConnectionCore(client=False, exports={})
    data = client.hello() + call_frame(client, iface, 1, 2, PendingCall(iface.method("add")))  # type: ignore[arg-type]
    server.feed(data)
    assert isinstance(server.next_event(), HelloReceived)
    server.exports[_messages.ROOT_OBJECT] = (Impl(), iface)
    assert isinstance(server.next_event(), CallReceived)


class ExactlyOnce(RuleBasedStateMachine):
    """Every call that expects a reply ends exactly once, whatever the peer and the
    runtime do: replies, failures, duplicates, undecodable replies, timeouts, teardown."""

    def __init__(self) -> None:
        super().__init__()
        self.client, self.server, self.iface = make_pair()
        self.calls: list[PendingCall] = []
        self.ended: dict[int, int] = {}  # id(call) -> times ended
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.server_seen: list[int] = []  # seqs the server received
        self.answered: list[int] = []

    def _end(self, call: PendingCall) -> None:
        self.ended[id(call)] = self.ended.get(id(call), 0) + 1

    def _client_events(self, events: list[object]) -> None:
        for event in events:
            assert not isinstance(event, Violation), event
            assert isinstance(event, Resolved)
            self._end(event.call)

    @rule(a=st.integers(-(2**63), 2**63 - 1), b=st.integers(-10, 10))
    def call(self, a: int, b: int) -> None:
        call = PendingCall(self.iface.method("add"))  # type: ignore[arg-type]
        self.calls.append(call)
        self.to_server.append(call_frame(self.client, self.iface, a, b, call))

    @precondition(lambda self: self.to_server)
    @rule(split=st.integers(0, 12))
    def deliver_to_server(self, split: int) -> None:
        data = self.to_server.pop(0)
        events = self.server.receive(data[:split]) + self.server.receive(data[split:])
        (event,) = events
        assert isinstance(event, CallReceived)
        self.server_seen.append(event.seq)

    @precondition(lambda self: self.server_seen)
    @rule(index=st.integers(0, 100), value=st.integers(-5, 5))
    def reply(self, index: int, value: int) -> None:
        seq = self.server_seen[index % len(self.server_seen)]
        self.answered.append(seq)
        method = self.iface.method("add")
        assert method is not None
        self.to_client.append(self.server.reply(seq, method, [value])[0])

    @precondition(lambda self: self.server_seen)
    @rule(index=st.integers(0, 100))
    def fail(self, index: int) -> None:
        seq = self.server_seen[index % len(self.server_seen)]
        self.to_client.append(self.server.failure(seq, nsxpc.RemoteError("KeyError: x")))

    @precondition(lambda self: self.server_seen)
    @rule(index=st.integers(0, 100))
    def undecodable_reply(self, index: int) -> None:
        seq = self.server_seen[index % len(self.server_seen)]
        self.to_client.append(encode_frame(_codec.pack([_messages.REPLY, seq, [[1, 2]]])))

    @precondition(lambda self: self.to_client)
    @rule(chunk=st.integers(1, 3))
    def deliver_to_client(self, chunk: int) -> None:
        data = b"".join(self.to_client[:chunk])
        del self.to_client[:chunk]
        self._client_events(self.client.receive(data))

    @precondition(lambda self: self.calls)
    @rule(index=st.integers(0, 100))
    def timeout(self, index: int) -> None:
        call = self.calls[index % len(self.calls)]
        taken = self.client.resolve(call.seq)
        if taken is not None:
            assert taken is call
            self._end(call)

    @rule()
    def interrupt(self) -> None:
        for call in self.client.resolve_all():
            self._end(call)

    @invariant()
    def nothing_ends_twice(self) -> None:
        assert all(n == 1 for n in self.ended.values()), self.ended

    @invariant()
    def pending_and_ended_partition_the_calls(self) -> None:
        assert len(self.client.pending) + len(self.ended) == len(self.calls)

    def teardown(self) -> None:
        for call in self.client.resolve_all():
            self._end(call)
        assert len(self.ended) == len(self.calls)
        assert all(n == 1 for n in self.ended.values())


ExactlyOnce.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestExactlyOnce = ExactlyOnce.TestCase


def test_a_malformed_extension_payload_rejects_the_message_not_the_connection() -> None:
    _, server, _ = make_pair()
    bad_tuple = _codec.ExtType(_codec.EXT_TUPLE, b"\xc1")
    (event,) = server.receive(encode_frame(_codec.pack([_messages.INVOKE, 1, 1, "add", [bad_tuple, 2]])))
    assert isinstance(event, CallRejected)
    assert isinstance(event.error, nsxpc.DecodingError)
    (good,) = server.receive(encode_frame(_codec.pack([_messages.INVOKE, 2, 1, "add", [1, 2]])))
    assert isinstance(good, CallReceived)


def test_integers_beyond_64_bits_are_refused_when_encoding() -> None:
    client, _, iface = make_pair()
    with pytest.raises(nsxpc.EncodingError, match="64 bits"):
        call_frame(client, iface, 2**64, 1, None)
    assert len(client.pending) == 0


def test_plain_arguments_skip_slot_encoding_and_an_integer_beyond_64_bits_is_still_named() -> None:
    client, server, iface = make_pair()
    method = iface.method("add")
    assert method is not None and method.arg_types == (int, int)
    values = [2, 3]
    args, fds = encode_arguments(method.args, values, "add", "argument", 32, None, None, method.arg_types)
    assert args is values and not fds  # taken as they are
    call = PendingCall(method)
    (received,) = server.receive(client.invoke(method, args, 0, call, _messages.ROOT_OBJECT))
    assert isinstance(received, CallReceived) and received.args == [2, 3]
    big = [2**64, 1]
    args, _ = encode_arguments(method.args, big, "add", "argument", 32, None, None, method.arg_types)
    with pytest.raises(nsxpc.EncodingError, match=r"add argument 0: integer .* does not fit in 64 bits"):
        client.invoke(method, args, 0, PendingCall(method), _messages.ROOT_OBJECT)
    assert len(client.pending) == 1  # the first call only: nothing registered for the one not sent


def test_a_bool_where_an_int_is_annotated_takes_the_checked_path_and_is_refused() -> None:
    _, _, iface = make_pair()
    method = iface.method("add")
    assert method is not None
    with pytest.raises(nsxpc.EncodingError, match="add argument 0"):
        encode_arguments(method.args, [True, 1], "add", "argument", 32, None, None, method.arg_types)


def test_a_message_over_the_frame_cap_is_refused_before_sending() -> None:
    iface = nsxpc.Interface(Adder)
    client = ConnectionCore(client=True, limits=nsxpc.Limits(max_frame_size=64))
    method = iface.method("note")
    assert method is not None
    with pytest.raises(nsxpc.EncodingError, match="frame cap"):
        client.invoke(method, ["x" * 100], 0, PendingCall(method), _messages.ROOT_OBJECT)
    assert len(client.pending) == 0


def test_fds_that_no_value_takes_are_closed() -> None:
    import os

    _, server, _ = make_pair()
    r, w = os.pipe()
    os.close(w)
    frame = encode_frame(_codec.pack([_messages.INVOKE, 1, 1, "nosuch", []]), 1)
    (event,) = server.receive(frame, [r])
    assert isinstance(event, CallRejected)
    with pytest.raises(OSError):
        os.fstat(r)
