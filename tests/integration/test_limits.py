"""Resource limits with their specific errors (issue 6 item 3; docs/LIMITS.md;
research/reliability.md 5.3, 5.6 and test plan B2, B4, B5, B7, F9, F10).

Each test hits one limit with small ``nsxpc.Limits`` values, checks the error
that names it, and checks that other clients keep working. Real sockets,
in-process listeners; every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest

import nsxpc
from tests.integration.conftest import (
    TIMEOUT,
    Connections,
    RawClient,
    Recorder,
    frame,
    pack,
    sync_proxy,
)

LIMIT_EXCEEDED = 4110


@nsxpc.protocol
class Holder(Protocol):
    def hold(self, tag: int, reply: Callable[[int], None]) -> None: ...
    def blob(self, size: int, reply: Callable[[bytes], None]) -> None: ...
    def add(self, a: int, b: int, reply: Callable[[int], None]) -> None: ...


class HolderImpl:
    """Keeps the reply blocks of ``hold`` until the test releases them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.held: list[tuple[int, Any]] = []
        self.calls = 0

    def hold(self, tag: int, reply: Any) -> None:
        with self.cond:
            self.calls += 1
            self.held.append((tag, reply))
            self.cond.notify_all()

    def blob(self, size: int, reply: Any) -> None:
        reply(b"x" * size)

    def add(self, a: int, b: int, reply: Any) -> None:
        reply(a + b)

    def wait_calls(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.calls >= n, TIMEOUT), f"{self.calls} calls, wanted {n}"

    def release_one(self) -> None:
        with self.cond:
            tag, reply = self.held.pop(0)
        reply(tag)

    def release_all(self) -> None:
        while True:
            with self.cond:
                if not self.held:
                    return
            self.release_one()


class Side:
    """An in-process listener serving a HolderImpl, with what it accepted."""

    def __init__(self, limits: nsxpc.Limits, *, resume: bool = True) -> None:
        self.impl = HolderImpl()
        self.listener = nsxpc.Listener.anonymous(limits=limits)
        self.listener.delegate = self
        self.accepted: list[nsxpc.Connection] = []
        self.events = Recorder()
        if resume:
            self.listener.resume()

    def should_accept_new_connection(self, listener: nsxpc.Listener, conn: nsxpc.Connection) -> bool:
        conn.exported_interface = nsxpc.Interface(Holder)
        conn.exported_object = self.impl
        conn.invalidation_handler = lambda: self.events.add(("invalidated", conn))
        self.accepted.append(conn)
        conn.resume()
        return True

    def close(self) -> None:
        self.impl.release_all()
        self.listener.invalidate()
        for conn in list(self.accepted):
            conn.invalidate()


@pytest.fixture
def sides() -> Iterator[Callable[..., Side]]:
    made: list[Side] = []

    def make(**limits: Any) -> Side:
        resume = limits.pop("resume", True)
        side = Side(nsxpc.Limits(**limits), resume=resume)
        made.append(side)
        return side

    try:
        yield make
    finally:
        for side in made:
            side.close()


def holder_client(connections: Connections, side: Side, *, resume: bool = True, **limits: Any) -> nsxpc.Connection:
    conn = connections.make(listener_endpoint=side.listener.endpoint, limits=nsxpc.Limits(**limits))
    conn.remote_object_interface = nsxpc.Interface(Holder)
    if resume:
        conn.resume()
    return conn


def still_served(side: Side, connections: Connections) -> None:
    fresh = holder_client(connections, side)
    assert sync_proxy(fresh).add(20, 22) == 42


def raw_hold(raw: RawClient, seq: int) -> bytes:
    return frame(pack([3, seq, 1, "hold", [seq]]))


# --------------------------------------------------------------------------- calls in flight


