"""Bad input from a hand-driven peer on a real socket (API.md section 4).

A well-framed message that is wrong (unknown selector, wrong arity, a class outside
the slot's allowlist, a value failing its annotation) is dropped: the caller gets a
FAILURE with DecodingError (4864) for that sequence number and the connection stays
up. Corrupt framing or msgpack, or a protocol violation, closes that connection.
Either way a line goes to the ``nsxpc`` logger, and the listener keeps serving
every other client.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

import nsxpc
from tests.integration.conftest import (
    HEADER,
    Connections,
    RawClient,
    ServerSide,
    ext_object,
    frame,
    kitchen_client,
    nested_lists,
    pack,
    sync_proxy,
)

DECODING_ERROR = 4864


@pytest.fixture
def side(serve: Callable[..., ServerSide], caplog: pytest.LogCaptureFixture) -> ServerSide:
    caplog.set_level(logging.DEBUG, logger="nsxpc")
    return serve()


@pytest.fixture
def bystander(side: ServerSide, connections: Connections) -> nsxpc.Connection:
    """A well-behaved client connected before the bad one."""
    conn = kitchen_client(connections, listener_endpoint=side.listener.endpoint)
    assert sync_proxy(conn).add(1, 1) == 2
    return conn


def _others_still_served(side: ServerSide, bystander: nsxpc.Connection, connections: Connections) -> None:
    assert sync_proxy(bystander).add(2, 3) == 5, "a client connected before is untouched"
    fresh = kitchen_client(connections, listener_endpoint=side.listener.endpoint)
    assert sync_proxy(fresh).add(3, 4) == 7, "the listener keeps accepting"


def _nsxpc_lines(caplog: pytest.LogCaptureFixture, min_level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nsxpc" and r.levelno >= min_level]


# --------------------------------------------------------------------------- dropped, connection stays up

WELL_FRAMED_BAD = {
    "unknown-selector": ("feed_me_a_pizza", [1]),
    "wrong-arity-short": ("add", [1]),
    "wrong-arity-long": ("add", [1, 2, 3]),
    "class-outside-allowlist": ("feed_me_a_watermelon", [ext_object("kitchen.Potato", {"variety": "russet"})]),
    "class-outside-allowlist-in-list": ("feed_me_fries", [[ext_object("kitchen.Potato", {"variety": "russet"})]]),
    "class-in-another-slot": ("feed_me_a_watermelon", [ext_object("kitchen.Cookie", {"flavor": "x", "chips": 1})]),
    "importable-class-name": ("feed_me_a_watermelon", [ext_object("this.s", {})]),
    "str-where-int-annotated": ("add", ["two", 2]),
    "float-where-int-annotated": ("add", [1.5, 2]),
    "field-failing-annotation": ("feed_me_a_watermelon", [ext_object("kitchen.Watermelon", {"weight": "heavy"})]),
    "unknown-extension": ("feed_me_fries", [[msgpack.ExtType(99, b"\x00")]]),
    "timestamp-extension": ("feed_me_fries", [[msgpack.Timestamp(0)]]),
    "unknown-target-object": ("add", [1, 2]),
    "nested-too-deep": ("feed_me_fries", [nested_lists(nsxpc.Limits().max_depth + 8)]),
    "malformed-coded-object": ("feed_me_a_watermelon", [msgpack.ExtType(7, pack(["kitchen.Watermelon"]))]),
}


@pytest.mark.parametrize("case", list(WELL_FRAMED_BAD))
def test_a_well_framed_bad_message_gets_a_decoding_error_and_the_connection_stays_up(
    case: str,
    side: ServerSide,
    bystander: nsxpc.Connection,
    raw_clients: Callable[..., RawClient],
    connections: Connections,
    caplog: pytest.LogCaptureFixture,
):
    selector, args = WELL_FRAMED_BAD[case]
    raw = raw_clients(side.listener.endpoint)
    before = len(side.kitchen.cookies)
    imported_before = "this" in sys.modules
    caplog.clear()

    raw.invoke(7, selector, args, target=42 if case == "unknown-target-object" else 1)
    msg = raw.recv_msg()
    assert msg is not None, "the listener closed the connection instead of dropping the message"
    # An object id the listener does not hold is the peer's protocol error (docs/PROXIES.md).
    code = int(nsxpc.ErrorCode.PROTOCOL_ERROR) if case == "unknown-target-object" else DECODING_ERROR
    assert msg[:3] == [5, 7, code], msg
    assert isinstance(msg[3], str) and msg[3]
    lines = _nsxpc_lines(caplog, logging.WARNING)
    assert lines, "a log line on the nsxpc logger"

    # The same connection still works.
    raw.invoke(8, "add", [2, 3])
    assert raw.recv_msg() == [4, 8, [5]]
    assert len(side.kitchen.cookies) == before
    assert ("this" in sys.modules) == imported_before, "a class name off the wire never imports a module"
    _others_still_served(side, bystander, connections)
    assert [c.state for c in side.accepted][1] is nsxpc.ConnectionState.ACTIVE


def test_a_one_way_bad_message_is_dropped_silently_for_the_peer_but_logged(
    side: ServerSide,
    bystander: nsxpc.Connection,
    raw_clients: Callable[..., RawClient],
    connections: Connections,
    caplog: pytest.LogCaptureFixture,
):
    raw = raw_clients(side.listener.endpoint)
    caplog.clear()
    raw.invoke(0, "feed_me_a_cookie", [ext_object("kitchen.Potato", {"variety": "russet"})])
    raw.invoke(0, "feed_me_a_cookie", [ext_object("kitchen.Cookie", {"flavor": "oat", "chips": 3})])
    raw.invoke(9, "add", [1, 2])
    assert raw.recv_msg() == [4, 9, [3]], "no FAILURE for a one-way message; the connection stays up"
    assert [(c.flavor, c.chips) for c in side.kitchen.cookies] == [("oat", 3)]
    assert _nsxpc_lines(caplog, logging.WARNING)
    _others_still_served(side, bystander, connections)


def test_a_one_way_message_sent_as_a_call_and_a_call_sent_one_way_are_rejected(
    side: ServerSide, raw_clients: Callable[..., RawClient], caplog: pytest.LogCaptureFixture
):
    raw = raw_clients(side.listener.endpoint)
    caplog.clear()
    raw.invoke(3, "feed_me_a_cookie", [ext_object("kitchen.Cookie", {"flavor": "oat", "chips": 3})])
    msg = raw.recv_msg()
    assert msg[:3] == [5, 3, DECODING_ERROR]
    raw.invoke(0, "add", [1, 2])  # wants a reply but sent one-way: dropped
    raw.invoke(4, "add", [1, 2])
    assert raw.recv_msg() == [4, 4, [3]]
    assert side.kitchen.cookies == []
    assert len(_nsxpc_lines(caplog, logging.WARNING)) >= 2


# --------------------------------------------------------------------------- the connection is closed

CORRUPT = {
    "garbage-bytes": b"\xde\xad\xbe\xef" * 16,
    "frame-over-the-cap": HEADER.pack(nsxpc.Limits().max_frame_size + 1, 0, 0) + b"\x91\x00" * 64,
    "unknown-header-flags": frame(pack([3, 1, 1, "add", [1, 2]]), flags=1),
    "too-many-fds-announced": frame(pack([3, 1, 1, "add", [1, 2]]), nfds=500),
    "fds-announced-but-missing": frame(pack([3, 1, 1, "add", [1, 2]]), nfds=1),
    "reserved-msgpack-byte": frame(b"\xc1"),
    "truncated-msgpack": frame(b"\x95\x03\x01"),
    "trailing-bytes-in-body": frame(pack([3, 1, 1, "add", [1, 2]]) + b"\x00"),
    "body-not-an-array": frame(pack({"kind": 3})),
    "unknown-message-kind": frame(pack([42, 1, 2])),
    "malformed-invoke-envelope": frame(pack([3, "one", 1, "add", [1, 2]])),
    "invoke-negative-seq": frame(pack([3, -1, 1, "add", [1, 2]])),
    "reply-to-a-call-never-made": frame(pack([4, 99, [1]])),
    "failure-to-a-call-never-made": frame(pack([5, 99, 4097, "no"])),
    "second-hello": frame(pack([0, "nsxpc", 1, "nsxpc", b"", {}])),
    "node-bomb": frame(b"\xdd\x00\x10\x00\x00" + b"\x90" * 0x100000),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_input_closes_that_connection_only(
    case: str,
    side: ServerSide,
    bystander: nsxpc.Connection,
    raw_clients: Callable[..., RawClient],
    connections: Connections,
    caplog: pytest.LogCaptureFixture,
):
    raw = raw_clients(side.listener.endpoint)
    caplog.clear()
    raw.send(CORRUPT[case])
    raw.expect_closed()
    [bad] = side.wait_invalidated()
    assert bad is side.accepted[1]
    assert _nsxpc_lines(caplog, logging.WARNING), "a log line on the nsxpc logger"
    _others_still_served(side, bystander, connections)


def test_garbage_instead_of_a_handshake_closes_the_connection(
    side: ServerSide,
    bystander: nsxpc.Connection,
    raw_clients: Callable[..., RawClient],
    connections: Connections,
    caplog: pytest.LogCaptureFixture,
):
    raw = raw_clients(side.listener.endpoint, handshake=False)
    caplog.clear()
    raw.send(b"GET / HTTP/1.1\r\nHost: kitchen\r\n\r\n")
    raw.expect_closed()
    assert _nsxpc_lines(caplog, logging.INFO)
    assert side.accepted[1:] == [], "the delegate never saw it"
    _others_still_served(side, bystander, connections)


def test_a_call_before_the_handshake_closes_the_connection(
    side: ServerSide, raw_clients: Callable[..., RawClient], bystander: nsxpc.Connection, connections: Connections
):
    raw = raw_clients(side.listener.endpoint, handshake=False)
    raw.invoke(1, "add", [1, 2])
    raw.expect_closed()
    assert side.kitchen.cookies == []
    _others_still_served(side, bystander, connections)


def test_a_truncated_frame_then_close_is_logged_and_ends_that_connection_only(
    side: ServerSide,
    bystander: nsxpc.Connection,
    raw_clients: Callable[..., RawClient],
    connections: Connections,
    caplog: pytest.LogCaptureFixture,
):
    raw = raw_clients(side.listener.endpoint)
    caplog.clear()
    body = pack([3, 5, 1, "add", [1, 2]])
    raw.send(frame(body)[: 8 + len(body) // 2])
    raw.close()
    [bad] = side.wait_invalidated()
    assert bad is side.accepted[1]
    assert _nsxpc_lines(caplog, logging.INFO), "a log line on the nsxpc logger about the truncated frame"
    _others_still_served(side, bystander, connections)


def test_a_truncated_header_then_close_ends_that_connection_only(
    side: ServerSide, bystander: nsxpc.Connection, raw_clients: Callable[..., RawClient], connections: Connections
):
    raw = raw_clients(side.listener.endpoint)
    raw.send(b"\x00\x00\x00")
    raw.close()
    side.wait_invalidated()
    _others_still_served(side, bystander, connections)


# --------------------------------------------------------------------------- the handshake


def test_a_peer_speaking_another_protocol_version_is_refused_with_a_clear_reason(
    side: ServerSide,
    bystander: nsxpc.Connection,
    raw_clients: Callable[..., RawClient],
    connections: Connections,
    caplog: pytest.LogCaptureFixture,
):
    raw = raw_clients(side.listener.endpoint, handshake=False)
    caplog.clear()
    raw.send_msg([0, "nsxpc", 2, "nsxpc", side.listener.endpoint.token, {}])
    msg: Any = raw.recv_msg()
    assert msg is not None, "the listener closed without a REFUSE frame"
    assert msg[0] == 2, f"expected REFUSE, got {msg!r}"
    _, code, reason = msg
    assert isinstance(code, int) and isinstance(reason, str)
    assert "version" in reason and "2" in reason and "1" in reason, reason
    raw.expect_closed()
    assert _nsxpc_lines(caplog, logging.INFO)
    _others_still_served(side, bystander, connections)


def test_a_hello_with_the_wrong_token_is_refused(
    side: ServerSide, bystander: nsxpc.Connection, raw_clients: Callable[..., RawClient], connections: Connections
):
    raw = raw_clients(side.listener.endpoint, handshake=False)
    raw.send_msg([0, "nsxpc", 1, "nsxpc", b"not the token", {}])
    msg = raw.recv_msg()
    assert msg is not None and msg[0] == 2 and msg[1] == 4099, msg
    raw.expect_closed()
    assert side.accepted[1:] == []
    _others_still_served(side, bystander, connections)


def test_a_peer_that_never_completes_the_handshake_is_closed(
    serve: Callable[..., ServerSide],
    raw_clients: Callable[..., RawClient],
    connections: Connections,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG, logger="nsxpc")
    side = serve(limits=nsxpc.Limits(handshake_timeout=0.3))
    raw = raw_clients(side.listener.endpoint, handshake=False)
    raw.send(b"\x00\x00")  # half a header, then silence
    raw.expect_closed()
    assert _nsxpc_lines(caplog, logging.INFO)
    fresh = kitchen_client(connections, listener_endpoint=side.listener.endpoint)
    assert sync_proxy(fresh).add(1, 2) == 3
