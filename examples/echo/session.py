"""The echo service with XPCSession / XPCListener: dict messages, no protocol.

python examples/echo/session.py
"""

from __future__ import annotations

import os
import sys
import threading

import attrs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _run import ready, run

import nsxpc

NAME = "com.example.echo.session"


@nsxpc.secure_coding
@attrs.frozen
class EchoReply:
    text: str
    pid: int


def on_message(message: nsxpc.XPCReceivedMessage) -> object:
    request = message.decode()  # plain values: a dict
    return {"text": request["text"], "pid": os.getpid()}  # returned: the reply


def serve() -> None:
    nsxpc.XPCListener(mach_service=NAME, incoming_session_handler=lambda request: request.accept(on_message))
    ready()
    threading.Event().wait()


def client() -> None:
    session = nsxpc.XPCSession(mach_service=NAME, cancellation_handler=lambda err: print("session: cancelled:", err))
    reply = session.send_sync({"text": "hello"}).decode(as_=EchoReply)  # checked against the annotations
    print(f"session: {reply.text!r} from pid {reply.pid}")
    done = threading.Event()
    session.send({"text": "async"}, reply_handler=lambda r: (print("session: reply", r.decode()), done.set()))
    done.wait(10)
    session.cancel(reason="done")


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["serve"] else run(__file__, client)
