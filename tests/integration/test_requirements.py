"""Peer identity and peer requirements (issue 6 items 1 and 2; API.md section 9;
research/reliability.md 1.4, 2.1, 2.2 and test plan F4-F8).

Real sockets, in-process listeners and real child processes. A uid that is not
ours (12345) stands for a peer that fails its requirement. Every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest

import nsxpc
import tests.integration.test_service_connections as sc_tests
import tests.integration.test_services as services_tests
from nsxpc import _connection, _transport
from protocols.kitchen import kitchen_interface
from tests.integration.conftest import (
    TIMEOUT,
    Child,
    Connections,
    RawClient,
    Recorder,
    ServerSide,
    frame,
    pack,
    sync_proxy,
)

R = nsxpc.PeerRequirement
OTHER = 12345  # a uid and gid this test process does not have
EXE = os.path.realpath(sys.executable)  # what /proc/<pid>/exe says for a Python process
PEER_REQUIREMENT_FAILURE = 4102

# The service fixtures of test_services.py and test_service_connections.py, shared.
bundles = services_tests.bundles
launched = services_tests.launched
services = sc_tests.services


def client(connections: Connections, endpoint: nsxpc.ListenerEndpoint, req: nsxpc.PeerRequirement | None) -> Any:
    conn = connections.make(listener_endpoint=endpoint)
    conn.remote_object_interface = kitchen_interface()
    if req is not None:
        conn.set_peer_requirement(req)
    return conn


def outcome_of_one_call(conn: nsxpc.Connection) -> tuple[Recorder, Any]:
    """Queue a call, resume, and wait for the call's end and (if any) the invalidation."""
    events = Recorder()
    conn.invalidation_handler = events.event("invalidated")
    conn.remote_object_proxy_with_error_handler(events.error("add")).add(1, 2, events.reply("add"))
    conn.resume()
    items = events.wait_for(lambda items: any(i[0] in ("reply", "error") for i in items))
    return events, items[0]


# --------------------------------------------------------------------------- the value


def test_requirement_values_compose_and_read_well() -> None:
    a, b = R(uid=1000), R(executable="/usr/bin/env")
    both, either = a & b, a | R(gid=7)
    assert repr(a) == "PeerRequirement(uid=1000)"
    env = os.path.realpath("/usr/bin/env")
    assert repr(both) == f"(PeerRequirement(uid=1000) & PeerRequirement(executable={env!r}))"
    assert repr(either) == "(PeerRequirement(uid=1000) | PeerRequirement(gid=7))"
    assert repr((a & b) & R(gid=3)).count("&") == 2, "a chain of & stays flat"
    assert R.same_user() == R(uid=os.geteuid())
    assert hash(a) == hash(R(uid=1000))
    with pytest.raises(AttributeError):
        a.uid = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="at least one"):
        R()
    with pytest.raises(ValueError, match="absolute"):
        R(executable="python3")
    with pytest.raises(TypeError):
        R(uid="1000")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        R(uid=-1)


def test_credentials_are_matched_field_by_field() -> None:
    me = nsxpc.PeerCredentials(pid=10, uid=1000, gid=100, executable=EXE)
    gone = nsxpc.PeerCredentials(pid=10, uid=1000, gid=100, executable=None)
    assert R(uid=1000).is_satisfied_by(me) and not R(uid=1001).is_satisfied_by(me)
    assert R(uid=1000, gid=100).is_satisfied_by(me) and not R(uid=1000, gid=101).is_satisfied_by(me)
    assert (R(uid=1000) & R(executable=EXE)).is_satisfied_by(me)
    assert not (R(uid=1000) & R(executable=EXE)).is_satisfied_by(gone), "an unknown executable matches nothing"
    assert (R(uid=1) | R(gid=100)).is_satisfied_by(me) and not (R(uid=1) | R(gid=1)).is_satisfied_by(me)


# --------------------------------------------------------------------------- configuration errors


