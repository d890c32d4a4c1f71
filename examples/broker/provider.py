"""Process A: ``python examples/broker/provider.py BROKER_NAME PROVIDER_NAME``.

Serves ``Greeter`` on an anonymous listener (``Listener.anonymous()``: no name in
the runtime directory that anyone could guess, and a random token in its endpoint),
and registers the listener's endpoint with the broker under ``PROVIDER_NAME``.

Prints ``READY <pid>`` once registered, then serves until stdin closes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nsxpc
from protocols.broker import Broker, Greeter

TIMEOUT = 5.0


class GreeterService:
    def greet(self, who: str, reply: Any) -> None:
        reply(f"hello {who}, from the provider", os.getpid())


class Delegate:
    def should_accept_new_connection(self, listener: nsxpc.Listener, conn: nsxpc.Connection) -> bool:
        conn.exported_interface = nsxpc.Interface(Greeter)
        conn.exported_object = GreeterService()
        conn.resume()
        return True


def main(argv: list[str]) -> int:
    broker_name, provider_name = argv[1], argv[2]
    listener = nsxpc.Listener.anonymous()
    listener.delegate = Delegate()
    listener.resume()

    broker = nsxpc.Connection(mach_service_name=broker_name)
    broker.remote_object_interface = nsxpc.Interface(Broker)
    broker.resume()

    def failed(err: Exception) -> None:
        raise err

    registered = broker.synchronous_remote_object_proxy_with_error_handler(failed, timeout=TIMEOUT).register(
        provider_name, listener.endpoint
    )
    if not registered:
        print(f"provider: the name {provider_name!r} is taken", file=sys.stderr)
        return 1
    print(f"READY {os.getpid()}", flush=True)
    # The broker connection stays open: when this process exits, the broker sees it
    # invalidated and withdraws the name.
    while sys.stdin.read(1):
        pass
    broker.invalidate()
    listener.invalidate()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
