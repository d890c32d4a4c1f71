"""What the benchmark scripts share: the kitchen ``add`` service run in a child process,
and the "ready" handshake between a child and its parent."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import nsxpc
from protocols.kitchen import kitchen_interface

#: Seconds a child has to say "ready".
READY_TIMEOUT = 15.0


class Adder:
    """The exported object: only ``add`` is called (exported objects are duck-typed)."""

    def add(self, a: int, b: int, reply: Callable[[int], None]) -> None:
        reply(a + b)


class Exporting:
    """A listener delegate that exports ``make_object()`` under ``interface``."""

    def __init__(self, interface: nsxpc.Interface, make_object: Callable[[], object]) -> None:
        self.interface = interface
        self.make_object = make_object

    def should_accept_new_connection(self, listener: nsxpc.Listener, connection: nsxpc.Connection) -> bool:
        connection.exported_interface = self.interface
        connection.exported_object = self.make_object()
        connection.resume()
        return True


def serve_until_stdin_closes(listener: nsxpc.Listener, delegate: object) -> int:
    """In a child: serve ``listener``, say "ready", and stop when the parent closes our
    stdin (or dies)."""
    listener.delegate = delegate
    listener.resume()
    print("ready", flush=True)
    sys.stdin.read()
    listener.invalidate()
    return 0


def serve_adder(name: str) -> int:
    """The kitchen's ``add`` as a mach service, until the parent closes our stdin."""
    return serve_until_stdin_closes(nsxpc.Listener(mach_service_name=name), Exporting(kitchen_interface(), Adder))


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    """In the parent: wait (bounded) for the child's "ready" line."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        proc.kill()
        raise SystemExit(f"a benchmark child did not start within {READY_TIMEOUT:g} s (said {line!r})")


def time_ping_pong(sock: socket.socket, frame: bytes, n: int) -> list[int]:
    """``n`` round trips of the raw-socket floor, each timed on its own (nanoseconds):
    ``frame`` written with ``sendall`` and read back whole.

    Raises:
        ConnectionError: the echoing side went away.
    """
    samples = [0] * n
    clock = time.perf_counter_ns
    size = len(frame)
    for k in range(n):
        t0 = clock()
        sock.sendall(frame)
        got = sock.recv(64)
        while len(got) < size:
            more = sock.recv(64)
            if not more:
                raise ConnectionError("the floor's echoing side went away")
            got += more
        samples[k] = clock() - t0
    return samples


def time_adds(sync: Any, n: int) -> list[int]:
    """``n`` calls ``sync.add(i, 1)`` through a value-returning synchronous proxy, each
    timed on its own (nanoseconds), each reply checked."""
    samples = [0] * n
    clock = time.perf_counter_ns
    add = sync.add
    for i in range(n):
        t0 = clock()
        result = add(i, 1)
        samples[i] = clock() - t0
        if result != i + 1:
            raise SystemExit(f"add({i}, 1) returned {result!r}")
    return samples


def percentile_us(sorted_ns: list[int], q: float) -> float:
    """The q-th percentile (nearest rank) of sorted nanoseconds, in microseconds."""
    rank = max(0, min(len(sorted_ns) - 1, round(q / 100 * len(sorted_ns) + 0.5) - 1))
    return sorted_ns[rank] / 1000
