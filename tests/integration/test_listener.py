"""nsxpc.Listener: anonymous listeners and endpoints, named services, delegates (API.md section 5)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable

import pytest

import nsxpc
from nsxpc._transport import service_socket_path
from protocols.kitchen import kitchen_interface
from tests.integration.conftest import (
    Child,
    Connections,
    LogWatch,
    RawClient,
    Recorder,
    ServerSide,
    frame,
    kitchen_client,
    pack,
    sync_proxy,
    unique_name,
)

# --------------------------------------------------------------------------- anonymous listeners


def test_anonymous_listener_is_reachable_in_process_through_its_endpoint(
    serve: Callable[..., ServerSide], connections: Connections
):
    side = serve()
    endpoint = side.listener.endpoint
    assert isinstance(endpoint, nsxpc.ListenerEndpoint)
    conn = kitchen_client(connections, listener_endpoint=endpoint)
    assert sync_proxy(conn).add(2, 3) == 5
    [server_conn] = side.accepted
    assert server_conn.process_identifier == os.getpid()
    assert conn.process_identifier == os.getpid()


def test_anonymous_endpoint_handed_to_a_child_process_in_an_environment_variable(
    serve: Callable[..., ServerSide], spawn: Callable[..., Child]
):
    side = serve()
    text = str(side.listener.endpoint)
    assert nsxpc.ListenerEndpoint.from_string(text) == side.listener.endpoint
    child = spawn("endpoint_client.py", "20", "22", env={"NSXPC_TEST_ENDPOINT": text}, ready=False)
    line = child.read_line()
    assert line == f"RESULT {child.pid} 42", child.stderr_text()
    assert child.wait() == 0
    [server_conn] = side.accepted
    assert server_conn.process_identifier == child.pid
    assert server_conn.effective_user_identifier == os.geteuid()


def test_endpoint_passed_as_an_argument_to_a_service_that_connects_back(
    serve: Callable[..., ServerSide], lab_server: Child, connections: Connections
):
    side = serve()
    conn = connections.lab(lab_server.name)
    assert sync_proxy(conn).call_endpoint(side.listener.endpoint, 20, 22) == 42
    assert [c.process_identifier for c in side.accepted] == [lab_server.pid]


def test_endpoint_received_from_a_service_and_peer_death_invalidates_an_endpoint_connection(
    lab_server: Child, connections: Connections
):
    endpoint = sync_proxy(connections.lab(lab_server.name)).make_listener()
    assert type(endpoint) is nsxpc.ListenerEndpoint
    conn = kitchen_client(connections, listener_endpoint=endpoint)
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    conn.invalidation_handler = events.event("invalidated")
    assert sync_proxy(conn).add(1, 2) == 3
    assert conn.process_identifier == lab_server.pid

    lab_server.kill9()
    items = events.wait_for(lambda items: ("invalidated",) in items)
    assert ("interrupted",) not in items, "peer death on an endpoint connection invalidates, it does not interrupt"
    assert conn.state is nsxpc.ConnectionState.INVALID


def test_peer_death_invalidates_the_listeners_side(serve: Callable[..., ServerSide], spawn: Callable[..., Child]):
    side = serve()
    child = spawn(
        "endpoint_client.py", "1", "1", "hold", env={"NSXPC_TEST_ENDPOINT": str(side.listener.endpoint)}, ready=False
    )
    assert child.read_line() == f"RESULT {child.pid} 2"
    [server_conn] = side.accepted
    assert server_conn.state is nsxpc.ConnectionState.ACTIVE
    child.kill9()
    assert side.wait_invalidated() == [server_conn]
    assert server_conn.state is nsxpc.ConnectionState.INVALID


def test_an_endpoint_with_the_wrong_token_is_refused(serve: Callable[..., ServerSide], connections: Connections):
    side = serve()
    real = side.listener.endpoint
    forged = nsxpc.ListenerEndpoint(path=real.path, token=bytes(len(real.token)))
    conn = kitchen_client(connections, listener_endpoint=forged)
    with pytest.raises(nsxpc.ConnectionInvalid):
        sync_proxy(conn).add(1, 2)
    assert side.accepted == []


# --------------------------------------------------------------------------- named services


def test_named_listener_binds_runtime_dir_socket_with_private_modes(
    monkeypatch: pytest.MonkeyPatch, runtime_dir: str, serve: Callable[..., ServerSide], connections: Connections
):
    folder = os.path.join(runtime_dir, "rt")  # does not exist yet: the listener creates it
    monkeypatch.setenv("NSXPC_RUNTIME_DIR", folder)
    name = unique_name("com.example.kitchen")
    old = os.umask(0)  # so the modes are the library's doing, not the umask's
    try:
        serve(mach_service_name=name)
    finally:
        os.umask(old)
    path = os.path.join(folder, f"{name}.sock")
    folder_st = os.lstat(folder)
    sock_st = os.lstat(path)
    assert stat.S_ISDIR(folder_st.st_mode) and stat.S_IMODE(folder_st.st_mode) == 0o700
    assert stat.S_ISSOCK(sock_st.st_mode) and stat.S_IMODE(sock_st.st_mode) == 0o600
    conn = kitchen_client(connections, mach_service_name=name)
    assert sync_proxy(conn).add(4, 4) == 8


def test_runtime_dir_defaults_to_xdg_runtime_dir(
    monkeypatch: pytest.MonkeyPatch, runtime_dir: str, serve: Callable[..., ServerSide], connections: Connections
):
    monkeypatch.delenv("NSXPC_RUNTIME_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime_dir)
    name = unique_name()
    serve(mach_service_name=name)
    assert stat.S_ISSOCK(os.lstat(os.path.join(runtime_dir, "nsxpc", f"{name}.sock")).st_mode)
    assert sync_proxy(kitchen_client(connections, mach_service_name=name)).add(1, 1) == 2


def test_a_stale_socket_left_by_a_killed_process_is_replaced(
    spawn: Callable[..., Child],
    runtime_dir: str,
    service_name: str,
    serve: Callable[..., ServerSide],
    connections: Connections,
):
    dead = spawn("kitchen_server.py", service_name)
    dead.kill9()
    path = os.path.join(runtime_dir, f"{service_name}.sock")
    assert stat.S_ISSOCK(os.lstat(path).st_mode), "kill -9 leaves the socket file behind"

    side = serve(mach_service_name=service_name)
    conn = kitchen_client(connections, mach_service_name=service_name)
    assert sync_proxy(conn).add(1, 2) == 3
    assert conn.process_identifier == os.getpid()
    assert len(side.accepted) == 1


def test_a_name_served_by_a_live_process_makes_resume_raise(
    spawn: Callable[..., Child], service_name: str, connections: Connections
):
    live = spawn("kitchen_server.py", service_name)
    listener = nsxpc.Listener(mach_service_name=service_name)
    try:
        with pytest.raises(nsxpc.XPCError) as info:
            listener.resume()
        assert service_name in str(info.value)
    finally:
        listener.invalidate()
    # The live service was not disturbed.
    conn = kitchen_client(connections, mach_service_name=service_name)
    assert sync_proxy(conn).add(2, 2) == 4
    assert conn.process_identifier == live.pid


def test_no_listener_the_first_time_invalidates_the_connection_naming_the_service(
    service_name: str, connections: Connections, logwatch: LogWatch
):
    conn = connections.make(mach_service_name=service_name)
    conn.remote_object_interface = kitchen_interface()
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    conn.invalidation_handler = events.event("invalidated")
    conn.remote_object_proxy_with_error_handler(events.error("queued")).add(1, 2, events.reply("queued"))
    conn.resume()
    items = events.wait_for(lambda items: ("invalidated",) in items)
    assert items[-1] == ("invalidated",)
    [(kind, _, err)] = [i for i in items if i[0] in ("reply", "error")]
    assert kind == "error" and type(err) is nsxpc.ConnectionInvalid
    assert service_name in str(err)
    assert ("interrupted",) not in items
    assert conn.state is nsxpc.ConnectionState.INVALID
    with pytest.raises(nsxpc.ConnectionInvalid):
        sync_proxy(conn).add(1, 2)


def test_reconnects_on_the_next_message_after_the_service_went_away(
    spawn: Callable[..., Child], service_name: str, connections: Connections
):
    first = spawn("kitchen_server.py", service_name)
    conn = connections.make(mach_service_name=service_name)
    conn.remote_object_interface = kitchen_interface()
    interrupted = threading.Event()
    conn.interruption_handler = interrupted.set
    conn.resume()
    assert sync_proxy(conn).add(1, 2) == 3
    assert conn.process_identifier == first.pid
    first.kill9()
    assert interrupted.wait(5)
    second = spawn("kitchen_server.py", service_name)
    assert sync_proxy(conn).add(3, 4) == 7
    assert conn.process_identifier == second.pid


@pytest.mark.parametrize("mode", ["refuse", "nodelegate"])
def test_a_refused_connection_is_invalidated_and_its_calls_end_with_connection_invalid(
    mode: str, spawn: Callable[..., Child], service_name: str, connections: Connections
):
    spawn("kitchen_server.py", service_name, mode)
    conn = connections.make(mach_service_name=service_name)
    conn.remote_object_interface = kitchen_interface()
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    conn.invalidation_handler = events.event("invalidated")
    conn.remote_object_proxy_with_error_handler(events.error("a")).add(1, 2, events.reply("a"))
    conn.resume()
    conn.remote_object_proxy_with_error_handler(events.error("b")).add(3, 4, events.reply("b"))
    items = events.wait_for(lambda items: ("invalidated",) in items)
    assert items[-1] == ("invalidated",)
    outcomes = [i for i in items if i[0] in ("reply", "error")]
    assert sorted(i[1] for i in outcomes) == ["a", "b"]
    assert all(i[0] == "error" and type(i[2]) is nsxpc.ConnectionInvalid for i in outcomes), outcomes
    assert ("interrupted",) not in items
    assert conn.state is nsxpc.ConnectionState.INVALID


@pytest.mark.parametrize("delegate", [True, False], ids=["delegate-refuses", "no-delegate"])
def test_in_process_listener_refusal(delegate: bool, serve: Callable[..., ServerSide], connections: Connections):
    side = serve(accept=False, delegate=delegate)
    conn = kitchen_client(connections, listener_endpoint=side.listener.endpoint)
    gone = threading.Event()
    conn.invalidation_handler = gone.set
    with pytest.raises(nsxpc.ConnectionInvalid):
        sync_proxy(conn).add(1, 2)
    assert gone.wait(5)
    assert side.accepted == []
    if delegate:
        assert [i[0] for i in side.events.snapshot()] == ["offered"]


def test_listener_keeps_serving_many_clients_and_the_delegate_is_held_strongly(
    connections: Connections,
):
    listener = nsxpc.Listener.anonymous()
    try:
        listener.delegate = ServerSide(listener)  # no other reference: the listener must keep it
        listener.resume()
        conns = [kitchen_client(connections, listener_endpoint=listener.endpoint) for _ in range(5)]
        assert [sync_proxy(c).add(i, i) for i, c in enumerate(conns)] == [0, 2, 4, 6, 8]
    finally:
        side = listener.delegate
        listener.invalidate()
        if side is not None:
            side.close()


def test_environment_is_read_when_a_listener_is_created(monkeypatch: pytest.MonkeyPatch, connections: Connections):
    other = tempfile.mkdtemp(prefix="nx", dir="/tmp")
    try:
        monkeypatch.setenv("NSXPC_RUNTIME_DIR", other)
        name = unique_name()
        listener = nsxpc.Listener(mach_service_name=name)
        try:
            listener.delegate = ServerSide(listener)
            listener.resume()
            assert os.path.exists(os.path.join(other, f"{name}.sock"))
            assert sync_proxy(kitchen_client(connections, mach_service_name=name)).add(1, 0) == 1
        finally:
            listener.invalidate()
            listener.delegate.close()
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_an_invalidated_listener_gives_its_name_back(service_name: str, connections: Connections):
    first = nsxpc.Listener(mach_service_name=service_name)
    first.delegate = ServerSide(first)
    first.resume()
    first.invalidate()
    second = nsxpc.Listener(mach_service_name=service_name)
    try:
        second.delegate = ServerSide(second)
        second.resume()
        assert sync_proxy(kitchen_client(connections, mach_service_name=service_name)).add(2, 2) == 4
    finally:
        second.invalidate()


class _RaisingDelegate:
    def __init__(self) -> None:
        self.calls = 0

    def should_accept_new_connection(self, listener: nsxpc.Listener, conn: nsxpc.Connection) -> bool:
        self.calls += 1
        if self.calls == 1:
            raise ValueError("the delegate fell over")
        return ServerSide(listener).should_accept_new_connection(listener, conn)


def test_a_delegate_that_raises_refuses_that_connection_and_the_listener_keeps_serving(
    connections: Connections, logwatch: LogWatch
):
    listener = nsxpc.Listener.anonymous()
    try:
        listener.delegate = _RaisingDelegate()
        listener.resume()
        refused = kitchen_client(connections, listener_endpoint=listener.endpoint)
        with pytest.raises(nsxpc.ConnectionInvalid):
            sync_proxy(refused).add(1, 2)
        logwatch.wait_for(lambda r: "delegate" in r.getMessage())
        accepted = kitchen_client(connections, listener_endpoint=listener.endpoint)
        assert sync_proxy(accepted).add(1, 2) == 3
    finally:
        listener.invalidate()


def test_the_refusal_reason_reaches_a_synchronous_caller_every_time(
    serve: Callable[..., ServerSide], connections: Connections
):
    # The caller reads its own reply and hands the REFUSE over to the queue; the end of
    # stream right behind it must not overtake it and replace the reason (a race once).
    side = serve(accept=False)
    for _ in range(30):
        conn = kitchen_client(connections, listener_endpoint=side.listener.endpoint)
        with pytest.raises(nsxpc.ConnectionInvalid) as info:
            sync_proxy(conn).add(1, 2)
        assert "refused the connection" in str(info.value), str(info.value)


def test_resume_and_invalidate_racing_on_many_threads_never_break_the_accept_thread():
    # invalidate() closes the socket while the accept thread may be registering it;
    # that once raised EBADF (or registered a reused fd number) in the accept thread.
    errors: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:

        def churn() -> None:
            for _ in range(150):
                listener = nsxpc.Listener.anonymous()
                listener.resume()
                listener.invalidate()

        workers = [threading.Thread(target=churn) for _ in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert not any(w.is_alive() for w in workers)
    finally:
        threading.excepthook = previous
    assert errors == []


# --------------------------------------------------------------------------- calls pipelined behind the HELLO

HELLO = [0, "nsxpc", 1, "nsxpc", b"", {}]


def test_a_call_pipelined_behind_the_hello_is_answered_after_the_welcome(lab_server: Child) -> None:
    # The usual first call of a client is written right behind its HELLO (docs/PROTOCOL.md
    # "Pipelining before WELCOME"); the listener sends its WELCOME with that call's reply
    # (one write: a performance matter, counted in bench/README.md), never after it.
    raw = RawClient(service_socket_path(lab_server.name))
    raw.send(frame(pack(HELLO)) + frame(pack([3, 1, 1, "add", [2, 3]])) + frame(pack([3, 2, 1, "nothing", []])))
    with raw.sock:
        assert [raw.recv_msg() for _ in range(3)] == [[1, "nsxpc", 1, {}], [4, 1, [5]], [4, 2, []]]


def test_what_the_listener_sends_while_answering_a_pipelined_call_follows_the_welcome_in_order(
    lab_server: Child,
) -> None:
    raw = RawClient(service_socket_path(lab_server.name))
    raw.send(frame(pack(HELLO)) + frame(pack([3, 1, 1, "ping_client", [2]])))
    with raw.sock:
        assert raw.recv_msg() == [1, "nsxpc", 1, {}], "the WELCOME comes first"
        assert raw.recv_msg() == [3, 0, 1, "progress", [0]]
        assert raw.recv_msg() == [3, 0, 1, "progress", [1]]
        question = raw.recv_msg()
        assert question[0] == 3 and question[2:] == [1, "question", ["after 2 steps?"]]
        raw.send_msg([4, question[1], ["forty-two"]])
        assert raw.recv_msg() == [4, 1, ["client said forty-two"]], "after the call-backs sent before it"
