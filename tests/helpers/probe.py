"""The protocol of the test services launched on demand (tests/integration/test_services.py).

``ProbeImpl`` is served both by the bundle executable built from
``probe_service.py`` and by ``activated_daemon.py`` (socket activation).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import nsxpc
from nsxpc import _transactions


@nsxpc.protocol
class Probe(Protocol):
    def pid(self, reply: Callable[[int], None]) -> None: ...
    def environment(self, reply: Callable[[dict[str, str]], None]) -> None: ...
    def say(self, out: str, err: str, reply: Callable[[], None]) -> None: ...
    def begin(self, reply: Callable[[], None]) -> None: ...
    def end(self, reply: Callable[[], None]) -> None: ...
    def connections(self, reply: Callable[[int], None]) -> None: ...
    def grandchild(self, reply: Callable[[int], None]) -> None: ...
    def helper_fds(self, reply: Callable[[list[str]], None]) -> None: ...
    def main_thread(self, reply: Callable[[list[str]], None]) -> None: ...
    def crash(self, status: int) -> None: ...


def probe_interface() -> nsxpc.Interface:
    return nsxpc.Interface(Probe)


class ProbeImpl:
    def __init__(self) -> None:
        self.accepted = 0

    def pid(self, reply: Any) -> None:
        reply(os.getpid())

    def environment(self, reply: Any) -> None:
        reply(dict(os.environ))

    def say(self, out: str, err: str, reply: Any) -> None:
        print(out)
        print(err, file=sys.stderr)
        reply()

    def begin(self, reply: Any) -> None:
        _transactions.begin_transaction()
        reply()

    def end(self, reply: Any) -> None:
        _transactions.end_transaction()
        reply()

    def connections(self, reply: Any) -> None:
        reply(self.accepted)

    def grandchild(self, reply: Any) -> None:
        # A grandchild that holds every fd of the service (listening socket, connections)
        # and outlives it: the service's death must still be seen, through its pidfd.
        pid = os.fork()
        if pid == 0:
            try:
                time.sleep(30)  # the test kills us long before
            finally:
                os._exit(0)
        reply(pid)

    def helper_fds(self, reply: Any) -> None:
        # close_fds=False: only close-on-exec keeps our fds out of the helper.
        out = subprocess.run(["ls", "-l", "/proc/self/fd"], capture_output=True, text=True, close_fds=False)
        reply([line for line in out.stdout.splitlines() if "->" in line])

    def main_thread(self, reply: Any) -> None:
        frame = sys._current_frames().get(threading.main_thread().ident or 0)
        names = []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        reply(names)

    def crash(self, status: int) -> None:
        os._exit(status)


class ProbeDelegate:
    def __init__(self) -> None:
        self.impl = ProbeImpl()

    def should_accept_new_connection(self, listener: nsxpc.Listener, conn: nsxpc.Connection) -> bool:
        self.impl.accepted += 1
        conn.exported_interface = probe_interface()
        conn.exported_object = self.impl
        conn.resume()
        return True
