"""nsxpc.Connection against a real service process (API.md section 4)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

import nsxpc
from tests.integration.conftest import (
    TIMEOUT,
    Child,
    Connections,
    LogWatch,
    Recorder,
    ServerSide,
    kitchen_client,
    sync_proxy,
)


def _other_view(connections: Connections, name: str) -> list[int]:
    """What the service recorded, asked over a second, independent connection."""
    return sync_proxy(connections.lab(name)).recorded()


# --------------------------------------------------------------------------- life cycle


def test_starts_suspended_and_sends_queued_calls_in_order_on_resume(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name, resume=False)
    assert conn.state is nsxpc.ConnectionState.INACTIVE
    done = Recorder()
    proxy = conn.remote_object_proxy_with_error_handler(done.error("add"))
    for i in range(5):
        conn.remote_object_proxy.record(i)
    proxy.add(40, 2, done.reply("add"))
    for i in range(5, 8):
        conn.remote_object_proxy.record(i)

    # Nothing left this process while the connection is inactive.
    assert _other_view(connections, lab_server.name) == []
    assert done.snapshot() == []

    conn.resume()
    assert conn.state is nsxpc.ConnectionState.ACTIVE
    assert done.wait_len(1) == [("reply", "add", (42,))]
    assert sync_proxy(conn).recorded() == list(range(8))


def test_suspend_and_resume_nest_and_an_unbalanced_resume_raises(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    with pytest.raises(RuntimeError):
        conn.resume()  # nothing to balance
    assert conn.state is nsxpc.ConnectionState.ACTIVE

    conn.suspend()
    conn.suspend()
    assert conn.state is nsxpc.ConnectionState.SUSPENDED
    conn.remote_object_proxy.record(1)
    conn.resume()  # one suspension left
    assert conn.state is nsxpc.ConnectionState.SUSPENDED
    conn.remote_object_proxy.record(2)
    assert _other_view(connections, lab_server.name) == []

    conn.resume()
    assert conn.state is nsxpc.ConnectionState.ACTIVE
    assert sync_proxy(conn).recorded() == [1, 2]
    with pytest.raises(RuntimeError):
        conn.resume()
    # The over-resume changed nothing: the connection still works and still counts.
    conn.suspend()
    conn.resume()
    assert sync_proxy(conn).add(1, 1) == 2


def test_activate_starts_once_and_then_does_nothing(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name, resume=False)
    conn.activate()
    assert conn.state is nsxpc.ConnectionState.ACTIVE
    assert sync_proxy(conn).add(2, 3) == 5
    conn.activate()  # already active: nothing happens, and it balances nothing
    assert conn.state is nsxpc.ConnectionState.ACTIVE
    with pytest.raises(RuntimeError):
        conn.resume()
    conn.suspend()
    conn.activate()  # does not resume a suspended connection either
    assert conn.state is nsxpc.ConnectionState.SUSPENDED
    conn.resume()
    assert sync_proxy(conn).add(3, 4) == 7


def test_invalidate_is_idempotent_fails_outstanding_calls_and_runs_the_handler_once_and_last(
    lab_server: Child, connections: Connections
):
    conn = connections.lab(lab_server.name)
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    conn.invalidation_handler = events.event("invalidated")
    for tag in range(5):
        conn.remote_object_proxy_with_error_handler(events.error(tag)).hold(tag, events.reply(tag))
    assert sync_proxy(conn).held_count() == 5  # all five are outstanding in the service

    conn.invalidate()
    conn.invalidate()
    items = events.wait_for(lambda items: ("invalidated",) in items)
    conn.invalidate()

    assert conn.state is nsxpc.ConnectionState.INVALID
    assert items[-1] == ("invalidated",), "the invalidation handler must run after every other callback"
    errors = [i for i in items if i[0] == "error"]
    assert sorted(tag for _, tag, _ in errors) == list(range(5)), "each outstanding call ends exactly once"
    assert all(type(err) is nsxpc.ConnectionInvalid for _, _, err in errors)
    assert all(err.code == 4099 and not err.can_retry for _, _, err in errors)
    assert not [i for i in items if i[0] in ("reply", "interrupted")]
    assert events.snapshot().count(("invalidated",)) == 1


def test_invalidate_wakes_a_synchronous_caller_with_connection_invalid(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    outcome = Recorder()

    def caller() -> None:
        try:
            outcome.add(("value", sync_proxy(conn).hold(1)))
        except nsxpc.XPCError as exc:
            outcome.add(("raised", exc))

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        probe = sync_proxy(connections.lab(lab_server.name))
        for _ in range(1000):  # bounded: each iteration is a round trip to the service
            if probe.held_count() == 1:
                break
        assert probe.held_count() == 1
        conn.invalidate()
        [(kind, err)] = outcome.wait_len(1)
    finally:
        thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert kind == "raised" and type(err) is nsxpc.ConnectionInvalid


def test_a_call_after_invalidation_ends_with_connection_invalid(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    assert sync_proxy(conn).add(1, 2) == 3
    gone = threading.Event()
    conn.invalidation_handler = gone.set
    conn.invalidate()
    assert gone.wait(TIMEOUT)

    with pytest.raises(nsxpc.ConnectionInvalid):
        sync_proxy(conn).add(1, 2)
    outcome = Recorder()
    conn.remote_object_proxy_with_error_handler(outcome.error()).add(1, 2, outcome.reply())
    [(kind, _, err)] = outcome.wait_len(1)
    assert kind == "error" and type(err) is nsxpc.ConnectionInvalid


def test_after_invalidation_the_connection_drops_its_handlers_and_exported_object(
    lab_server: Child, connections: Connections
):
    client_side = _ClientSide()
    conn = connections.lab(lab_server.name, exported=client_side)
    gone = threading.Event()
    conn.invalidation_handler = gone.set
    conn.interruption_handler = lambda: None
    conn.invalidate()
    assert gone.wait(TIMEOUT)
    assert conn.invalidation_handler is None
    assert conn.interruption_handler is None
    assert conn.exported_object is None


# --------------------------------------------------------------------------- the three proxies


def test_plain_proxy_logs_a_failure_at_warning_and_releases_the_reply_block(
    lab_server: Child, connections: Connections, logwatch: LogWatch
):
    conn = connections.lab(lab_server.name)
    replies = Recorder()
    conn.remote_object_proxy.fail("kaput-1234", replies.reply())
    record = logwatch.wait_for(lambda r: "kaput-1234" in r.getMessage())
    assert record.levelname == "WARNING" and record.name == "nsxpc"
    assert sync_proxy(conn).add(1, 1) == 2  # FIFO: anything for the failed call came before this
    assert replies.snapshot() == []


def test_error_handler_proxy_calls_exactly_one_of_reply_or_handler(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    out = Recorder()
    proxy = conn.remote_object_proxy_with_error_handler(out.error("fail"))
    proxy.fail("nope", out.reply("fail"))
    ok = conn.remote_object_proxy_with_error_handler(out.error("add"))
    ok.add(20, 22, out.reply("add"))
    items = out.wait_len(2)
    assert sync_proxy(conn).add(0, 0) == 0
    assert out.snapshot() == items
    [err] = [i[2] for i in items if i[:2] == ("error", "fail")]
    assert type(err) is nsxpc.RemoteError
    assert ("reply", "add", (42,)) in items
    assert len(items) == 2


def test_sync_proxy_runs_the_reply_block_on_the_calling_thread_before_returning(
    lab_server: Child, connections: Connections
):
    conn = connections.lab(lab_server.name)
    seen: list[Any] = []
    sync = conn.synchronous_remote_object_proxy_with_error_handler(lambda e: seen.append(("error", e)), timeout=TIMEOUT)
    result = sync.add(2, 5, lambda total: seen.append(("reply", total, threading.get_ident())))
    assert result is None
    assert seen == [("reply", 7, threading.get_ident())]

    seen.clear()
    sync.fail("sad", lambda total: seen.append(("reply", total)))
    assert len(seen) == 1 and seen[0][0] == "error"
    assert type(seen[0][1]) is nsxpc.RemoteError


def test_sync_proxy_value_returning_form(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    handler_calls: list[Exception] = []
    sync = conn.synchronous_remote_object_proxy_with_error_handler(handler_calls.append, timeout=TIMEOUT)
    assert sync.add(2, 3) == 5  # one value
    assert sync.pair(4, "ab") == (8, "abab")  # several: a tuple
    assert sync.nothing() is None  # none
    with pytest.raises(nsxpc.RemoteError) as info:
        sync.fail("broken")
    assert isinstance(info.value, nsxpc.XPCError)
    assert handler_calls == [], "the value-returning form raises instead of calling the handler"


def test_proxies_make_proxies_with_error_handlers_and_timeouts(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    out = Recorder()
    base = conn.remote_object_proxy
    base.remote_object_proxy_with_error_handler(out.error(), timeout=TIMEOUT).add(1, 2, out.reply())
    assert out.wait_len(1) == [("reply", None, (3,))]
    sync = base.synchronous_remote_object_proxy_with_error_handler(out.error(), timeout=TIMEOUT)
    assert sync.pair(1, "x") == (2, "xx")


# --------------------------------------------------------------------------- exported objects both ways


class _ClientSide:
    """What the test process exports to the service."""

    def __init__(self) -> None:
        self.events = Recorder()
        self.conn: nsxpc.Connection | None = None

    def progress(self, step: int) -> None:
        self.events.add(("progress", step, nsxpc.Connection.current()))

    def question(self, text: str, reply: Any) -> None:
        self.events.add(("question", text, nsxpc.Connection.current()))
        reply("forty-two")


def test_service_calls_the_clients_exported_object_back_over_the_same_connection(
    lab_server: Child, connections: Connections
):
    client_side = _ClientSide()
    conn = connections.lab(lab_server.name, exported=client_side)
    out = Recorder()
    conn.remote_object_proxy_with_error_handler(out.error()).ping_client(
        4, lambda answer: client_side.events.add(("reply", answer, nsxpc.Connection.current()))
    )
    items = client_side.events.wait_for(lambda items: any(i[0] == "reply" for i in items))
    assert [i[:2] for i in items] == [
        ("progress", 0),
        ("progress", 1),
        ("progress", 2),
        ("progress", 3),
        ("question", "after 4 steps?"),
        ("reply", "client said forty-two"),
    ], "call-backs sent before the reply arrive before it, in order"
    assert all(i[2] is conn for i in items), "Connection.current() is this connection in exported methods and replies"
    assert out.snapshot() == []


def test_deliveries_on_one_connection_are_fifo_and_one_at_a_time(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    out = Recorder()
    proxy = conn.remote_object_proxy_with_error_handler(out.error())
    for i in range(30):
        proxy.busy(i, out.reply())
        conn.remote_object_proxy.record(i)
    items = out.wait_len(30)
    assert [i[2] for i in items] == [(i,) for i in range(30)]
    assert sync_proxy(conn).max_busy() == 1
    assert sync_proxy(conn).recorded() == list(range(30))


def test_connection_current(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    assert nsxpc.Connection.current() is None
    seen = Recorder()
    conn.remote_object_proxy_with_error_handler(seen.error()).add(
        1, 2, lambda total: seen.add(("reply", nsxpc.Connection.current()))
    )
    assert seen.wait_len(1) == [("reply", conn)]
    sync_seen: list[Any] = []
    conn.synchronous_remote_object_proxy_with_error_handler(seen.error(), timeout=TIMEOUT).add(
        1, 2, lambda total: sync_seen.append(nsxpc.Connection.current())
    )
    assert sync_seen == [conn]
    assert nsxpc.Connection.current() is None
    # On the service's side, inside an exported method: the connection the call came on.
    _, _, _, _, current_is_stable = sync_proxy(conn).whoami()
    assert current_is_stable is True


# --------------------------------------------------------------------------- barriers


def test_send_barrier_runs_after_the_messages_queued_before_it(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name, resume=False)
    conn.remote_object_proxy.record(1)
    conn.remote_object_proxy.record(2)
    ran = threading.Event()
    conn.schedule_send_barrier(ran.set)
    assert not ran.is_set(), "the barrier ran before the messages queued ahead of it were sent"
    conn.resume()
    assert ran.wait(TIMEOUT)
    assert sync_proxy(conn).recorded() == [1, 2]

    again = threading.Event()
    conn.schedule_send_barrier(again.set)
    assert again.wait(TIMEOUT)


def test_send_barrier_on_an_invalidated_connection_runs_at_once(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    gone = threading.Event()
    conn.invalidation_handler = gone.set
    conn.invalidate()
    assert gone.wait(TIMEOUT)
    ran: list[bool] = []
    conn.schedule_send_barrier(lambda: ran.append(True))
    assert ran == [True]


# --------------------------------------------------------------------------- peer identity


def test_peer_credentials_on_both_sides(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    server_pid, seen_pid, seen_uid, seen_gid, _ = sync_proxy(conn).whoami()
    assert server_pid == lab_server.pid
    assert conn.process_identifier == lab_server.pid
    assert conn.effective_user_identifier == os.geteuid()
    assert conn.effective_group_identifier == os.getegid()
    assert (seen_pid, seen_uid, seen_gid) == (os.getpid(), os.geteuid(), os.getegid())


# --------------------------------------------------------------------------- more life-cycle edges


def test_invalidating_a_never_resumed_connection_fails_its_queued_calls(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name, resume=False)
    events = Recorder()
    conn.invalidation_handler = events.event("invalidated")
    conn.remote_object_proxy_with_error_handler(events.error("queued")).add(1, 2, events.reply("queued"))
    conn.invalidate()
    items = events.wait_for(lambda items: ("invalidated",) in items)
    assert [i[:2] for i in items] == [("error", "queued"), ("invalidated",)]
    assert type(items[0][2]) is nsxpc.ConnectionInvalid
    assert sync_proxy(connections.lab(lab_server.name)).calls_received() == 0, "nothing was ever sent"


def test_a_call_that_times_out_while_queued_ends_once_and_is_not_answered_later(
    lab_server: Child, connections: Connections
):
    conn = connections.lab(lab_server.name)
    sync = sync_proxy(conn)
    before = sync.calls_received()
    conn.suspend()
    out = Recorder()
    conn.remote_object_proxy_with_error_handler(out.error(), timeout=0.2).add(1, 2, out.reply())
    [(kind, _, err)] = out.wait_len(1)
    assert kind == "error" and type(err) is nsxpc.TimedOut
    conn.resume()
    assert sync.add(2, 2) == 4
    assert len(out.snapshot()) == 1
    assert sync.calls_received() == before + 1, "the expired call was never sent"


def test_many_threads_calling_one_connection_each_get_their_own_answer(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    results = Recorder()

    def worker(t: int) -> None:
        sync = sync_proxy(conn)
        got = [sync.add(t * 1000, i) for i in range(25)]
        results.add((t, got))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(results.snapshot()) == [(t, [t * 1000 + i for i in range(25)]) for t in range(8)]


# --------------------------------------------------------------------------- the exported side's reply block


class _OddKitchen:
    """An in-process exported object whose ``add`` misuses its reply block on request."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.seen = Recorder()

    def add(self, a: int, b: int, reply: Any) -> None:
        if self.how == "twice":
            reply(a + b)
            try:
                reply(0)
            except RuntimeError as exc:
                self.seen.add(("second call raised", exc))
        elif self.how == "later":
            threading.Thread(target=reply, args=(a + b,)).start()
        elif self.how == "bad-type":
            reply("not an int")


