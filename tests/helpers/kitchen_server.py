"""Serve Apple's kitchen as a mach service: ``kitchen_server.py NAME [MODE]``.

MODE decides how ``add`` (and the listener) behave:

- ``normal``: everything answers.
- ``crash``: ``add`` kills the process mid-call with ``os._exit(7)``.
- ``drop``: ``add`` drops its reply block uncalled.
- ``raise``: ``add`` raises ``ValueError("the oven is cold")``.
- ``hang``: ``add`` keeps its reply block and never calls it.
- ``refuse``: the delegate refuses every connection.
- ``nodelegate``: the listener has no delegate.

Prints ``READY <pid>`` once the listener is resumed; exits when stdin closes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nsxpc
from protocols.kitchen import Cookie, Rind, Watermelon, kitchen_interface
from tests.helpers._child import ready, serve_until_parent_goes

MODE = sys.argv[2] if len(sys.argv) > 2 else "normal"
_held: list[object] = []


class Kitchen:
    def __init__(self) -> None:
        self.eaten: list[Cookie] = []

    def feed_me_a_cookie(self, cookie: Cookie) -> None:
        self.eaten.append(cookie)

    def feed_me_a_watermelon(self, watermelon: Watermelon, reply: Any) -> None:
        reply(Rind(thickness=watermelon.weight / 10, seeds=[7, 7]))

    def feed_me_fries(self, fries: list, reply: Any) -> None:  # type: ignore[type-arg]
        reply(len(fries), "yum")

    def add(self, a: int, b: int, reply: Any) -> None:
        if MODE == "crash":
            os._exit(7)
        elif MODE == "drop":
            del reply
        elif MODE == "raise":
            raise ValueError("the oven is cold")
        elif MODE == "hang":
            _held.append(reply)
        else:
            reply(a + b)

    def cookies_eaten(self, reply: Any) -> None:
        reply(list(self.eaten))


class Delegate:
    def should_accept_new_connection(self, listener: Any, conn: nsxpc.Connection) -> bool:
        if MODE == "refuse":
            return False
        conn.exported_interface = kitchen_interface()
        conn.exported_object = Kitchen()
        conn.resume()
        return True


def main() -> None:
    listener = nsxpc.Listener(mach_service_name=sys.argv[1])
    if MODE != "nodelegate":
        listener.delegate = Delegate()
    listener.resume()
    ready()
    serve_until_parent_goes()


if __name__ == "__main__":
    main()
