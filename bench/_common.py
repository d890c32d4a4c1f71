"""What the benchmark scripts share: the kitchen ``add`` service run in a child process,
and the "ready" handshake between a child and its parent."""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Callable

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