def test_an_executable_only_requirement_is_refused_when_configured(
    serve: Callable[..., ServerSide], connections: Connections
) -> None:
    side = serve()
    conn = client(connections, side.listener.endpoint, None)
    for unsound in (R(executable=EXE), R(executable=EXE) | R.same_user(), R(executable=EXE) & R(executable="/bin/sh")):
        with pytest.raises(ValueError, match="exec"):
            conn.set_peer_requirement(unsound)
    listener = nsxpc.Listener.anonymous()
    try:
        with pytest.raises(ValueError, match="exec"):
            listener.set_connection_peer_requirement(R(executable=EXE))
        with pytest.raises(TypeError):
            listener.set_connection_peer_requirement("uid=0")  # type: ignore[arg-type]
    finally:
        listener.invalidate()
    conn.set_peer_requirement(R(executable=EXE) & R.same_user())  # sound: the uid decides, the exe narrows
    conn.resume()
    assert sync_proxy(conn).add(1, 2) == 3


def test_setting_a_requirement_twice_or_after_resume_raises(
    serve: Callable[..., ServerSide], connections: Connections
) -> None:
    side = serve()
    conn = client(connections, side.listener.endpoint, R.same_user())
    with pytest.raises(RuntimeError, match="already"):
        conn.set_peer_requirement(R.same_user())
    late = client(connections, side.listener.endpoint, None)
    late.resume()
    with pytest.raises(RuntimeError, match="before resume"):
        late.set_peer_requirement(R.same_user())
    listener = nsxpc.Listener.anonymous()
    try:
        listener.set_connection_peer_requirement(R.same_user())
        with pytest.raises(RuntimeError, match="already"):
            listener.set_connection_peer_requirement(R.same_user())
    finally:
        listener.invalidate()
    with pytest.raises(RuntimeError, match="before resume"):
        side.listener.set_connection_peer_requirement(R.same_user())


# --------------------------------------------------------------------------- the client's requirement


@pytest.mark.parametrize(
    "req",
    [
        R(uid=os.geteuid()),
        R(gid=os.getegid()),
        R.same_user(),
        R(executable=EXE) & R.same_user(),
        R(uid=OTHER) | R.same_user(),
        R(uid=os.geteuid(), gid=os.getegid()),
    ],
    ids=["uid", "gid", "same_user", "exe-and-uid", "or", "uid-gid"],
)
def test_a_satisfied_requirement_lets_calls_through(
    req: nsxpc.PeerRequirement, serve: Callable[..., ServerSide], connections: Connections
) -> None:
    side = serve()
    conn = client(connections, side.listener.endpoint, req)
    _, first = outcome_of_one_call(conn)
    assert first == ("reply", "add", (3,))
    assert conn.peer_credentials == nsxpc.PeerCredentials(os.getpid(), os.geteuid(), os.getegid(), EXE)


@pytest.mark.parametrize(
    "req",
    [R(uid=OTHER), R(gid=OTHER), R(executable="/bin/true") & R.same_user(), R(uid=OTHER) | R(gid=OTHER)],
    ids=["uid", "gid", "exe-and-uid", "or"],
)
def test_an_unsatisfied_requirement_fails_calls_and_invalidates_before_anything_is_sent(
    req: nsxpc.PeerRequirement, serve: Callable[..., ServerSide], connections: Connections
) -> None:
    side = serve()
    conn = client(connections, side.listener.endpoint, req)
    conn.remote_object_proxy_with_error_handler(lambda e: None).add(5, 5, lambda s: None)  # a second queued call
    events, first = outcome_of_one_call(conn)
    assert first[:2] == ("error", "add")
    err = first[2]
    assert type(err) is nsxpc.PeerRequirementFailure and err.code == PEER_REQUIREMENT_FAILURE
    assert repr(req) in err.message and f"pid {os.getpid()}" in err.message, err.message
    events.wait_for(lambda items: ("invalidated",) in items)
    assert conn.state is nsxpc.ConnectionState.INVALID
    # Not even the handshake reached the listener: its delegate was never asked.
    fresh = client(connections, side.listener.endpoint, None)
    fresh.resume()
    assert sync_proxy(fresh).add(1, 1) == 2
    assert [i for i in side.events.snapshot() if i[0] == "offered"] == [("offered", side.accepted[0])]


