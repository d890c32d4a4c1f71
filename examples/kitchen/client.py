"""A client of the kitchen service: the app half of Apple's kitchen example.

Start ``service.py`` first, then, from the repository root::

    python examples/kitchen/client.py [com.example.kitchen]

NSXPC concepts shown:

- ``nsxpc.Connection(mach_service_name=...)`` is
  ``-[NSXPCConnection initWithMachServiceName:options:]``. It starts suspended: set
  ``remote_object_interface`` and the handlers, then ``resume()``. It connects lazily,
  on the first message.
- The interruption handler runs when the service goes away (it crashed, was killed,
  or restarted); the connection stays valid and the next message reconnects. The
  invalidation handler runs once, last of all, when the connection is closed for good.
- ``synchronous_remote_object_proxy_with_error_handler`` makes a proxy whose calls wait
  for the reply. With the ``reply`` block omitted a call returns the reply's value (a
  tuple when the reply has several arguments) and raises the ``nsxpc.XPCError``.
- ``remote_object_proxy_with_error_handler`` makes an asynchronous proxy: the call
  returns at once, and exactly one of the reply block or the error handler runs later,
  on the connection's queue.
- A one-way method (no reply block) such as ``feed_me_a_cookie`` is just sent.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: nsxpc/, protocols/

import nsxpc
from protocols.kitchen import Cookie, FrenchFry, Watermelon, kitchen_interface

DEFAULT_NAME = "com.example.kitchen"
TIMEOUT = 5.0  # seconds: every wait in the examples is bounded


def connect(
    name: str,
    on_interrupted: Callable[[], object] | None = None,
    on_invalidated: Callable[[], object] | None = None,
) -> nsxpc.Connection:
    """A resumed connection to the kitchen service named ``name``, with its handlers."""
    connection = nsxpc.Connection(mach_service_name=name)
    connection.remote_object_interface = kitchen_interface()
    connection.interruption_handler = on_interrupted
    connection.invalidation_handler = on_invalidated
    connection.resume()
    return connection


def main(argv: list[str]) -> int:
    name = argv[1] if len(argv) > 1 else os.environ.get("KITCHEN_SERVICE_NAME", DEFAULT_NAME)
    invalidated = threading.Event()
    connection = connect(
        name,
        on_interrupted=lambda: print("[client] interrupted: the service went away; the next call reconnects"),
        on_invalidated=invalidated.set,
    )
    sync = connection.synchronous_remote_object_proxy_with_error_handler(
        lambda error: print(f"[client] error: {error}"), timeout=TIMEOUT
    )
    try:
        print(f"[client] add(2, 3) -> {sync.add(2, 3)}")
    except nsxpc.XPCError as exc:
        print(f"[client] cannot reach {name}: {exc} (is service.py running?)")
        return 1
    print(f"[client] connected to pid {connection.process_identifier}")

    sync.feed_me_a_cookie(Cookie("chocolate chip", 12))
    print(f"[client] feed_me_a_watermelon -> {sync.feed_me_a_watermelon(Watermelon(weight=4.2))!r}")
    fries = [FrenchFry(length=7.5), FrenchFry(length=6.0, salted=False)]
    print(f"[client] feed_me_fries -> {sync.feed_me_fries(fries)!r}")
    print(f"[client] cookies_eaten -> {sync.cookies_eaten()!r}")

    # The asynchronous form: exactly one of the reply block or the error handler runs.
    done = threading.Event()
    outcome: list[object] = []

    def on_reply(total: int) -> None:
        outcome.append(total)
        done.set()

    def on_error(error: Exception) -> None:
        outcome.append(error)
        done.set()

    proxy = connection.remote_object_proxy_with_error_handler(on_error, timeout=TIMEOUT)
    proxy.add(40, 2, reply=on_reply)
    if done.wait(TIMEOUT):
        print(f"[client] add(40, 2) through the error-handler proxy -> {outcome[0]!r}")

    connection.invalidate()
    if invalidated.wait(TIMEOUT):
        print("[client] invalidated: the connection is closed for good")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
