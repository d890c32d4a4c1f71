"""Exactly once under every fault (API.md section 4): each call that wants a reply ends
in exactly one reply block or one error handler call, never both, never twice."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import nsxpc
from protocols.kitchen import kitchen_interface
from tests.helpers.lab import Lab
from tests.integration.conftest import TIMEOUT, Child, Connections, LogWatch, Recorder, sync_proxy


def _ended(items: list[Any]) -> Counter[Any]:
    """How many times each call (by tag) ended, whatever the way."""
    return Counter(i[1] for i in items if i[0] in ("reply", "error"))


def test_kill9_mid_call_interrupts_every_outstanding_call_once_then_the_handler_then_reconnects(
    lab_server: Child, spawn: Callable[..., Child], connections: Connections
):
    conn = connections.lab(lab_server.name)
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    conn.invalidation_handler = events.event("invalidated")
    n = 25
    for tag in range(n):
        conn.remote_object_proxy_with_error_handler(events.error(tag)).hold(tag, events.reply(tag))

    # A synchronous caller blocked in another thread at the time of the crash.
    def sync_caller() -> None:
        try:
            events.add(("sync-value", sync_proxy(conn).hold(n)))
        except nsxpc.XPCError as exc:
            events.add(("sync-raised", exc))

    thread = threading.Thread(target=sync_caller)
    thread.start()
    try:
        probe = sync_proxy(connections.lab(lab_server.name))
        for _ in range(1000):  # bounded: each iteration is a round trip
            if probe.held_count() == n + 1:
                break
        assert probe.held_count() == n + 1, "every call is outstanding in the service"

        lab_server.kill9()
        items = events.wait_for(lambda items: ("interrupted",) in items)
        thread.join(TIMEOUT)
    finally:
        thread.join(TIMEOUT)
    assert not thread.is_alive()

    ended = _ended(items)
    assert ended == Counter(range(n)), "each outstanding call ends exactly once"
    errors = [i for i in items if i[0] == "error"]
    assert all(type(err) is nsxpc.ConnectionInterrupted for _, _, err in errors)
    assert all(err.code == 4097 and err.can_retry for _, _, err in errors)
    handler_at = items.index(("interrupted",))
    assert all(items.index(e) < handler_at for e in errors), "error handlers run before the interruption handler"
    [sync_outcome] = [i for i in events.snapshot() if i[0].startswith("sync-")]
    assert sync_outcome[0] == "sync-raised" and type(sync_outcome[1]) is nsxpc.ConnectionInterrupted

    # The service comes back under the same name: the next message reconnects.
    restarted = spawn("lab_server.py", lab_server.name)
    assert conn.state is not nsxpc.ConnectionState.INVALID
    assert sync_proxy(conn).add(2, 2) == 4
    assert conn.process_identifier == restarted.pid
    after = events.snapshot()
    assert _ended(after) == Counter(range(n)), "nothing ended twice"
    assert after.count(("interrupted",)) == 1
    assert ("invalidated",) not in after


def test_threads_reconnecting_with_their_first_synchronous_calls_each_get_their_answer(
    lab_server: Child, spawn: Callable[..., Child], connections: Connections
):
    # After an interruption the next message reconnects. Several threads making that
    # first call at once (no timeout: a reply taken by the wrong reader would hang one)
    # each read, or are handed, their own reply, and none waits on a reply already read.
    conn = connections.lab(lab_server.name)
    interrupted = Recorder()
    conn.interruption_handler = interrupted.event("interrupted")
    assert sync_proxy(conn).add(1, 1) == 2
    lab_server.kill9()
    interrupted.wait_len(1)
    spawn("lab_server.py", lab_server.name)
    results = Recorder()

    def worker(t: int) -> None:
        sync = sync_proxy(conn, timeout=None)  # type: ignore[arg-type]
        results.add((t, [sync.add(t * 100, i) for i in range(20)]))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a caller is still waiting"
    assert sorted(results.snapshot()) == [(t, [t * 100 + i for i in range(20)]) for t in range(6)]


def test_a_message_while_the_service_is_down_is_interrupted_and_the_connection_stays_valid(
    lab_server: Child, spawn: Callable[..., Child], connections: Connections
):
    conn = connections.lab(lab_server.name)
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    conn.invalidation_handler = events.event("invalidated")
    assert sync_proxy(conn).add(1, 1) == 2
    lab_server.kill9()
    events.wait_for(lambda items: ("interrupted",) in items)

    with pytest.raises(nsxpc.ConnectionInterrupted):
        sync_proxy(conn).add(1, 2)
    conn.remote_object_proxy_with_error_handler(events.error("down")).add(1, 2, events.reply("down"))
    items = events.wait_for(lambda items: any(i[1] == "down" for i in items if len(i) > 1))
    [down] = [i for i in items if len(i) > 1 and i[1] == "down"]
    assert down[0] == "error" and type(down[2]) is nsxpc.ConnectionInterrupted
    assert conn.state is not nsxpc.ConnectionState.INVALID

    spawn("lab_server.py", lab_server.name)
    assert sync_proxy(conn).add(3, 4) == 7
    assert ("invalidated",) not in events.snapshot()


@pytest.mark.parametrize(
    ("mode", "error_type"),
    [
        ("crash", nsxpc.ConnectionInterrupted),  # os._exit mid-call
        ("drop", nsxpc.ReplyInvalid),  # reply block released uncalled
        ("raise", nsxpc.RemoteError),  # the method raised
    ],
)
def test_kitchen_service_misbehaving_mid_call(
    mode: str,
    error_type: type[nsxpc.XPCError],
    spawn: Callable[..., Child],
    service_name: str,
    connections: Connections,
):
    server = spawn("kitchen_server.py", service_name, mode)
    conn = connections.make(mach_service_name=service_name)
    conn.remote_object_interface = kitchen_interface()
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    conn.resume()
    conn.remote_object_proxy_with_error_handler(events.error("add")).add(1, 2, events.reply("add"))
    items = events.wait_for(lambda items: any(i[0] in ("reply", "error") for i in items))
    [(kind, _, err)] = [i for i in items if i[0] in ("reply", "error")]
    assert kind == "error" and type(err) is error_type, items
    if mode == "crash":
        assert server.wait() == 7
        events.wait_for(lambda items: ("interrupted",) in items)
        assert items.index(("error", "add", err)) < events.snapshot().index(("interrupted",))
    else:
        # The connection stays up and the service keeps answering on it.
        sync = sync_proxy(conn)
        assert sync.feed_me_fries([]) == (0, "yum")
        assert ("interrupted",) not in events.snapshot()
    assert _ended(events.snapshot()) == Counter(["add"])


def test_kitchen_service_that_never_replies_times_out(
    spawn: Callable[..., Child], service_name: str, connections: Connections
):
    spawn("kitchen_server.py", service_name, "hang")
    conn = connections.make(mach_service_name=service_name)
    conn.remote_object_interface = kitchen_interface()
    conn.resume()
    out = Recorder()
    started = time.monotonic()
    conn.remote_object_proxy_with_error_handler(out.error(), timeout=0.3).add(1, 2, out.reply())
    [(kind, _, err)] = out.wait_len(1)
    assert kind == "error" and type(err) is nsxpc.TimedOut and err.can_retry
    assert time.monotonic() - started >= 0.25
    assert sync_proxy(conn).feed_me_fries([]) == (0, "yum")


def test_remote_error_names_the_exception_and_has_no_traceback(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    with pytest.raises(nsxpc.RemoteError) as info:
        sync_proxy(conn).fail("the dough did not rise")
    err = info.value
    text = str(err)
    assert "ValueError" in text and "the dough did not rise" in text
    assert "Traceback" not in text and 'File "' not in text and "lab_server" not in text
    assert 4103 <= int(err.code) <= 4223 and not err.can_retry
    assert sync_proxy(conn).add(1, 2) == 3, "the connection stays up"


def test_reply_block_dropped_uncalled_gives_reply_invalid(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    out = Recorder()
    conn.remote_object_proxy_with_error_handler(out.error()).drop(out.reply())
    [(kind, _, err)] = out.wait_len(1)
    assert kind == "error" and type(err) is nsxpc.ReplyInvalid and err.code == 4101
    with pytest.raises(nsxpc.ReplyInvalid):
        sync_proxy(conn).drop()
    assert sync_proxy(conn).add(1, 2) == 3
    assert len(out.snapshot()) == 1


def test_reply_that_fails_to_decode_gives_reply_invalid(lab_server: Child, connections: Connections):
    iface = nsxpc.Interface(Lab)
    iface.set_classes({str}, "echo", argument_index=0, of_reply=True)  # the service will answer an int
    conn = connections.lab(lab_server.name, interface=iface)
    out = Recorder()
    conn.remote_object_proxy_with_error_handler(out.error()).echo(5, out.reply())
    [(kind, _, err)] = out.wait_len(1)
    assert kind == "error" and type(err) is nsxpc.ReplyInvalid, err
    assert "echo" in str(err)
    with pytest.raises(nsxpc.ReplyInvalid):
        sync_proxy(conn).echo(6)
    assert sync_proxy(conn).echo("fine") == "fine", "the connection stays up"
    assert len(out.snapshot()) == 1


def test_timeout_ends_the_call_discards_the_late_reply_and_keeps_the_connection(
    lab_server: Child, connections: Connections
):
    conn = connections.lab(lab_server.name)
    out = Recorder()
    conn.remote_object_proxy_with_error_handler(out.error("late"), timeout=0.3).hold(1, out.reply("late"))
    [(kind, _, err)] = out.wait_len(1)
    assert kind == "error" and type(err) is nsxpc.TimedOut and err.can_retry

    with pytest.raises(nsxpc.TimedOut):
        conn.synchronous_remote_object_proxy_with_error_handler(out.error("sync"), timeout=0.3).hold(2)

    # The service now answers both held calls; the answers come before this reply (FIFO).
    assert sync_proxy(conn).release_held() == 2
    assert out.snapshot() == [("error", "late", err)], "a late reply is discarded"
    assert sync_proxy(conn).add(5, 5) == 10


def test_exactly_once_across_mixed_outcomes_then_a_crash(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    expected: dict[int, type | None] = {}
    kinds = ["add", "fail", "drop", "hold-timeout", "hold"]
    for tag in range(40):
        kind = kinds[tag % len(kinds)]
        timeout = 0.2 if kind == "hold-timeout" else None
        proxy = conn.remote_object_proxy_with_error_handler(events.error(tag), timeout=timeout)
        if kind == "add":
            proxy.add(tag, 1, events.reply(tag))
            expected[tag] = None
        elif kind == "fail":
            proxy.fail("x", events.reply(tag))
            expected[tag] = nsxpc.RemoteError
        elif kind == "drop":
            proxy.drop(events.reply(tag))
            expected[tag] = nsxpc.ReplyInvalid
        elif kind == "hold-timeout":
            proxy.hold(tag, events.reply(tag))
            expected[tag] = nsxpc.TimedOut
        else:
            proxy.hold(tag, events.reply(tag))
            expected[tag] = nsxpc.ConnectionInterrupted
    settled = [t for t, e in expected.items() if e is not nsxpc.ConnectionInterrupted]
    events.wait_for(lambda items: set(settled) <= set(_ended(items)))
    conn.remote_object_proxy_with_error_handler(events.error("crash")).crash(events.reply("crash"))
    items = events.wait_for(lambda items: ("interrupted",) in items)

    ended = _ended(items)
    assert ended == Counter([*expected, "crash"]), "every call ends exactly once"
    for tag, want in expected.items():
        [outcome] = [i for i in items if i[0] in ("reply", "error") and i[1] == tag]
        if want is None:
            assert outcome == ("reply", tag, (tag + 1,))
        else:
            assert outcome[0] == "error" and type(outcome[2]) is want, (tag, outcome)


def test_invalidate_from_inside_a_reply_block(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    events = Recorder()
    conn.invalidation_handler = events.event("invalidated")
    conn.remote_object_proxy_with_error_handler(events.error("held")).hold(1, events.reply("held"))

    def reply_then_invalidate(total: int) -> None:
        events.add(("reply", "add", (total,)))
        conn.invalidate()

    conn.remote_object_proxy_with_error_handler(events.error("add")).add(1, 2, reply_then_invalidate)
    items = events.wait_for(lambda items: ("invalidated",) in items)
    assert items[0] == ("reply", "add", (3,))
    assert items[1][:2] == ("error", "held") and type(items[1][2]) is nsxpc.ConnectionInvalid
    assert items[2:] == [("invalidated",)]


def test_invalidate_after_an_interruption_runs_the_handlers_in_order(lab_server: Child, connections: Connections):
    conn = connections.lab(lab_server.name)
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    conn.invalidation_handler = events.event("invalidated")
    conn.remote_object_proxy_with_error_handler(events.error("held")).hold(1, events.reply("held"))
    assert sync_proxy(conn).held_count() == 1
    lab_server.kill9()
    events.wait_for(lambda items: ("interrupted",) in items)
    conn.invalidate()
    items = events.wait_for(lambda items: ("invalidated",) in items)
    assert [i[:2] if len(i) > 1 else i for i in items] == [("error", "held"), ("interrupted",), ("invalidated",)]
    assert type(items[0][2]) is nsxpc.ConnectionInterrupted


def test_a_suspended_connection_whose_service_dies_stays_idle_and_reports_it_on_resume(
    lab_server: Child, connections: Connections
):
    conn = connections.lab(lab_server.name)
    interrupted = threading.Event()
    conn.interruption_handler = interrupted.set
    assert sync_proxy(conn).add(1, 2) == 3
    conn.suspend()
    lab_server.kill9()
    # A measurement window, not a synchronisation: a suspended connection must not
    # spin on the dead socket (a level-triggered EPOLLHUP is reported even with no
    # events requested).
    cpu_before = time.process_time()
    threading.Event().wait(0.5)
    cpu_used = time.process_time() - cpu_before
    assert cpu_used < 0.2, f"the process burnt {cpu_used:.2f}s of CPU in 0.5s while idle"
    assert not interrupted.is_set(), "nothing is delivered while suspended"
    conn.resume()
    assert interrupted.wait(TIMEOUT)


def test_a_service_calling_back_a_client_that_exports_nothing_gets_an_error(
    lab_server: Child, connections: Connections, logwatch: LogWatch
):
    conn = connections.lab(lab_server.name)  # exports no object
    answer = sync_proxy(conn).ping_client(2)
    assert answer.startswith("error:"), answer
    assert "4864" in answer or "exported" in answer or "DecodingError" in answer, answer
    logwatch.wait_for(lambda r: r.levelno >= logging.WARNING and "progress" in r.getMessage())