def test_a_reply_block_called_twice_raises_runtime_error_and_the_caller_gets_one_answer(
    serve: Callable[..., ServerSide], connections: Connections
):
    kitchen = _OddKitchen("twice")
    side = serve(exported=kitchen)
    conn = kitchen_client(connections, listener_endpoint=side.listener.endpoint)
    out = Recorder()
    conn.remote_object_proxy_with_error_handler(out.error()).add(1, 2, out.reply())
    assert out.wait_len(1) == [("reply", None, (3,))]
    [(_, exc)] = kitchen.seen.wait_len(1)
    assert isinstance(exc, RuntimeError)
    conn.remote_object_proxy_with_error_handler(out.error()).add(2, 2, out.reply())
    assert out.wait_len(2)[1] == ("reply", None, (4,))
    assert len(out.snapshot()) == 2


def test_a_reply_block_called_later_from_another_thread(serve: Callable[..., ServerSide], connections: Connections):
    side = serve(exported=_OddKitchen("later"))
    conn = kitchen_client(connections, listener_endpoint=side.listener.endpoint)
    assert sync_proxy(conn).add(20, 22) == 42


def test_a_reply_with_a_value_its_slot_refuses_ends_the_call_once(
    serve: Callable[..., ServerSide], connections: Connections
):
    side = serve(exported=_OddKitchen("bad-type"))
    conn = kitchen_client(connections, listener_endpoint=side.listener.endpoint)
    out = Recorder()
    conn.remote_object_proxy_with_error_handler(out.error()).add(1, 2, out.reply())
    [(kind, _, err)] = out.wait_len(1)
    assert kind == "error" and type(err) is nsxpc.ReplyInvalid, err
    with pytest.raises(nsxpc.ReplyInvalid):
        sync_proxy(conn).add(1, 2)
    assert len(out.snapshot()) == 1
    assert conn.state is nsxpc.ConnectionState.ACTIVE


