"""The echo service with the C-style API (nsxpc.xpc): xpc_connection_* for dictionaries.

python examples/echo/cstyle.py
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _run import ready, run

from nsxpc import xpc

NAME = "com.example.echo.cstyle"


def serve() -> None:
    listener = xpc.connection_create_mach_service(NAME, xpc.CONNECTION_MACH_SERVICE_LISTENER)

    def on_peer(peer: Any) -> None:
        if not isinstance(peer, xpc.Connection):
            return  # an error value for the listener itself

        def on_event(event: Any) -> None:
            if isinstance(event, dict):
                reply = xpc.dictionary_create_reply(event)
                if reply is not None:
                    reply["text"] = event["text"]
                    reply["pid"] = os.getpid()
                    xpc.connection_send_message(peer, reply)

        xpc.connection_set_event_handler(peer, on_event)
        xpc.connection_resume(peer)

    xpc.connection_set_event_handler(listener, on_peer)
    xpc.connection_resume(listener)
    ready()
    threading.Event().wait()


def client() -> None:
    conn = xpc.connection_create_mach_service(NAME, 0)
    xpc.connection_set_event_handler(conn, lambda event: print("cstyle: event", event))
    xpc.connection_resume(conn)  # created suspended
    reply = xpc.connection_send_message_with_reply_sync(conn, {"text": "hello"})
    if reply is xpc.ERROR_CONNECTION_INVALID or reply is xpc.ERROR_CONNECTION_INTERRUPTED:
        print("cstyle: failed:", reply)
    else:
        print(f"cstyle: {reply['text']!r} from pid {reply['pid']}")
    done = threading.Event()
    xpc.connection_send_message_with_reply(conn, {"text": "async"}, lambda r: (print("cstyle: reply", r), done.set()))
    done.wait(10)
    xpc.connection_cancel(conn)  # the event handler then sees ERROR_CONNECTION_INVALID


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["serve"] else run(__file__, client)