def test_a_call_after_the_failure_gets_connection_invalid_naming_the_requirement(
    serve: Callable[..., ServerSide], connections: Connections
) -> None:
    side = serve()
    conn = client(connections, side.listener.endpoint, R(uid=OTHER))
    conn.resume()  # connects, and fails the requirement, here
    with pytest.raises(nsxpc.ConnectionInvalid, match="does not satisfy the peer requirement"):
        conn.synchronous_remote_object_proxy_with_error_handler(lambda e: None, timeout=TIMEOUT).add(1, 2)


def test_a_named_service_child_is_identified_and_checked(lab_server: Child, connections: Connections) -> None:
    conn = connections.lab(lab_server.name, resume=False)
    conn.set_peer_requirement(R.same_user() & R(executable=EXE))
    conn.resume()
    assert sync_proxy(conn).calls_received() >= 0
    creds = conn.peer_credentials
    assert creds is not None and creds.pid == lab_server.pid and creds.executable == EXE
    assert conn.peer_credentials is creds, "captured once, at connect"


# --------------------------------------------------------------------------- the listener's requirements


def _hello_and_pipelined_calls(endpoint: nsxpc.ListenerEndpoint, n: int = 50) -> RawClient:
    """A raw client that sends its handshake and ``n`` calls in one write, before any answer."""
    raw = RawClient(endpoint.path)
    hello = frame(pack([0, "nsxpc", 1, "nsxpc", endpoint.token, {}]))
    calls = b"".join(frame(pack([3, 0, 1, "feed_me_a_cookie", [[]]])) for _ in range(n // 2))
    calls += b"".join(frame(pack([3, seq, 1, "add", [seq, 1]])) for seq in range(1, n // 2 + 1))
    try:
        raw.send(hello + calls)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused at accept, it may be closed before all of this is written
    return raw


class _Counting:
    """An exported kitchen that records every call that reaches it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def feed_me_a_cookie(self, cookie: Any) -> None:
        self.calls.append("cookie")

    def add(self, a: int, b: int, reply: Any) -> None:
        self.calls.append("add")
        reply(a + b)


def test_a_listener_requirement_refuses_a_pipelining_peer_before_anything_is_read(
    connections: Connections,
) -> None:
    listener = nsxpc.Listener.anonymous()
    side = ServerSide(listener, exported=_Counting())
    listener.delegate = side
    listener.set_connection_peer_requirement(R(uid=OTHER))
    listener.resume()
    try:
        raw = _hello_and_pipelined_calls(listener.endpoint)
        try:
            msg = raw.recv_msg()
            assert msg is not None and msg[:2] == [2, PEER_REQUIREMENT_FAILURE], msg
            assert repr(R(uid=OTHER)) in msg[2]
            raw.expect_closed()
        finally:
            raw.close()
        # An nsxpc client is refused too, and sees ConnectionInvalid naming the requirement.
        conn = client(connections, listener.endpoint, None)
        _, first = outcome_of_one_call(conn)
        assert first[:2] == ("error", "add") and type(first[2]) is nsxpc.ConnectionInvalid, first
        assert "peer requirement" in first[2].message
        assert side.events.snapshot() == [], "the delegate never saw a refused peer"
        assert side.exported.calls == []
    finally:
        side.close()


def test_a_requirement_the_delegate_sets_is_checked_before_any_pipelined_call(
    connections: Connections,
) -> None:
    kitchen = _Counting()
    outcome = Recorder()

    class Delegate:
        def should_accept_new_connection(self, listener: nsxpc.Listener, conn: nsxpc.Connection) -> bool:
            conn.exported_interface = kitchen_interface()
            conn.exported_object = kitchen
            conn.remote_object_interface = kitchen_interface()
            conn.invalidation_handler = outcome.event("invalidated")
            conn.set_peer_requirement(R(uid=OTHER))
            # A call this side makes while accepting: it ends with the requirement failure.
            conn.remote_object_proxy_with_error_handler(outcome.error("mine")).add(1, 2, outcome.reply("mine"))
            conn.resume()
            return True

    listener = nsxpc.Listener.anonymous()
    listener.delegate = Delegate()
    listener.resume()
    try:
        raw = _hello_and_pipelined_calls(listener.endpoint)
        try:
            msg = raw.recv_msg()
            assert msg is not None and msg[:2] == [2, PEER_REQUIREMENT_FAILURE], msg
            raw.expect_closed()
        finally:
            raw.close()
        items = outcome.wait_for(lambda items: ("invalidated",) in items)
        assert items[0][:2] == ("error", "mine") and type(items[0][2]) is nsxpc.PeerRequirementFailure, items
        assert kitchen.calls == [], "no pipelined call was dispatched"
    finally:
        listener.invalidate()


def test_a_satisfied_listener_requirement_serves(connections: Connections) -> None:
    listener = nsxpc.Listener.anonymous()
    side = ServerSide(listener)
    listener.delegate = side
    listener.set_connection_peer_requirement(R.same_user() & R(executable=EXE))
    listener.resume()
    try:
        conn = client(connections, listener.endpoint, None)
        conn.resume()
        assert sync_proxy(conn).add(2, 2) == 4
        accepted = side.accepted[0]
        assert accepted.peer_credentials == nsxpc.PeerCredentials(os.getpid(), os.geteuid(), os.getegid(), EXE)
    finally:
        side.close()


# --------------------------------------------------------------------------- identity


def test_a_peer_gone_before_accept_has_no_executable() -> None:
    """F7: the pidfd shows the peer dead, so its pid is not trusted to name an executable."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = os.path.join(os.environ["NSXPC_RUNTIME_DIR"], "gone.sock")
    server.bind(path)
    server.listen(4)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0
        conn, _ = server.accept()
        with conn:
            creds = _transport.peer_credentials(conn)
        assert (creds.pid, creds.uid, creds.executable) == (pid, os.geteuid(), None)
        assert not (R.same_user() & R(executable=EXE)).is_satisfied_by(creds)
        alive_a, alive_b = socket.socketpair()
        with alive_a, alive_b:
            assert _transport.peer_credentials(alive_a).executable == EXE
    finally:
        server.close()


def test_a_launched_service_is_known_by_its_spawn_not_by_so_peercred(
    services: sc_tests.Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F8: SO_PEERCRED names whoever called listen(); the client uses its spawn's pidfd."""
    name = services.make()

    def no_peercred(sock: socket.socket) -> nsxpc.PeerCredentials:
        raise AssertionError("a launched service must not be identified through SO_PEERCRED")

    monkeypatch.setattr(_connection, "peer_credentials", no_peercred)
    conn = services.connect(name, resume=False)
    conn.set_peer_requirement(R.same_user() & R(executable=EXE))
    conn.resume()
    pid = sync_proxy(conn).pid()
    assert pid == services.launches(name)[0]
    creds = conn.peer_credentials
    assert creds == nsxpc.PeerCredentials(pid, os.geteuid(), os.getegid(), EXE)


def test_a_launched_service_that_fails_the_requirement_gets_no_message(services: sc_tests.Services) -> None:
    name = services.make()
    conn = services.connect(name, resume=False)
    conn.set_peer_requirement(R(uid=OTHER))
    events = Recorder()
    conn.invalidation_handler = events.event("invalidated")
    conn.resume()
    conn.remote_object_proxy_with_error_handler(events.error("pid")).pid(events.reply("pid"))
    items = events.wait_for(lambda items: ("invalidated",) in items)
    assert items[0][:2] == ("error", "pid") and type(items[0][2]) is nsxpc.PeerRequirementFailure, items