def test_a_reply_that_arrives_while_suspended_is_delivered_on_resume(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    out = Recorder()
    conn.remote_object_proxy_with_error_handler(out.error()).hold(5, out.reply())
    # Asked on the same connection: messages of one connection arrive in order.
    assert sync_proxy(conn).held_count() == 1
    other = sync_proxy(connections.lab(lab_server.name))
    conn.suspend()
    assert other.release_held() == 1  # the service has now sent the reply
    assert out.snapshot() == [], "a suspended connection delivers nothing"
    conn.resume()
    assert out.wait_len(1) == [("reply", None, (5,))]


def test_a_burst_of_large_calls_is_answered_completely_and_in_order(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    out = Recorder()
    proxy = conn.remote_object_proxy_with_error_handler(out.error())
    payload = b"x" * 4096
    n = 1500  # about 6 MB each way: both sides' socket buffers fill up
    for i in range(n):
        proxy.echo((i, payload), out.reply())
    items = out.wait_len(n, timeout=4 * TIMEOUT)
    assert [i[2][0][0] for i in items] == list(range(n))
    assert all(i[0] == "reply" and i[2][0][1] == payload for i in items)


def test_a_client_used_only_synchronously_has_no_thread_until_its_peer_goes_away(
    lab_server: Child, connections: Connections
):
    # A caller that reads its own replies needs no queue thread (README "Threads"): the
    # process's watcher keeps an eye on the socket, and the queue starts when the peer
    # goes away, in time to run the interruption handler.
    conn = connections.lab(lab_server.name)
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    assert sync_proxy(conn).add(1, 2) == 3
    assert not conn._thread, "a queue thread started for a synchronous round trip"
    lab_server.kill9()
    assert events.wait_for(lambda items: ("interrupted",) in items) == [("interrupted",)]
    assert conn._thread


def test_invalidating_a_client_that_never_needed_its_queue_ends_it_at_once(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    assert sync_proxy(conn).add(1, 2) == 3
    conn.invalidate()
    assert conn.state is nsxpc.ConnectionState.INVALID
    with pytest.raises(nsxpc.ConnectionInvalid):
        sync_proxy(conn).add(1, 2)
    assert conn.peer_credentials is not None and conn._link is None, "the socket was closed by invalidate() itself"