def test_a_caller_at_the_cap_waits_for_a_slot(sides: Callable[..., Side], connections: Connections) -> None:
    side = sides()
    conn = holder_client(connections, side, max_calls_in_flight=4)
    out = Recorder()
    proxy = conn.remote_object_proxy_with_error_handler(out.error())
    for tag in range(4):
        proxy.hold(tag, out.reply(tag))
    side.impl.wait_calls(4)
    fifth = threading.Thread(target=lambda: proxy.hold(4, out.reply(4)))
    fifth.start()
    fifth.join(0.5)  # bounded: it must still be waiting for a slot
    assert fifth.is_alive(), "the fifth call did not wait at max_calls_in_flight=4"
    assert side.impl.calls == 4, "nothing beyond the cap was sent"
    side.impl.release_one()
    fifth.join(TIMEOUT)
    assert not fifth.is_alive()
    side.impl.wait_calls(5)
    side.impl.release_all()
    assert sorted(i[1] for i in out.wait_len(5)) == [0, 1, 2, 3, 4]
    assert all(i[0] == "reply" for i in out.snapshot())


def test_a_wait_for_a_slot_is_bounded_by_the_call_timeout(sides: Callable[..., Side], connections: Connections) -> None:
    side = sides()
    conn = holder_client(connections, side, max_calls_in_flight=2)
    proxy = conn.remote_object_proxy_with_error_handler(lambda e: None)
    proxy.hold(0, lambda t: None)
    proxy.hold(1, lambda t: None)
    side.impl.wait_calls(2)
    sync = conn.synchronous_remote_object_proxy_with_error_handler(lambda e: None, timeout=0.3)
    with pytest.raises(nsxpc.TimedOut):
        sync.hold(2)
    assert side.impl.calls == 2


def test_where_waiting_cannot_end_the_call_fails_with_limit_exceeded(
    sides: Callable[..., Side], connections: Connections
) -> None:
    side = sides()
    conn = holder_client(connections, side, resume=False, max_calls_in_flight=2)
    out = Recorder()

    def hold(tag: int) -> None:
        conn.remote_object_proxy_with_error_handler(out.error(tag)).hold(tag, out.reply(tag))

    for tag in range(3):  # queued before resume(): nothing could free a slot
        hold(tag)
    first = out.wait_len(1)[0]
    assert first[:2] == ("error", 2) and type(first[2]) is nsxpc.LimitExceeded, first
    assert first[2].code == LIMIT_EXCEEDED and "max_calls_in_flight" in first[2].message
    conn.resume()
    side.impl.wait_calls(2)

    # From the connection's own queue (a reply block), at the cap: fails at once too.
    def on_reply(total: int) -> None:
        hold(98)  # takes the slot the reply to add() freed: the cap is full again
        hold(99)  # this cannot wait on the queue that delivers the replies

    side.impl.release_one()
    conn.remote_object_proxy_with_error_handler(out.error("add")).add(1, 1, on_reply)
    items = out.wait_for(lambda items: any(i[:2] == ("error", 99) for i in items))
    err = next(i[2] for i in items if i[:2] == ("error", 99))
    assert type(err) is nsxpc.LimitExceeded and "own queue" in err.message, err
    side.impl.wait_calls(3)  # 98 went out
    still_served(side, connections)


def test_the_receiving_side_stops_reading_a_peer_with_too_many_unanswered_calls(
    sides: Callable[..., Side], connections: Connections
) -> None:
    side = sides(max_calls_in_flight=8)
    raw = RawClient(side.listener.endpoint.path)
    try:
        raw.handshake(side.listener.endpoint.token)
        raw.send(b"".join(raw_hold(raw, seq) for seq in range(1, 301)))  # 300 pipelined calls
        side.impl.wait_calls(8)
        with side.impl.cond:
            side.impl.cond.wait_for(lambda: side.impl.calls > 8, 0.5)  # bounded: none must come
        assert side.impl.calls == 8, "the listener kept reading past max_calls_in_flight"
        still_served(side, connections)
        side.impl.release_one()
        side.impl.wait_calls(9)
        assert raw.recv_msg() == [4, 1, [1]]
    finally:
        raw.close()


# --------------------------------------------------------------------------- slow consumer


def test_a_peer_that_reads_nothing_is_dropped_as_a_slow_consumer(
    sides: Callable[..., Side], connections: Connections, logwatch: Any
) -> None:
    side = sides(max_outgoing_buffer=64 * 1024, send_timeout=0.5)
    raw = RawClient(side.listener.endpoint.path)
    try:
        raw.handshake(side.listener.endpoint.token)
        # 100 calls for 32 KiB each: 3.2 MB of replies that the client never reads.
        raw.send(b"".join(frame(pack([3, seq, 1, "blob", [32 * 1024]])) for seq in range(1, 101)))
        items = side.events.wait_for(lambda items: bool(items), timeout=4 * TIMEOUT)
        dropped = items[0][1]
        assert dropped.state is nsxpc.ConnectionState.INVALID
        record = logwatch.wait_for(lambda r: "slow consumer" in r.getMessage())
        assert "send_timeout" in record.getMessage()
        still_served(side, connections)
    finally:
        raw.close()


