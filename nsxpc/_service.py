"""L5: the service side of a launched service: ``nsxpc.main(delegate)`` (``xpc_main``).

``main`` adopts the listener the launcher prepared (``Listener.service()``),
gives it the delegate, resumes it, then runs forever on the bundle's
``RunLoopType``:

- ``dispatch_main`` (default): the main thread just waits; connections run on
  nsxpc's threads, as they do everywhere else.
- ``asyncio``: the main thread runs an asyncio event loop forever; the service
  listener is made with ``loop=`` that loop, so every connection it accepts
  delivers its handlers and exported calls (``async def`` methods included) on
  the loop (docs/ASYNCIO.md).

Idle exit (launchd's on-demand model, M1/M3): when no transaction has been open
(``nsxpc.transaction()``, and the ones the runtime holds while a message is
handled or a reply is owed) for ``NSXPCIdleExitSeconds``, the process exits
with status 0. Clients see an interruption, and their next message launches a
fresh instance. As with XPC, a message arriving just as the service decides to
exit meets the exit; the client gets ``ConnectionInterrupted`` for it.

Invariants:

- Exit happens on the main thread: the ``atexit`` handlers run, stdio is
  flushed, then ``os._exit(0)``. No other thread is joined, so a stuck
  non-daemon thread cannot keep an idle service alive.
- SIGTERM asks for the same orderly exit (launchd and systemd stop jobs with it).
- stdout and stderr are line-buffered, so each line reaches the client's log as
  it is written rather than when a buffer fills.
- Importing this module imports nothing heavy; asyncio is loaded only for
  ``RunLoopType`` ``asyncio``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, NoReturn

from . import _transactions
from ._listener import Listener
from ._log import log

# Info.plist's default (nsxpc._bundle), repeated so that importing nsxpc need not load plistlib.
_DEFAULT_IDLE_EXIT_SECONDS = 30.0

__all__ = ["main"]


def main(delegate: Any = None, *, incoming_session_handler: Any = None) -> NoReturn:
    """Run this process as a launched service, forever (``xpc_main`` /
    ``[[NSXPCListener serviceListener] resume]``).

    Call it from the main thread of the bundle's executable. The delegate's
    ``should_accept_new_connection(listener, connection)`` configures each new
    connection, resumes it and returns True. Without a delegate every connection
    is refused. The process exits with status 0 after ``NSXPCIdleExitSeconds``
    with no open transaction, or on SIGTERM.

    With ``incoming_session_handler`` instead, the service serves XPC message
    sessions (``XPCListener``): the handler gets each ``request`` and returns
    ``request.accept(handler)`` or ``request.reject(reason=...)``.

    Raises:
        XPCError: the process was not launched as a service (see ``Listener.service()``).
        TypeError: the delegate has no ``should_accept_new_connection`` method, or
            both a delegate and an incoming_session_handler were given.
    """
    run_loop = os.environ.get("NSXPC_RUN_LOOP_TYPE", "dispatch_main")
    loop: Any = None
    if run_loop == "asyncio":
        import asyncio

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    listener = Listener.service(loop=loop)
    if incoming_session_handler is not None:
        if delegate is not None:
            raise TypeError("nsxpc.main() takes a delegate or an incoming_session_handler, not both")
        from ._session import serve_sessions

        serve_sessions(listener, incoming_session_handler)
    else:
        listener.delegate = delegate
    if listener.delegate is None:
        log.warning("nsxpc: nsxpc.main() was given no delegate; every connection will be refused")
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True)
            except (ValueError, OSError):
                pass
    exit_requested = threading.Event()
    why: list[str] = []
    idle = _idle_seconds()

    def request_exit(reason: str) -> None:
        why.append(reason)
        exit_requested.set()
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: request_exit("SIGTERM"))
    _transactions.implicit = True  # messages handled and replies owed keep the service up (M3/M4)
    threading.Thread(
        target=_watch_idle,
        args=(idle, lambda: request_exit(f"idle for {idle:g} s")),
        name="nsxpc idle exit",
        daemon=True,
    ).start()
    if loop is not None:
        loop.call_soon(listener.resume)  # the first message finds the loop running
        while not exit_requested.is_set():
            loop.run_forever()
    else:
        listener.resume()
        while not exit_requested.wait():
            pass
    log.info("nsxpc: the service %s is exiting: %s", listener.service_name, why[0] if why else "asked to")
    _exit(0)


def _idle_seconds() -> float:
    text = os.environ.get("NSXPC_IDLE_EXIT_SECONDS", "")
    try:
        value = float(text) if text else _DEFAULT_IDLE_EXIT_SECONDS
    except ValueError:
        log.warning("nsxpc: ignoring NSXPC_IDLE_EXIT_SECONDS=%r (not a number)", text)
        return _DEFAULT_IDLE_EXIT_SECONDS
    return value if value > 0 else _DEFAULT_IDLE_EXIT_SECONDS


def _watch_idle(seconds: float, on_idle: Any) -> None:
    """Call ``on_idle()`` once no transaction has been open for ``seconds``."""
    while True:
        since = _transactions.idle_since()
        if since is None:
            _transactions.wait_for_change(seconds, while_busy=True)  # wake when the last one ends
            continue
        left = since + seconds - time.monotonic()
        if left <= 0:
            on_idle()
            return
        _transactions.wait_for_change(left)


def _exit(status: int) -> NoReturn:
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)
