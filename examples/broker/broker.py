"""The broker daemon: ``python examples/broker/broker.py [SERVICE_NAME]``.

A named service (``Listener(mach_service_name=...)``) that keeps a table of
``name -> nsxpc.ListenerEndpoint``. Providers register the endpoint of their own
anonymous listener; consumers look it up and then connect to the provider
directly: the broker is not in the conversation after the lookup.

NSXPC concepts shown:

- ``nsxpc.ListenerEndpoint`` is a plain value (``NSXPCListenerEndpoint``): it travels in
  an argument or a reply like a string, and whoever receives it can connect to that
  listener, as many times as it likes, from any process of the same user.
- The broker drops a provider's entry when the provider's connection is invalidated
  (the provider exited), so a stale endpoint is never handed out.

Prints ``READY <pid>``, then serves until stdin closes or Ctrl-C.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: nsxpc/, protocols/

import nsxpc
from protocols.broker import Broker

DEFAULT_NAME = "com.example.broker"


class BrokerService:
    """One instance for the whole daemon: the table is shared by every connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: dict[str, tuple[nsxpc.ListenerEndpoint, nsxpc.Connection]] = {}

    def register(self, name: str, endpoint: nsxpc.ListenerEndpoint, reply: Any) -> None:
        conn = nsxpc.Connection.current()
        assert conn is not None
        with self._lock:
            if name in self._table:
                reply(False)
                return
            self._table[name] = (endpoint, conn)
        print(f"broker: {name!r} registered by pid {conn.process_identifier}", flush=True)
        reply(True)

    def lookup(self, name: str, reply: Any) -> None:
        with self._lock:
            entry = self._table.get(name)
        reply(entry[0] if entry is not None else None)

    def forget(self, conn: nsxpc.Connection) -> None:
        with self._lock:
            for name in [n for n, (_, c) in self._table.items() if c is conn]:
                del self._table[name]
                print(f"broker: {name!r} withdrawn (its provider went away)", flush=True)


class Delegate:
    def __init__(self) -> None:
        self.service = BrokerService()

    def should_accept_new_connection(self, listener: nsxpc.Listener, conn: nsxpc.Connection) -> bool:
        conn.exported_interface = nsxpc.Interface(Broker)
        conn.exported_object = self.service
        conn.invalidation_handler = lambda: self.service.forget(conn)
        conn.resume()
        return True


def main(argv: list[str]) -> int:
    name = argv[1] if len(argv) > 1 else DEFAULT_NAME
    listener = nsxpc.Listener(mach_service_name=name)
    listener.delegate = Delegate()
    listener.resume()
    print(f"READY {os.getpid()}", flush=True)
    try:
        while sys.stdin.read(1):  # serve until stdin closes (or Ctrl-C)
            pass
    except KeyboardInterrupt:
        pass
    listener.invalidate()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
