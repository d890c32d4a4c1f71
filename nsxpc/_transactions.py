"""L4: transactions, what keeps a launched service from exiting when idle
(``xpc_transaction_begin`` / ``xpc_transaction_end``, ``os_transaction``).

In a launched service the runtime opens one while an exported method runs and one
per reply that is still owed (NSXPC M3/M4; elsewhere nothing reads the count, and
they are not opened: :data:`implicit`); user code opens its own with
:func:`transaction`.
A service with none open for ``NSXPCIdleExitSeconds`` exits (see _service).
The count is process-wide and cheap: one lock, one integer, one timestamp.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

__all__ = ["begin_implicit", "begin_transaction", "end_transaction", "idle_since", "open_transactions", "transaction"]

# A plain Lock for the count (a Condition's enter and exit are Python code, paid twice
# per message); the idle timer waits on its own Condition, notified on the way to zero.
_lock = threading.Lock()
_idle = threading.Condition(threading.Lock())
_open = 0
_idle_since = time.monotonic()
_watchers = 0  # threads in wait_for_change


#: Whether the runtime's own transactions (a message being handled, a reply owed) are
#: counted. Only a launched service, whose idle timer reads the count, needs them; it
#: turns this on before it accepts a connection (see _service). Elsewhere every message
#: is spared two trips through the lock.
implicit = False


def begin_implicit() -> bool:
    """Open the runtime's transaction for a message or an owed reply, if such are
    counted (:data:`implicit`). Returns whether one was opened: end it then, only."""
    if implicit:
        begin_transaction()
        return True
    return False


def begin_transaction() -> None:
    """Open a transaction: the service will not exit for idleness until it is ended."""
    global _open
    with _lock:
        _open += 1


def end_transaction() -> None:
    """Close a transaction opened with :func:`begin_transaction`.

    Raises:
        RuntimeError: no transaction is open.
    """
    global _open, _idle_since
    with _lock:
        if _open <= 0:
            raise RuntimeError("end_transaction() without a matching begin_transaction()")
        _open -= 1
        now_idle = _open == 0
        if now_idle:
            _idle_since = time.monotonic()
    if now_idle and _watchers:
        # Only a launched service's idle timer waits here; everywhere else the
        # Condition (Python code on every reply) is skipped.
        with _idle:
            _idle.notify_all()


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """A context manager holding a transaction for its body (``os_transaction``)."""
    begin_transaction()
    try:
        yield
    finally:
        end_transaction()


def open_transactions() -> int:
    """How many transactions are open now."""
    return _open


def idle_since() -> float | None:
    """The ``time.monotonic()`` at which the last transaction closed, or None while one is open."""
    with _lock:
        return None if _open else _idle_since


def wait_for_change(timeout: float, while_busy: bool = False) -> None:
    """Block for the idle timer: until ``timeout`` seconds pass, or, with ``while_busy``,
    until no transaction is open (at once if none is).

    Only a busy wait is woken by :func:`end_transaction`. A timer counting down an idle
    period is not: it reads :func:`idle_since` again when the countdown ends, so a
    service handling messages does not wake that thread on every reply."""
    global _watchers
    with _idle:
        if not while_busy:
            _idle.wait(timeout)
            return
        _watchers += 1
        try:
            if _open == 0:
                return
            _idle.wait(timeout)
        finally:
            _watchers -= 1
