"""L4: one process-wide timer thread for call deadlines (``timeout=``).

A heap of deadlines served by a single daemon thread, started on first use,
so that a thousand calls with timeouts cost one thread, not a thousand.
Callbacks must be quick: they only hand work to a connection's queue.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

__all__ = ["Timer", "schedule"]


class Timer:
    """A scheduled callback; :meth:`cancel` stops it if it has not fired."""

    __slots__ = ("cancelled", "deadline", "fn")

    def __init__(self, deadline: float, fn: Callable[[], None]) -> None:
        self.deadline = deadline
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


_cond = threading.Condition(threading.Lock())
_heap: list[tuple[float, int, Timer]] = []
_counter = itertools.count()
_thread: threading.Thread | None = None


def schedule(delay: float, fn: Callable[[], None]) -> Timer:
    """Run ``fn`` on the timer thread after ``delay`` seconds."""
    global _thread
    timer = Timer(time.monotonic() + max(0.0, delay), fn)
    with _cond:
        heapq.heappush(_heap, (timer.deadline, next(_counter), timer))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="nsxpc-timers", daemon=True)
            _thread.start()
        _cond.notify()
    return timer


def _run() -> None:
    while True:
        with _cond:
            while True:
                now = time.monotonic()
                while _heap and _heap[0][2].cancelled:
                    heapq.heappop(_heap)
                if _heap and _heap[0][0] <= now:
                    timer = heapq.heappop(_heap)[2]
                    break
                _cond.wait(None if not _heap else _heap[0][0] - now)
        try:
            timer.fn()
        except Exception:  # a timer callback must never kill the timer thread
            import logging

            logging.getLogger("nsxpc").exception("timer callback failed")
