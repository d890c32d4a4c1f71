"""A child process serving XPC messages, for tests/integration/test_session.py and test_xpc_c.py.

Usage: session_server.py MODE NAME
- MODE ``session``: an ``nsxpc.XPCListener``; ``cstyle``: an ``nsxpc.xpc`` listener.
- NAME: a mach service name, or ``anon`` for an anonymous listener (its endpoint is
  printed after READY as ``nsxpc-endpoint:...``).

Messages (dicts) it understands, both modes:
- ``{"op": "echo", ...}``: replies with the same dict plus ``"pid"`` and ``"sync"``.
- ``{"op": "add", "a": x, "b": y}``: replies ``{"sum": x + y}``.
- ``{"op": "die"}``: the process exits at once (status 3) without replying.
- ``{"op": "call_back"}`` (session mode): sends ``{"from": "server"}`` to the client
  session, then replies ``{"ok": True}``.
- ``{"op": "reject_next", "reason": r}``: the next session request is rejected with r.
- anything else: replies ``{"unknown": op}``.
A session cancelled on the server prints ``CANCELLED <code> <message>`` on stdout.
"""

from __future__ import annotations

import os
import sys
import threading

import nsxpc
from nsxpc import xpc
from tests.helpers._child import ready, serve_until_parent_goes

state: dict[str, object] = {"reject": None}


def answer(d: dict[str, object], sync: bool) -> dict[str, object] | None:
    op = d.get("op")
    if op == "echo":
        return {**d, "pid": os.getpid(), "sync": sync}
    if op == "add":
        return {"sum": d["a"] + d["b"]}  # type: ignore[operator]
    if op == "die":
        sys.stdout.flush()
        os._exit(3)
    if op == "reject_next":
        state["reject"] = d.get("reason", "")
        return {"ok": True}
    return {"unknown": op}


def serve_sessions(name: str | None) -> nsxpc.XPCListener:
    def on_cancel(err: nsxpc.XPCRichError) -> None:
        print(f"CANCELLED {int(err.code)} {err.message}", flush=True)

    def on_request(request: object) -> object:
        reason = state["reject"]
        if reason is not None:
            state["reject"] = None
            return request.reject(reason=str(reason))  # type: ignore[attr-defined]
        holder: list[nsxpc.XPCSession] = []

        def on_message(message: nsxpc.XPCReceivedMessage) -> object:
            d = message.decode()
            if d.get("op") == "call_back":
                holder[0].send({"from": "server"})
                return {"ok": True}
            result = answer(d, message.is_sync)
            return result if message.expects_reply else None

        session = request.accept(on_message, cancellation_handler=on_cancel)  # type: ignore[attr-defined]
        holder.append(session)
        return session

    return nsxpc.XPCListener(mach_service=name, incoming_session_handler=on_request)


def serve_cstyle(name: str | None, endpoint_out: list[str]) -> xpc.Connection:
    if name is None:
        raise SystemExit("cstyle mode needs a name")
    listener = xpc.connection_create_mach_service(name, xpc.CONNECTION_MACH_SERVICE_LISTENER)

    def on_peer(peer: object) -> None:
        if not isinstance(peer, xpc.Connection):
            return

        def on_event(event: object) -> None:
            if isinstance(event, dict):
                reply = xpc.dictionary_create_reply(event)
                result = answer(event, False)
                if reply is not None and result is not None:
                    reply.update(result)
                    xpc.connection_send_message(peer, reply)

        xpc.connection_set_event_handler(peer, on_event)
        xpc.connection_resume(peer)

    xpc.connection_set_event_handler(listener, on_peer)
    xpc.connection_resume(listener)
    return listener


def main() -> None:
    mode, name_arg = sys.argv[1], sys.argv[2]
    name = None if name_arg == "anon" else name_arg
    keep: list[object] = []
    if mode == "session":
        listener = serve_sessions(name)
        keep.append(listener)
        ready(str(listener.endpoint) if name is None else "")
    else:
        keep.append(serve_cstyle(name, []))
        ready()
    serve_until_parent_goes()


if __name__ == "__main__":
    threading.current_thread().name = "session_server"
    main()
