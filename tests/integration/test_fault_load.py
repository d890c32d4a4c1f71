"""Faults under load, with real processes (reliability.md C1, C4, C5).

- C1: ``kill -9`` of the service while 1,000 calls are in flight over 10
  connections: exactly 1,000 reply-or-error callbacks, none twice, each
  connection's interruption handler after all of its callbacks and exactly once,
  no invalidation. The latency from the SIGKILL to each callback is measured; the
  test asserts a generous bound for a loaded 2-core machine and prints the figure
  (the 100 ms target is checked by the soak run, tests/soak/test_soak.py).
- C4: a launched service that forked a grandchild holding every socket is still
  seen dead (its pidfd), and the connection is interrupted without waiting for
  the grandchild.
- C5: a SIGSTOPped service: calls with ``timeout=`` end with ``TimedOut`` near
  their deadline, late replies after SIGCONT are discarded (never delivered
  twice) and the connection keeps working.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import nsxpc
from tests.helpers.probe import probe_interface
from tests.integration.conftest import Child, Connections, Recorder, settle, sync_proxy
from tests.integration.test_services import Bundles, bundles  # noqa: F401  (fixture)

#: Asserted here; the target (100 ms) is measured and reported by the soak run.
KILL_BOUND = 3.0


class Clock(Recorder):
    """A Recorder that stamps each item with time.monotonic()."""

    def add(self, item: Any) -> None:
        super().add((*item, time.monotonic()))


def kill_during_in_flight(lab_server: Child, connections: Connections, n_conns: int, per_conn: int) -> dict[str, Any]:
    """Issue n_conns x per_conn held calls, SIGKILL the service once all are held, and
    check C1's invariants. Returns the figures."""
    clock = Clock()
    conns = []
    for c in range(n_conns):
        conn = connections.lab(lab_server.name)
        conn.interruption_handler = lambda c=c: clock.add(("interrupted", c))
        conn.invalidation_handler = lambda c=c: clock.add(("invalidated", c))
        conns.append(conn)
    for c, conn in enumerate(conns):
        proxy = conn.remote_object_proxy_with_error_handler(lambda err, c=c: None)
        for i in range(per_conn):
            tag = (c, i)
            proxy = conn.remote_object_proxy_with_error_handler(lambda err, tag=tag: clock.add(("error", tag, err)))
            proxy.hold(c * per_conn + i, lambda value, tag=tag: clock.add(("reply", tag, value)))
    total = n_conns * per_conn
    probe = sync_proxy(connections.lab(lab_server.name), timeout=30)
    deadline = time.monotonic() + 60
    while probe.held_count() < total:  # each iteration is a bounded round trip
        assert time.monotonic() < deadline, "the calls never all reached the service"
    assert clock.snapshot() == []

    killed_at = time.monotonic()
    lab_server.kill9()
    items = clock.wait_for(
        lambda items: (
            sum(1 for i in items if i[0] in ("reply", "error")) >= total
            and sum(1 for i in items if i[0] == "interrupted") >= n_conns
        ),
        timeout=60,
    )
    ended = Counter(i[1] for i in items if i[0] in ("reply", "error"))
    assert len(ended) == total and set(ended.values()) == {1}, "each call ends exactly once"
    errors = [i for i in items if i[0] == "error"]
    assert len(errors) == total, "the service never replied: every call ends with an error"
    assert all(type(i[2]) is nsxpc.ConnectionInterrupted for i in errors)
    for c in range(n_conns):
        order = [i[0] for i in items if (i[0] == "interrupted" and i[1] == c) or (i[0] == "error" and i[1][0] == c)]
        assert order == ["error"] * per_conn + ["interrupted"], f"connection {c}: {order[-3:]}"
    latencies = sorted(i[-1] - killed_at for i in items if i[0] in ("error", "interrupted"))
    assert not [i for i in items if i[0] == "invalidated"]
    return {
        "calls": total,
        "first_ms": latencies[0] * 1000,
        "median_ms": latencies[len(latencies) // 2] * 1000,
        "max_ms": latencies[-1] * 1000,
    }


def test_kill9_during_1000_in_flight_calls_over_10_connections(lab_server: Child, connections: Connections) -> None:
    figures = kill_during_in_flight(lab_server, connections, 10, 100)
    print(f"\nFIGURE C1 kill -9 with 1,000 calls in flight: {figures}")
    assert figures["max_ms"] < KILL_BOUND * 1000


# --------------------------------------------------------------------------- C4: a grandchild keeps the socket


@pytest.fixture
def grandchildren() -> Iterator[list[int]]:
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_service_whose_grandchild_holds_the_socket_is_still_seen_dead(
    bundles: Bundles,  # noqa: F811
    connections: Connections,
    grandchildren: list[int],
) -> None:
    name = bundles.make()
    events = Clock()
    conn = connections.make(service_name=name)
    conn.remote_object_interface = probe_interface()
    conn.interruption_handler = lambda: events.add(("interrupted",))
    conn.invalidation_handler = lambda: events.add(("invalidated",))
    conn.resume()
    sync = sync_proxy(conn, timeout=30)
    service_pid = sync.pid()
    grandchildren.append(sync.grandchild())
    # An outstanding call at the time of death: the service never answers it.
    outstanding = conn.remote_object_proxy_with_error_handler(lambda err: events.add(("error", err)))
    os.kill(service_pid, signal.SIGSTOP)  # the call below is then surely outstanding at the kill
    assert settle(lambda: _process_state(service_pid) == "T")  # kill() returns before the stop
    outstanding.connections(lambda n: events.add(("reply", n)))
    killed_at = time.monotonic()
    os.kill(service_pid, signal.SIGKILL)
    items = events.wait_for(lambda items: ("interrupted",) in [i[:1] for i in items], timeout=10)
    assert os.path.exists(f"/proc/{grandchildren[0]}"), "the grandchild (holding the sockets) is still alive"
    kinds = [i[0] for i in items]
    assert kinds == ["error", "interrupted"], kinds
    assert type(items[0][1]) is nsxpc.ConnectionInterrupted
    latency = (items[-1][-1] - killed_at) * 1000
    print(f"\nFIGURE C4 death seen through the pidfd with a grandchild holding the socket: {latency:.1f} ms")
    assert latency < 2000
    # The next message launches a fresh instance.
    assert sync_proxy(conn, timeout=30).pid() != service_pid


# --------------------------------------------------------------------------- C5: a stopped service


def test_a_stopped_service_times_calls_out_and_works_again_after_sigcont(
    lab_server: Child, connections: Connections
) -> None:
    conn = connections.lab(lab_server.name)
    assert sync_proxy(conn).add(1, 1) == 2
    events = Clock()
    timeout = 0.5
    os.kill(lab_server.pid, signal.SIGSTOP)
    try:
        # kill() returns before the stop takes effect; the calls must find it stopped.
        assert settle(lambda: _process_state(lab_server.pid) == "T"), _process_state(lab_server.pid)
        sent_at = time.monotonic()
        for i in range(20):
            proxy = conn.remote_object_proxy_with_error_handler(
                lambda err, i=i: events.add(("error", i, err)), timeout=timeout
            )
            proxy.add(i, i, lambda value, i=i: events.add(("reply", i, value)))
        with pytest.raises(nsxpc.TimedOut):
            conn.synchronous_remote_object_proxy_with_error_handler(lambda err: None, timeout=timeout).add(5, 5)
        items = events.wait_len(20, timeout=10)
    finally:
        os.kill(lab_server.pid, signal.SIGCONT)
    assert all(i[0] == "error" and type(i[2]) is nsxpc.TimedOut for i in items)
    late = max(i[-1] - sent_at for i in items) - timeout
    print(f"\nFIGURE C5 TimedOut at deadline + {late * 1000:.1f} ms (20 calls, timeout {timeout} s)")
    assert late < 2.0
    # After SIGCONT the service answers the 21 late calls: all discarded, none delivered.
    assert sync_proxy(conn).add(2, 3) == 5
    assert sync_proxy(conn).calls_received() >= 23
    assert len(events.snapshot()) == 20, "a late reply was delivered after its TimedOut"
    assert conn.state is not nsxpc.ConnectionState.INVALID


def _process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat ("T" once SIGSTOP has taken effect)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
