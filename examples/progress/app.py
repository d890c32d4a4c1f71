"""Progress reporting and cancellation through objects passed by proxy:
``python examples/progress/app.py``.

Starts the job service (``service.py``) in a private runtime directory, then:

1. runs a short job to completion, printing its progress;
2. starts a long job, passing a progress sink by proxy; the reply carries a
   ``JobHandle`` (an object of the service, by proxy); after a few steps the client
   cancels through it, and the job ends with a cancelled result.

Every wait is bounded; the service is stopped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: nsxpc/, protocols/

import nsxpc
from protocols.progress import JobResult, Jobs

HERE = Path(__file__).resolve().parent

TIMEOUT = 10.0
NAME = "com.example.jobs"


class Sink:
    """The client's progress sink: the service calls it by proxy, on this connection's queue."""

    def __init__(self, label: str, cancel_after: int | None = None) -> None:
        self.label = label
        self.cancel_after = cancel_after
        self.reached = threading.Event()

    def progress(self, done: int, total: int) -> None:
        print(f"[{self.label}] progress {done}/{total}", flush=True)
        if self.cancel_after is not None and done >= self.cancel_after:
            self.reached.set()


def failed(err: Exception) -> None:
    raise err  # the value-returning form raises instead; never called


def run(conn: nsxpc.Connection) -> None:
    jobs = conn.synchronous_remote_object_proxy_with_error_handler(failed, timeout=TIMEOUT)

    # 1. A short job, to completion.
    handle = jobs.start_job(3, 0.05, Sink("short"))
    result: JobResult = handle.synchronous_remote_object_proxy_with_error_handler(failed, timeout=TIMEOUT).result()
    print(f"[short] job ended: {result.status} after {result.done}/{result.total} steps")

    # 2. A long job, cancelled from here through the handle it replied with.
    sink = Sink("long", cancel_after=3)
    handle = jobs.start_job(1000, 0.05, sink)
    print(f"[long] started; the reply carried {handle!r}")
    if not sink.reached.wait(TIMEOUT):
        raise SystemExit("no progress from the service")
    control: Any = handle.synchronous_remote_object_proxy_with_error_handler(failed, timeout=TIMEOUT)
    print("[long] cancelling", flush=True)
    print(f"[long] cancel accepted: {control.cancel()}")
    result = control.result()
    print(f"[long] job ended: {result.status} after {result.done}/{result.total} steps")
    assert result.status == "cancelled" and result.done < result.total


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="nsxpc-jobs-", dir="/tmp") as runtime:
        os.environ["NSXPC_RUNTIME_DIR"] = runtime  # read when the connection is made
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        service = subprocess.Popen(
            [sys.executable, str(HERE / "service.py"), NAME], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert service.stdout is not None
            line = service.stdout.readline().decode()
            if not line.startswith("READY"):
                raise SystemExit(f"the job service did not start: {line!r}")
            print(f"job service running (pid {line.split()[1]})")
            conn = nsxpc.Connection(mach_service_name=NAME)
            conn.remote_object_interface = nsxpc.Interface(Jobs)
            conn.resume()
            try:
                run(conn)
            finally:
                conn.invalidate()
        finally:
            service.communicate(timeout=TIMEOUT)  # closes its stdin: it exits
    return 0


if __name__ == "__main__":
    sys.exit(main())
