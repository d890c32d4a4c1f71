"""nsxpc.xpc, the C-style dictionary API, across real processes (issue 7; API.md section 11).

Servers are tests/helpers/session_server.py children (``cstyle`` or ``session``
mode) or in-process listeners. Every wait is bounded; every connection is
cancelled at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import nsxpc
from nsxpc import xpc
from tests.integration.conftest import TIMEOUT, Child, LogWatch, RawClient, Recorder
from tests.integration.test_session import Made, SlowListener, make_session_bundle, session_service  # noqa: F401

ERRORS = (xpc.ERROR_CONNECTION_INTERRUPTED, xpc.ERROR_CONNECTION_INVALID, xpc.ERROR_TERMINATION_IMMINENT)


@pytest.fixture
def made() -> Iterator[Made]:
    m = Made()
    try:
        yield m
    finally:
        m.close()


def client(made: Made, name: str, events: Recorder | None = None) -> xpc.Connection:
    conn = made(xpc.connection_create_mach_service(name, 0))
    xpc.connection_set_event_handler(conn, (events or Recorder()).add)
    xpc.connection_resume(conn)
    return conn  # type: ignore[no-any-return]


@pytest.fixture
def cserver(spawn: Callable[..., Child], service_name: str) -> Child:
    child = spawn("session_server.py", "cstyle", service_name)
    child.name = service_name  # type: ignore[attr-defined]
    return child


def test_error_values_are_distinct_singletons() -> None:
    assert len({id(e) for e in ERRORS}) == 3
    import copy

    assert copy.copy(xpc.ERROR_CONNECTION_INVALID) is xpc.ERROR_CONNECTION_INVALID
    assert "interrupted" in repr(xpc.ERROR_CONNECTION_INTERRUPTED).lower()


def test_send_with_reply_sync_and_one_way(cserver: Child, made: Made) -> None:
    conn = client(made, cserver.name)  # type: ignore[attr-defined]
    got = Recorder()
    xpc.connection_send_message(conn, {"op": "echo", "one": "way"})
    xpc.connection_send_message_with_reply(conn, {"op": "add", "a": 2, "b": 3}, got.add)
    [reply] = got.wait_len(1)
    assert isinstance(reply, dict) and reply == {"sum": 5}
    sync = xpc.connection_send_message_with_reply_sync(conn, {"op": "echo", "v": [1, "x"]})
    assert sync == {"op": "echo", "v": [1, "x"], "pid": cserver.pid, "sync": False}
    assert xpc.connection_get_pid(conn) == cserver.pid


def test_created_suspended_and_balanced(cserver: Child, made: Made) -> None:
    conn = made(xpc.connection_create_mach_service(cserver.name, 0))  # type: ignore[attr-defined]
    got = Recorder()
    xpc.connection_set_event_handler(conn, lambda e: None)
    xpc.connection_send_message_with_reply(conn, {"op": "add", "a": 1, "b": 1}, got.add)
    xpc.connection_send_barrier(conn, lambda: got.add("barrier"))
    xpc.connection_suspend(conn)  # two suspensions now: the initial one and this one
    xpc.connection_resume(conn)
    # Still suspended: nothing was sent, so nothing came back (a bounded look).
    with pytest.raises(AssertionError):
        got.wait_len(1, timeout=0.3)
    xpc.connection_resume(conn)
    got_items = got.wait_len(2)
    assert {"sum": 2} in got_items and "barrier" in got_items
    with pytest.raises(RuntimeError):
        xpc.connection_resume(conn)  # over-resume


def test_messages_are_copied_when_sent(cserver: Child, made: Made) -> None:
    conn = made(xpc.connection_create_mach_service(cserver.name, 0))  # type: ignore[attr-defined]
    xpc.connection_set_event_handler(conn, lambda e: None)
    got = Recorder()
    msg: dict[str, Any] = {"op": "echo", "items": [1, 2]}
    xpc.connection_send_message_with_reply(conn, msg, got.add)  # queued: the connection is suspended
    msg["op"] = "add"
    msg["items"].append(3)
    xpc.connection_resume(conn)
    [reply] = got.wait_len(1)
    assert reply["op"] == "echo" and reply["items"] == [1, 2]


def test_barrier_runs_after_earlier_messages_are_written(cserver: Child, made: Made) -> None:
    conn = client(made, cserver.name)  # type: ignore[attr-defined]
    order = Recorder()
    for i in range(20):
        xpc.connection_send_message_with_reply(conn, {"op": "echo", "i": i}, lambda r: order.add(r["i"]))
    xpc.connection_send_barrier(conn, lambda: order.add("barrier"))
    got = order.wait_len(21)
    assert "barrier" in got and [x for x in got if x != "barrier"] == list(range(20))


def test_interruption_then_reconnection_for_a_named_service(
    spawn: Callable[..., Child], service_name: str, made: Made
) -> None:
    first = spawn("session_server.py", "cstyle", service_name)
    events = Recorder()
    conn = client(made, service_name, events)
    assert xpc.connection_send_message_with_reply_sync(conn, {"op": "echo"})["pid"] == first.pid  # type: ignore[index]
    pending = Recorder()
    xpc.connection_send_message_with_reply(conn, {"op": "die"}, pending.add)
    assert pending.wait_len(1) == [xpc.ERROR_CONNECTION_INTERRUPTED]
    assert events.wait_len(1) == [xpc.ERROR_CONNECTION_INTERRUPTED]
    assert first.wait() == 3
    second = spawn("session_server.py", "cstyle", service_name)
    reply = xpc.connection_send_message_with_reply_sync(conn, {"op": "echo"})
    assert reply["pid"] == second.pid  # type: ignore[index]
    assert events.snapshot() == [xpc.ERROR_CONNECTION_INTERRUPTED]  # still valid


def test_endpoint_peer_death_is_invalid(spawn: Callable[..., Child], made: Made) -> None:
    child = spawn("session_server.py", "session", "anon", ready=False)
    line = child.read_line()
    assert line.startswith(f"READY {child.pid} "), line
    endpoint = nsxpc.ListenerEndpoint.from_string(line.split()[2])
    events = Recorder()
    conn = made(xpc.connection_create_from_endpoint(endpoint))
    xpc.connection_set_event_handler(conn, events.add)
    xpc.connection_resume(conn)
    assert xpc.connection_send_message_with_reply_sync(conn, {"op": "add", "a": 1, "b": 2}) == {"sum": 3}
    pending = Recorder()
    xpc.connection_send_message_with_reply(conn, {"op": "die"}, pending.add)
    assert pending.wait_len(1) == [xpc.ERROR_CONNECTION_INVALID]
    assert events.wait_len(1) == [xpc.ERROR_CONNECTION_INVALID]
    assert xpc.connection_send_message_with_reply_sync(conn, {"op": "echo"}) is xpc.ERROR_CONNECTION_INVALID


def test_cancel_delivers_invalid_last_and_reply_handlers_once(made: Made) -> None:
    slow = SlowListener(made)
    listener, hold, entered = slow.listener, slow.hold, slow.entered
    events = Recorder()
    conn = made(xpc.connection_create_from_endpoint(listener.endpoint))
    xpc.connection_set_event_handler(conn, lambda e: events.add(("event", e)))
    xpc.connection_resume(conn)
    xpc.connection_send_message_with_reply(conn, {"x": 1}, lambda r: events.add(("reply", r)))
    assert entered.wait(TIMEOUT)
    xpc.connection_cancel(conn)
    xpc.connection_cancel(conn)
    got = events.wait_len(2)
    hold.set()
    assert got == [("reply", xpc.ERROR_CONNECTION_INVALID), ("event", xpc.ERROR_CONNECTION_INVALID)]
    assert xpc.connection_send_message_with_reply_sync(conn, {"x": 1}) is xpc.ERROR_CONNECTION_INVALID
    assert len(events.snapshot()) == 2


def test_dictionary_create_reply_rules(made: Made, service_name: str) -> None:
    seen = Recorder()
    listener = made(xpc.connection_create_mach_service(service_name, xpc.CONNECTION_MACH_SERVICE_LISTENER))

    def on_peer(peer: Any) -> None:
        if not isinstance(peer, xpc.Connection):
            return  # ERROR_CONNECTION_INVALID once the listener is cancelled

        def on_event(event: Any) -> None:
            if not isinstance(event, dict):
                return
            reply = xpc.dictionary_create_reply(event)
            if reply is None:
                seen.add(("no reply wanted", event))
                return
            with pytest.raises(RuntimeError):
                xpc.dictionary_create_reply(event)
            reply["got"] = event["n"]
            xpc.connection_send_message(peer, reply)
            with pytest.raises(RuntimeError):
                xpc.connection_send_message(peer, reply)
            seen.add(("replied", event["n"]))

        xpc.connection_set_event_handler(peer, on_event)
        xpc.connection_resume(peer)

    xpc.connection_set_event_handler(listener, on_peer)
    xpc.connection_resume(listener)
    conn = client(made, service_name)
    xpc.connection_send_message(conn, {"n": 1})
    assert xpc.connection_send_message_with_reply_sync(conn, {"n": 2}) == {"got": 2}
    assert seen.wait_len(2) == [("no reply wanted", {"n": 1}), ("replied", 2)]
    assert xpc.dictionary_create_reply({"plain": "dict"}) is None


def test_listener_can_cancel_a_peer(made: Made, service_name: str) -> None:
    listener = made(xpc.connection_create_mach_service(service_name, xpc.CONNECTION_MACH_SERVICE_LISTENER))
    xpc.connection_set_event_handler(listener, lambda p: isinstance(p, xpc.Connection) and xpc.connection_cancel(p))
    xpc.connection_resume(listener)
    events = Recorder()
    conn = client(made, service_name, events)
    pending = Recorder()
    xpc.connection_send_message_with_reply(conn, {"x": 1}, pending.add)
    assert pending.wait_len(1) == [xpc.ERROR_CONNECTION_INVALID]  # refused: invalid, even for a named service
    assert events.wait_len(1) == [xpc.ERROR_CONNECTION_INVALID]
    assert xpc.connection_send_message_with_reply_sync(conn, {"x": 1}) is xpc.ERROR_CONNECTION_INVALID


def test_cross_talk_c_style_client_and_session_server(
    spawn: Callable[..., Child], service_name: str, made: Made
) -> None:
    child = spawn("session_server.py", "session", service_name)
    conn = client(made, service_name)
    assert xpc.connection_send_message_with_reply_sync(conn, {"op": "echo"}) == {
        "op": "echo",
        "pid": child.pid,
        "sync": True,
    }


def test_cross_talk_session_client_and_c_style_server(cserver: Child, made: Made) -> None:
    session = made(nsxpc.XPCSession(mach_service=cserver.name))  # type: ignore[attr-defined]
    assert session.send_sync({"op": "add", "a": 20, "b": 22}).decode() == {"sum": 42}
    got = Recorder()
    session.send({"op": "echo", "k": "v"}, reply_handler=got.add)
    [reply] = got.wait_len(1)
    assert reply.decode()["k"] == "v"


def test_kind_mismatch_c_style_to_nsxpc_listener(made: Made) -> None:
    class Delegate:
        def should_accept_new_connection(self, listener: Any, connection: Any) -> bool:
            raise AssertionError("never reached")

    nl = made(nsxpc.Listener.anonymous())
    nl.delegate = Delegate()
    nl.resume()
    events = Recorder()
    conn = made(xpc.connection_create_from_endpoint(nl.endpoint))
    xpc.connection_set_event_handler(conn, events.add)
    xpc.connection_resume(conn)
    pending = Recorder()
    xpc.connection_send_message_with_reply(conn, {"x": 1}, pending.add)
    assert pending.wait_len(1) == [xpc.ERROR_CONNECTION_INVALID]
    assert events.wait_len(1) == [xpc.ERROR_CONNECTION_INVALID]
    assert "kind mismatch" in conn._conn._invalid_reason  # type: ignore[union-attr]
    assert xpc.connection_send_message_with_reply_sync(conn, {"x": 1}) is xpc.ERROR_CONNECTION_INVALID


def test_bad_input_locally(cserver: Child, made: Made) -> None:
    conn = client(made, cserver.name)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        xpc.connection_send_message(conn, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(nsxpc.EncodingError):
        xpc.connection_send_message(conn, {"x": object()})
    with pytest.raises(nsxpc.EncodingError):
        xpc.connection_send_message_with_reply_sync(conn, {"x": 2**65})
    with pytest.raises(TypeError):
        xpc.connection_send_message_with_reply(conn, {"x": 1}, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        xpc.connection_resume(object())  # type: ignore[arg-type]
    assert xpc.connection_send_message_with_reply_sync(conn, {"op": "add", "a": 1, "b": 1}) == {"sum": 2}


def test_a_malformed_message_is_dropped_and_the_connection_stays_up(
    made: Made, service_name: str, logwatch: LogWatch
) -> None:
    listener = made(xpc.connection_create_mach_service(service_name, xpc.CONNECTION_MACH_SERVICE_LISTENER))
    peers = Recorder()

    def on_peer(peer: Any) -> None:
        if not isinstance(peer, xpc.Connection):
            return  # ERROR_CONNECTION_INVALID once the listener is cancelled

        def on_event(event: Any) -> None:
            if isinstance(event, dict):
                reply = xpc.dictionary_create_reply(event)
                if reply is not None:
                    reply["ok"] = True
                    xpc.connection_send_message(peer, reply)
            else:
                peers.add(event)

        xpc.connection_set_event_handler(peer, on_event)
        xpc.connection_resume(peer)

    xpc.connection_set_event_handler(listener, on_peer)
    xpc.connection_resume(listener)
    from nsxpc._transport import service_socket_path

    raw = RawClient(service_socket_path(service_name))
    try:
        raw.send_msg([0, "nsxpc", 1, "xpc", b"", {}])
        assert raw.recv_msg()[0] == 1
        raw.invoke(1, "message_with_reply", [7])  # not a dictionary
        answer = raw.recv_msg()
        assert answer[0] == 5 and answer[2] == 4864, answer
        logwatch.wait_for(lambda r: "dropped a message" in r.getMessage())
        raw.invoke(2, "message_with_reply", [{"fine": 1}])
        answer = raw.recv_msg()  # the same connection still works
        assert answer[:2] == [4, 2] and answer[2][0] == {"ok": True}, answer
    finally:
        raw.close()
    assert peers.wait_len(1) == [xpc.ERROR_CONNECTION_INVALID]  # the peer went away: invalid


def test_c_style_service_launched_on_demand_is_relaunched(session_service: str, made: Made) -> None:  # noqa: F811
    events = Recorder()
    conn = made(xpc.connection_create(session_service))
    xpc.connection_set_event_handler(conn, events.add)
    xpc.connection_resume(conn)
    first = xpc.connection_send_message_with_reply_sync(conn, {"op": "hi"})
    assert isinstance(first, dict) and first["echo"] == {"op": "hi"}
    assert xpc.connection_send_message_with_reply_sync(conn, {"op": "die"}) is xpc.ERROR_CONNECTION_INTERRUPTED
    assert events.wait_len(1) == [xpc.ERROR_CONNECTION_INTERRUPTED]
    second = xpc.connection_send_message_with_reply_sync(conn, {"op": "hi"})
    assert isinstance(second, dict) and second["pid"] != first["pid"]
