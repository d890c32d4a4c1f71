"""The job service: ``python examples/progress/service.py SERVICE_NAME``.

Each ``start_job`` runs on a worker thread of its own, so the connection's queue stays
free to receive ``cancel``: the exported object's methods run one at a time, in order,
on the connection's queue, and a long job there would hold up every later message.

NSXPC concepts shown:

- An argument annotated with an ``@nsxpc.protocol`` class (``sink: ProgressSink``)
  arrives as a proxy; calling it sends a message back to the client over the same
  connection. The client's object stays alive (in the client's exported-object
  table) while this side holds the proxy.
- A reply argument annotated with a protocol (``JobHandle``) sends an object of this
  process by proxy: the client's calls on it come back here.
- Calls on a proxy are thread-safe; the client receives them in the order they
  were sent, the reply included.

Prints ``READY <pid>``, then serves until stdin closes.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: nsxpc/, protocols/

import nsxpc
from protocols.progress import JobResult, Jobs


class Job:
    """The service side of one job: the object the client holds a ``JobHandle`` proxy of."""

    def __init__(self, steps: int, step_seconds: float, sink: Any) -> None:
        self.steps = steps
        self.step_seconds = step_seconds
        self.sink = sink
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._outcome: JobResult | None = None
        self._waiting: list[Any] = []

    def run(self) -> None:
        done = 0
        for _ in range(self.steps):
            if self.cancelled.wait(self.step_seconds):  # one step of "work", unless cancelled
                break
            done += 1
            self.sink.progress(done, self.steps)
        status = "cancelled" if self.cancelled.is_set() else "completed"
        self.sink = None  # drop the proxy: the client's sink is released
        with self._lock:
            self._outcome = JobResult(status=status, done=done, total=self.steps)
            waiting, self._waiting = self._waiting, []
        for reply in waiting:
            reply(self._outcome)

    # JobHandle
    def cancel(self, reply: Any) -> None:
        with self._lock:
            running = self._outcome is None
        self.cancelled.set()
        reply(running)

    def result(self, reply: Any) -> None:
        with self._lock:
            outcome = self._outcome
            if outcome is None:
                self._waiting.append(reply)  # answered when the job ends
                return
        reply(outcome)


class JobsService:
    def start_job(self, steps: int, step_seconds: float, sink: Any, reply: Any) -> None:
        job = Job(steps, step_seconds, sink)
        threading.Thread(target=job.run, name="job", daemon=True).start()
        reply(job)  # travels by proxy: the reply slot is annotated JobHandle


class Delegate:
    def should_accept_new_connection(self, listener: nsxpc.Listener, conn: nsxpc.Connection) -> bool:
        conn.exported_interface = nsxpc.Interface(Jobs)
        conn.exported_object = JobsService()
        conn.resume()
        return True


def main(argv: list[str]) -> int:
    listener = nsxpc.Listener(mach_service_name=argv[1])
    listener.delegate = Delegate()
    listener.resume()
    print(f"READY {os.getpid()}", flush=True)
    while sys.stdin.read(1):
        pass
    listener.invalidate()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