# --------------------------------------------------------------------------- handshakes


def test_a_silent_client_costs_no_thread_and_is_dropped_at_the_handshake_timeout(
    sides: Callable[..., Side], connections: Connections, logwatch: Any
) -> None:
    side = sides(handshake_timeout=0.5)
    still_served(side, connections)  # the listener thread and one connection exist now
    threads = len(os.listdir("/proc/self/task"))
    silent = [RawClient(side.listener.endpoint.path) for _ in range(20)]
    try:
        silent[0].send(b"\x00\x00")  # half a header, then silence
        still_served(side, connections)  # served while 20 peers say nothing
        # At most +2: the fresh client's queue and its listener-side queue (fewer when they run
        # on threads parked by ended connections); nothing for the 20 silent ones.
        assert len(os.listdir("/proc/self/task")) <= threads + 2, "a thread per silent peer"
        for raw in silent:
            raw.expect_closed()
        logwatch.wait_for(lambda r: "did not complete the handshake" in r.getMessage())
    finally:
        for raw in silent:
            raw.close()
    still_served(side, connections)


def test_a_full_pre_handshake_table_closes_its_oldest_peer_and_a_real_client_gets_through(
    sides: Callable[..., Side], connections: Connections
) -> None:
    side = sides(max_pending_connections=4)
    silent = [RawClient(side.listener.endpoint.path) for _ in range(4)]
    try:
        # A fifth silent peer takes the oldest's slot: the oldest is closed, unanswered.
        fifth = RawClient(side.listener.endpoint.path)
        silent.append(fifth)
        silent[0].expect_closed()
        # Stalled peers hold every slot, yet a client that says HELLO at once is served
        # at the first attempt: it is never the oldest when the next peer arrives.
        for i in range(3):
            assert sync_proxy(holder_client(connections, side)).add(i, 2) == i + 2
    finally:
        for raw in silent:
            raw.close()


def test_the_per_uid_cap_refuses_one_more_connection_and_releases_on_close(
    sides: Callable[..., Side], connections: Connections
) -> None:
    side = sides(max_connections_per_uid=3)
    clients = [holder_client(connections, side) for _ in range(3)]
    assert [sync_proxy(c).add(i, 1) for i, c in enumerate(clients)] == [1, 2, 3]
    fourth = holder_client(connections, side)
    out = Recorder()
    # (An async call: the queue reads the REFUSE; see the report on a sync caller's race.)
    fourth.remote_object_proxy_with_error_handler(out.error()).add(1, 1, out.reply())
    err = out.wait_len(1)[0][2]
    assert type(err) is nsxpc.ConnectionInvalid and "max_connections_per_uid" in err.message, err
    clients[0].invalidate()
    side.events.wait_for(lambda items: len(items) >= 1)  # the listener's side of it is gone
    still_served(side, connections)


# --------------------------------------------------------------------------- connect storm


def test_a_thousand_simultaneous_connects_all_succeed(sides: Callable[..., Side]) -> None:
    n = 1000
    side = sides(resume=False, max_connections_per_uid=n + 10, max_pending_connections=n + 10)
    hello = frame(pack([0, "nsxpc", 1, "nsxpc", side.listener.endpoint.token, {}]))
    socks: list[socket.socket] = []
    try:
        # All connect while nobody accepts: the backlog must hold them all.
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(s)
            s.setblocking(False)
            s.connect(side.listener.endpoint.path)  # EAGAIN here would mean a full backlog
            s.sendall(hello)
        side.listener.resume()
        welcomed = 0
        for s in socks:
            s.settimeout(4 * TIMEOUT)
            header = s.recv(8, socket.MSG_WAITALL)
            welcomed += len(header) == 8 and header[:4] != b"\0\0\0\0"
        assert welcomed == n
        assert len(side.accepted) == n
    finally:
        for s in socks:
            s.close()
