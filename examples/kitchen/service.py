"""The kitchen as a named (mach) service: the server half of Apple's kitchen example.

Run it from the repository root, then run ``client.py`` in another terminal::

    python examples/kitchen/service.py [com.example.kitchen]

NSXPC concepts shown:

- ``nsxpc.Listener(mach_service_name=...)`` is ``-[NSXPCListener initWithMachServiceName:]``:
  it binds ``<runtime dir>/<name>.sock`` and accepts connections from clients that
  made ``nsxpc.Connection(mach_service_name=...)`` with the same name.
- The listener's delegate (``NSXPCListenerDelegate``) is asked about every new
  connection. It configures it (the exported interface and object), resumes it and
  returns True; returning False would refuse the client.
- The exported object is duck-typed: ``KitchenService`` does not subclass the
  ``Kitchen`` protocol, it only has its methods. Each method that has a ``reply``
  block must call it exactly once; it may do so later, from another thread.
- The connection decodes each argument against its slot's allowlist before the
  method runs: a class the interface does not allow never reaches this code.

The service name comes from the first argument, else ``$KITCHEN_SERVICE_NAME``,
else ``com.example.kitchen``. It prints a ready line once it accepts connections
and runs until SIGTERM or SIGINT (Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: nsxpc/, protocols/

import nsxpc
from protocols.kitchen import Cookie, FrenchFry, Rind, Watermelon, kitchen_interface

DEFAULT_NAME = "com.example.kitchen"
#: A watermelon at least this heavy takes the kitchen a long time (the demo kills the
#: service while it is still eating one, to show an interruption).
HEAVY_KG = 100.0
SLOW_SECONDS = 30.0


def say(text: str) -> None:
    print(f"[service] {text}", flush=True)


class KitchenService:
    """The exported object: one per client connection, so each client has its own plate."""

    def __init__(self) -> None:
        self.eaten: list[Cookie] = []

    def feed_me_a_cookie(self, cookie: Cookie) -> None:
        # No reply block: a one-way message, the client does not wait for it.
        self.eaten.append(cookie)
        say(f"feed_me_a_cookie({cookie!r}): yum")

    def feed_me_a_watermelon(self, watermelon: Watermelon, reply: Callable[[Rind], None]) -> None:
        rind = Rind(thickness=round(watermelon.weight / 10, 2), seeds=[] if watermelon.seedless else [7, 11, 13])
        if watermelon.weight >= HEAVY_KG:
            # Reply later, from another thread: the connection stays free meanwhile.
            say(f"feed_me_a_watermelon({watermelon!r}): a big one, this will take {SLOW_SECONDS:g} s")
            timer = threading.Timer(SLOW_SECONDS, reply, args=(rind,))
            timer.daemon = True
            timer.start()
            return
        say(f"feed_me_a_watermelon({watermelon!r}) -> {rind!r}")
        reply(rind)

    def feed_me_fries(self, fries: list[FrenchFry], reply: Callable[[int, str], None]) -> None:
        say(f"feed_me_fries({len(fries)} fries) -> ({len(fries)}, 'more ketchup')")
        reply(len(fries), "more ketchup")

    def add(self, a: int, b: int, reply: Callable[[int], None]) -> None:
        say(f"add({a}, {b}) -> {a + b}")
        reply(a + b)

    def cookies_eaten(self, reply: Callable[[list[Cookie]], None]) -> None:
        say(f"cookies_eaten() -> {self.eaten!r}")
        reply(list(self.eaten))


class KitchenDelegate:
    """The listener's delegate (``listener:shouldAcceptNewConnection:``)."""

    def should_accept_new_connection(self, listener: nsxpc.Listener, connection: nsxpc.Connection) -> bool:
        connection.exported_interface = kitchen_interface()
        connection.exported_object = KitchenService()
        connection.resume()
        say(f"accepted a connection from pid {connection.process_identifier}")
        return True


def main(argv: list[str]) -> int:
    name = argv[1] if len(argv) > 1 else os.environ.get("KITCHEN_SERVICE_NAME", DEFAULT_NAME)
    # The library logs refused messages on the "nsxpc" logger: show them with ours.
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="[service] %(levelname)s %(message)s")

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    listener = nsxpc.Listener(mach_service_name=name)
    listener.delegate = KitchenDelegate()
    try:
        listener.resume()  # binds the socket; fails if a live process already serves the name
    except nsxpc.XPCError as exc:
        say(f"cannot start: {exc}")
        return 1
    say(f"ready: serving {name} (pid {os.getpid()})")
    while not stop.wait(3600):
        pass
    listener.invalidate()
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
