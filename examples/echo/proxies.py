"""The echo service with NSXPC proxies: a typed protocol, checked on both sides.

python examples/echo/proxies.py
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Protocol

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _run import ready, run

import nsxpc

NAME = "com.example.echo.proxies"


@nsxpc.protocol
class Echo(Protocol):
    def echo(self, text: str, reply: Callable[[str, int], None]) -> None: ...


class EchoService:
    def echo(self, text: str, reply: Callable[[str, int], None]) -> None:
        reply(text, os.getpid())


class Delegate:
    def should_accept_new_connection(self, listener: nsxpc.Listener, connection: nsxpc.Connection) -> bool:
        connection.exported_interface = nsxpc.Interface(Echo)
        connection.exported_object = EchoService()
        connection.resume()
        return True


def serve() -> None:
    listener = nsxpc.Listener(mach_service_name=NAME)
    listener.delegate = Delegate()
    listener.resume()
    ready()
    threading.Event().wait()


def client() -> None:
    conn = nsxpc.Connection(mach_service_name=NAME)
    conn.remote_object_interface = nsxpc.Interface(Echo)
    conn.resume()
    sync = conn.synchronous_remote_object_proxy_with_error_handler(print, timeout=10)
    text, pid = sync.echo("hello")
    print(f"proxies: {text!r} from pid {pid}")
    try:
        sync.echo(42)  # refused before anything is sent: the protocol says str
    except nsxpc.EncodingError as err:
        print("proxies: refused locally:", err)
    conn.invalidate()


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["serve"] else run(__file__, client)
