#!PYTHON
"""A test service bundle's executable (the fixture writes the shebang): the probe of
``probe_service.py``, with behaviour switched by flag files the test creates.

From the bundle's EnvironmentVariables:
- PROBE_ROOT: the repository root, put on sys.path (for tests.helpers.probe).
- PROBE_RECORD: a file to which this instance appends its pid (counts launches).
- PROBE_FLAGS: a folder of flag files, read when they matter:
  - ``crash-at-start``: exit at once with status 1, before serving (a crash loop);
  - ``die-in-pid``: ``pid()`` SIGKILLs this process while the call is outstanding;
  - ``hold-replies``: ``environment()`` keeps its reply block and never calls it
    (the call stays outstanding for as long as the process lives).

``begin()`` / ``end()`` hold ``nsxpc.transaction()`` (the public context manager)
on a thread of their own from one call to the other.
"""

import os
import signal
import sys
import threading
from typing import Any

sys.path.insert(0, os.environ["PROBE_ROOT"])

from tests.helpers.launch_record import record_launch

record_launch()

flags = os.environ["PROBE_FLAGS"]
if os.path.exists(os.path.join(flags, "crash-at-start")):
    print("crash-at-start: exiting with status 1", file=sys.stderr)
    sys.exit(1)

import nsxpc  # noqa: E402
from tests.helpers.probe import ProbeDelegate, ProbeImpl  # noqa: E402


class FlagProbe(ProbeImpl):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.held: list[Any] = []

    def pid(self, reply: Any) -> None:
        if os.path.exists(os.path.join(flags, "die-in-pid")):
            os.kill(os.getpid(), signal.SIGKILL)
        reply(os.getpid())

    def environment(self, reply: Any) -> None:
        if os.path.exists(os.path.join(flags, "hold-replies")):
            self.held.append(reply)  # kept alive: no ReplyInvalid, just no reply
            return
        reply(dict(os.environ))

    def begin(self, reply: Any) -> None:
        entered = threading.Event()
        self.release.clear()

        def hold() -> None:
            with nsxpc.transaction():
                entered.set()
                self.release.wait()

        threading.Thread(target=hold, name="holds a transaction", daemon=True).start()
        entered.wait(10)
        reply()

    def end(self, reply: Any) -> None:
        self.release.set()
        reply()


delegate = ProbeDelegate()
delegate.impl = FlagProbe()
nsxpc.main(delegate)
